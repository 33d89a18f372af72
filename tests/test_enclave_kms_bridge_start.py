"""What `python -m enclave serve --vsock` sets up for KMS, in the emulated enclave's form: the
bridge on 127.0.0.1:443 to the parent's vsock-proxy (a Unix socket there), and the runtime's own
listener (enclave/__main__.py `start_kms_bridge`, `bind_vsock`). Each runs in a forked child in
a network namespace of its own, where port 443 is free and nothing reaches this machine."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import socket
import stat
import threading
from collections.abc import Callable
from typing import Any

import pytest

from enclave.__main__ import bind_vsock, bring_up_loopback, start_kms_bridge
from enclave.emulation import EMULATED_ENCLAVE_CID, vsock_socket_path

CLONE_NEWNET = 0x40000000
PARENT_CID = 3
PROXY_PORT = 8000

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="needs root for a network namespace")


def in_network_namespace(body: Callable[[], Any]) -> Any:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            try:
                if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
                bring_up_loopback()
                result = {"value": body()}
            except BaseException as exc:  # everything goes back to the test
                result = {"error": f"{type(exc).__name__}: {exc}"}
            os.write(write_end, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as reply:
        text = reply.read()
    os.waitpid(pid, 0)
    result = json.loads(text)
    if "error" in result:
        raise RuntimeError(result["error"])
    return result["value"]


def upper_case_proxy(path: str) -> None:
    """The parent's vsock-proxy stand-in: answers each connection with its bytes upper-cased."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)

    def serve() -> None:
        while True:
            connection, _ = listener.accept()
            with connection:
                connection.sendall(connection.recv(1024).upper())

    threading.Thread(target=serve, daemon=True).start()


def test_the_bridge_forwards_127_0_0_1_443_to_the_parents_proxy_socket(tmp_path):
    def exchange() -> dict[str, Any]:
        upper_case_proxy(vsock_socket_path(str(tmp_path), PARENT_CID, PROXY_PORT))
        bridge = start_kms_bridge(PROXY_PORT, str(tmp_path))
        with socket.create_connection(("127.0.0.1", 443), timeout=10) as kms:
            kms.sendall(b"kms request")
            kms.shutdown(socket.SHUT_WR)
            answer = kms.recv(1024)
        bridge.close()
        return {"answer": answer.decode(), "served": bridge.connections_served}

    assert in_network_namespace(exchange) == {"answer": "KMS REQUEST", "served": 1}


def test_without_the_parents_proxy_the_bridge_counts_the_failure_and_closes(tmp_path):
    def exchange() -> dict[str, Any]:
        bridge = start_kms_bridge(PROXY_PORT, str(tmp_path))  # nothing listens there
        with socket.create_connection(("127.0.0.1", 443), timeout=10) as kms:
            kms.settimeout(10)
            closed = kms.recv(1024) == b""
        bridge.close()
        return {"closed": closed, "failures": bridge.upstream_failures}

    assert in_network_namespace(exchange) == {"closed": True, "failures": 1}


def test_a_bridge_that_cannot_listen_leaves_the_runtime_serving(tmp_path):
    def twice() -> list[bool]:
        first = start_kms_bridge(PROXY_PORT, str(tmp_path))
        second = start_kms_bridge(PROXY_PORT, str(tmp_path))  # 443 is taken now
        return [first is not None, second is None]

    assert in_network_namespace(twice) == [True, True]


def test_the_emulated_vsock_listener_is_a_private_unix_socket(tmp_path):
    sock = bind_vsock(5005, str(tmp_path))
    try:
        path = vsock_socket_path(str(tmp_path), EMULATED_ENCLAVE_CID, 5005)
        assert sock.getsockname() == path
        assert stat.S_ISSOCK(os.stat(path).st_mode) and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        sock.close()
    again = bind_vsock(5005, str(tmp_path))  # a stale socket of an earlier run is replaced
    again.close()
