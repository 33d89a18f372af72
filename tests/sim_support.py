"""Shared helpers for tests that run the local KMS endpoint and simulated NSMs in threads."""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

import boto3

from client.sim.kms.server import make_kms_server
from client.sim.kms.state import register_principal
from client.sim.nsm import serve_nsm
from enclave.nsm import NsmClient

REGION = "us-east-1"
THIRD_PARTY_ACCOUNT = "111111111111"  # the local KMS's own account: keys live here
HOST_ACCOUNT = "222222222222"
HOST_ROLE_ARN = f"arn:aws:iam::{HOST_ACCOUNT}:role/EnclaveHostRole"
HOST_SESSION_ARN = f"arn:aws:sts::{HOST_ACCOUNT}:assumed-role/EnclaveHostRole/i-0123456789abcdef0"
OWNER_ARN = f"arn:aws:iam::{THIRD_PARTY_ACCOUNT}:role/SealingPipeline"
STRANGER_ARN = "arn:aws:iam::333333333333:role/Stranger"
OWNER_KEY = "AKIASIMOWNER0000001"
HOST_KEY = "AKIASIMHOST00000001"
STRANGER_KEY = "AKIASIMOTHER0000001"


@contextlib.contextmanager
def running_kms(state: Path) -> Iterator[str]:
    """A local KMS on a free loopback port with the three test principals; yields its URL."""
    register_principal(state, OWNER_KEY, OWNER_ARN)
    register_principal(state, HOST_KEY, HOST_SESSION_ARN)
    register_principal(state, STRANGER_KEY, STRANGER_ARN)
    server = make_kms_server("127.0.0.1", 0, state_dir=state)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def kms_client(url: str, access_key: str):
    return boto3.client("kms", endpoint_url=url, region_name=REGION,
                        aws_access_key_id=access_key, aws_secret_access_key="not-checked")


@contextlib.contextmanager
def short_socket_dir() -> Iterator[Path]:
    """A short directory for Unix sockets (their paths are limited to 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="sim", dir="/tmp") as directory:
        yield Path(directory)


@contextlib.contextmanager
def running_nsm(path: Path, state: Path, pcrs: Mapping[int, bytes], *,
                debug: bool = False) -> Iterator[NsmClient]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(8)
    stop = threading.Event()
    thread = threading.Thread(target=serve_nsm, args=(sock,), daemon=True,
                              kwargs={"state_dir": state, "pcrs": pcrs, "debug": debug,
                                      "stop": stop})
    thread.start()
    try:
        yield NsmClient.simulated(path)
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()
