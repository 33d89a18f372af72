"""The real enclave runtime server on a real Unix socket, in a thread, with fake NSM and key.

Shared by the runtime's tests. The key provider stands in for attested KMS with data keys shaped
exactly like KMS's (`aws-kms`, the key ARN: tests/fake_kms_key.py), so bundles are sealed and
unsealed with the project's own sealing code and the real ESDK message format, and the image
policy (pinning that ARN and the test app ids) is the production one. `StaticKeyProvider` is a
raw AES key: a key of the host's own, which the image policy must refuse.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aws_encryption_sdk.identifiers import EncryptionKeyType, WrappingAlgorithm
from aws_encryption_sdk.internal.crypto.wrapping_keys import WrappingKey
from aws_encryption_sdk.key_providers.raw import RawMasterKeyProvider
from fake_kms_key import TEST_KEY_ARN, FakeKmsKeyProvider

from enclave.config import RuntimeConfig
from enclave.connections import RuntimeServer
from enclave.policy import ImagePolicy
from enclave.server import make_server

TEST_APP_IDS = ("test-app", "sample-inference")
TEST_POLICY = ImagePolicy(region="us-east-1", kms_key_arns=(TEST_KEY_ARN,), app_ids=TEST_APP_IDS)
TEST_POLICY_BYTES = TEST_POLICY.canonical_bytes()


class StaticKeyProvider(RawMasterKeyProvider):
    provider_id = "test-static"
    key = b"k" * 32  # subclass with another key for "sealed under a different key"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_master_key(b"test-key")

    def _get_raw_key(self, key_id: bytes) -> WrappingKey:
        return WrappingKey(
            wrapping_algorithm=WrappingAlgorithm.AES_256_GCM_IV12_TAG16_NO_PADDING,
            wrapping_key=self.key,
            wrapping_key_type=EncryptionKeyType.SYMMETRIC,
        )


class FakeNsm:
    """Returns a recognisable 'document' carrying what it was asked to attest."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def attestation(self, *, user_data: bytes | None = None, nonce: bytes | None = None,
                    public_key: bytes | None = None) -> bytes:
        self.calls.append({"user_data": user_data, "nonce": nonce, "public_key": public_key})
        return b"DOC|" + (nonce or b"") + b"|" + (user_data or b"")


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


@dataclass
class Runtime:
    socket_path: str
    server: RuntimeServer
    config: RuntimeConfig
    nsm: Any
    key_provider: FakeKmsKeyProvider
    credentials: list[dict | None]  # what each key request was given, in order

    @property
    def inbox(self) -> Path:
        return self.config.exchange_root / "inbox"

    @property
    def outbox(self) -> Path:
        return self.config.exchange_root / "outbox"

    def connection(self, timeout: float = 10.0) -> UnixHTTPConnection:
        return UnixHTTPConnection(self.socket_path, timeout=timeout)

    def request(self, method: str, url: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        """One request on a fresh connection; JSON answers are decoded, others returned raw."""
        conn = self.connection()
        try:
            if body is not None and not isinstance(body, bytes):
                body = json.dumps(body).encode()
            conn.request(method, url, body=body, headers=headers or {})
            response = conn.getresponse()
            raw = response.read()
            kind = response.getheader("Content-Type", "")
            data = json.loads(raw) if kind == "application/json" else raw
            return response.status, data, dict(response.getheaders())
        finally:
            conn.close()

    def raw(self, payload: bytes, *, read_timeout: float = 5.0) -> bytes:
        """Send bytes as they are on a fresh socket and return everything read until close."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(read_timeout)
            s.connect(self.socket_path)
            s.sendall(payload)
            chunks = []
            try:
                while chunk := s.recv(65536):
                    chunks.append(chunk)
            except (TimeoutError, ConnectionResetError):
                pass
            return b"".join(chunks)

    def wait_run(self, run_id: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, view, _ = self.request("GET", f"/v1/runs/{run_id}")
            assert status == 200, view
            if view["state"] not in ("unsealing", "running"):
                return view
            time.sleep(0.05)
        raise AssertionError(f"run {run_id} did not end within {timeout}s")


def write_test_policy(path: Path, policy: ImagePolicy = TEST_POLICY) -> Path:
    path.write_bytes(policy.canonical_bytes())
    return path


def traversable_dir(tmp_path: Path) -> Path:
    """A directory every user may pass through: run users must reach their own private dirs,
    which pytest's 0700 tmp_path would hide from them (in the enclave the roots are under /run).
    """
    base = Path(tempfile.mkdtemp(prefix="rt-", dir="/dev/shm" if os.path.isdir("/dev/shm")
                                 else None))
    os.chmod(base, 0o711)
    (tmp_path / "rt-base").write_text(str(base))  # where it went, for a human reading tmp_path
    return base


def start_runtime(tmp_path: Path, *, nsm: Any = None, **overrides: Any) -> Runtime:
    """The real server in a thread; `nsm` replaces FakeNsm (e.g. one signing real documents)."""
    base = traversable_dir(tmp_path)
    settings: dict[str, Any] = {
        "exchange_root": base / "exchange",
        "private_root": base / "sealed",
        "header_timeout": 2.0,
        "io_timeout": 5.0,
        "max_connections": 8,
        "image_policy": TEST_POLICY,
    }
    settings.update(overrides)
    config = RuntimeConfig(**settings)
    # AF_UNIX paths are limited to ~107 bytes; pytest's tmp_path can be longer.
    socket_path = f"/tmp/rt-{os.getpid()}-{id(config):x}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(socket_path)
    nsm = nsm if nsm is not None else FakeNsm()
    key_provider = FakeKmsKeyProvider()
    credentials_seen: list[dict | None] = []

    def key_provider_factory(credentials: Any, key_arn: str, policy: Any) -> FakeKmsKeyProvider:
        credentials_seen.append(credentials)
        return key_provider

    server = make_server(sock, config=config, nsm=nsm, key_provider_factory=key_provider_factory)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    return Runtime(socket_path, server, config, nsm, key_provider, credentials_seen)


def stop_runtime(runtime: Runtime) -> None:
    runtime.server.shutdown()
    runtime.server.server_close()
    shutil.rmtree(runtime.config.exchange_root.parent, ignore_errors=True)
    try:
        os.unlink(runtime.socket_path)
    except FileNotFoundError:
        pass


@contextlib.contextmanager
def small_tmpfs(tmp_path: Path, size: str) -> Any:
    """A tmpfs of `size` to put an exchange area on and fill; mounting it needs root.

    Skips where it cannot be mounted; in CI (CI=true) fails instead."""
    where = traversable_dir(tmp_path) / "exchange"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                           str(where)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must fill a small file system: mount failed: {done.stderr}")
        pytest.skip(f"needs to mount a tmpfs (root): {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
