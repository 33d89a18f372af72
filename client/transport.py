"""How the client reaches a runtime: its address (a Unix socket in simulation, AF_VSOCK in an
enclave), the HTTP connection over that socket, and the upload's zero-copy body.

The only difference between simulation and production on this side is the socket `connect()`
makes; everything above it (`client/api.py`) is the same.
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from client.errors import EnclaveError

DEFAULT_PORT = 5005
DEFAULT_TIMEOUT = 30.0
CHUNK = 1 << 20  # 1 MiB: large enough for line rate, small enough to keep memory flat

Progress = Callable[[int], None]  # called with the number of bytes moved so far


@dataclass(frozen=True)
class UnixAddress:
    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


@dataclass(frozen=True)
class VsockAddress:
    cid: int
    port: int = DEFAULT_PORT

    def __str__(self) -> str:
        return f"vsock:{self.cid}:{self.port}"


Address = UnixAddress | VsockAddress


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTPConnection over a Unix stream socket (the simulated runtime)."""

    def __init__(self, path: str, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class VsockHTTPConnection(http.client.HTTPConnection):
    """HTTPConnection over AF_VSOCK (the runtime inside a Nitro Enclave)."""

    def __init__(self, cid: int, port: int, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        super().__init__("localhost", port=port, timeout=timeout)
        self.cid = cid
        self.vsock_port = port

    def connect(self) -> None:  # pragma: no cover - hardware: AF_VSOCK
        family = getattr(socket, "AF_VSOCK", None)
        if family is None:
            raise OSError("this platform has no AF_VSOCK sockets")
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect((self.cid, self.vsock_port))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def unreachable_hint(address: Address) -> str:
    """What to do when nothing listens at `address` (not the command that just failed)."""
    if isinstance(address, UnixAddress):
        return ("start the local simulation with `python -m client simulate up` (then leave "
                "out --socket), or give the socket of a runtime that is running")
    return (f"check that an enclave with CID {address.cid} is running (`python -m client enclave "
            f"describe`) and that its runtime listens on port {address.port} (--port, or the "
            "host settings' enclave_port)")


def make_connection(address: Address, timeout: float | None) -> http.client.HTTPConnection:
    if isinstance(address, UnixAddress):
        return UnixHTTPConnection(address.path, timeout=timeout)
    return VsockHTTPConnection(address.cid, address.port, timeout=timeout)


def stream_body(conn: http.client.HTTPConnection, source: BinaryIO, size: int,
                 progress: Progress | None) -> None:
    sock = conn.sock
    assert sock is not None
    sent = 0
    try:
        fileno = source.fileno()
        start = source.tell()
    except (OSError, AttributeError, ValueError):
        fileno = -1
    if fileno >= 0:
        # Zero-copy from the file to the socket; in slices so progress can be reported.
        while sent < size:
            n = sock.sendfile(source, start + sent, min(8 * CHUNK, size - sent))
            if n == 0:
                raise EnclaveError(f"the local file ended after {sent} of {size} bytes; "
                                   "did it change during the upload?")
            sent += n
            if progress is not None:
                progress(sent)
        return
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    while sent < size:
        n = source.readinto(view[:min(CHUNK, size - sent)])  # type: ignore[attr-defined]
        if not n:
            raise EnclaveError(f"the local data ended after {sent} of {size} bytes")
        sock.sendall(view[:n])
        sent += n
        if progress is not None:
            progress(sent)
