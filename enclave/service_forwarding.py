"""Forwarding one host request to a service over the Unix socket the service made.

The runtime connects only to a socket of the service's own user, never through a link
(`connect_service_socket`), sends only the forwarded headers, and reads the answer within the
manifest's time and size limits.
"""

from __future__ import annotations

import http.client
import os
import socket
import stat
import time

from enclave.manifest import ServiceSpec
from enclave.service_records import (
    FORWARDED_HEADERS,
    SOCKET_NAME,
    Answer,
    Service,
    ServiceError,
)

_READ_CHUNK = 64 * 1024


def connect_service_socket(path: str, owner: int | None, timeout: float) -> socket.socket:
    """Connect, as the runtime, to the socket the service made, and only to that one.

    The service owns the directory its socket is in, so it could put a link there instead,
    naming another service's socket or the runtime's own: the runtime (root) would then carry
    the host's requests wherever the app chose. The name is opened without following a link,
    must be a socket of the service's own user, and that very inode is connected to.
    """
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode) or (owner is not None and st.st_uid != owner):
            raise ConnectionRefusedError(f"{SOCKET_NAME} is not a socket of the service's own")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(f"/proc/self/fd/{fd}")
        except OSError:
            sock.close()
            raise
        return sock
    finally:
        os.close(fd)


class _ServiceSocketConnection(http.client.HTTPConnection):
    def __init__(self, path: str, owner: int | None, timeout: float) -> None:
        super().__init__("service", timeout=timeout)
        self.socket_path = path
        self.owner = owner
        self.seconds = timeout

    def connect(self) -> None:
        self.sock = connect_service_socket(self.socket_path, self.owner, self.seconds)


def exchange_with_service(service: Service, spec: ServiceSpec, path: str, method: str,
                          target: str, headers: dict[str, str], body: bytes) -> Answer:
    """Send one request to the service's socket; its answer within the manifest's limits."""
    timeout = float(spec.request_timeout_seconds)
    deadline = time.monotonic() + timeout
    conn = _ServiceSocketConnection(path, service.uid, timeout)
    sent = {name: headers[name] for name in FORWARDED_HEADERS if name in headers}
    sent["Connection"] = "close"
    try:
        conn.request(method, target, body=body, headers=sent)
        response = conn.getresponse()
        chunks, size = [], 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError()
            assert conn.sock is not None
            conn.sock.settimeout(remaining)
            chunk = response.read1(_READ_CHUNK) if size <= spec.max_response_bytes else b""
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > spec.max_response_bytes:
            service.count(served=False, error="response too large")
            raise ServiceError(502, "response_too_large",
                               f"the service's answer exceeds the {spec.max_response_bytes} "
                               "bytes its manifest allows; it was discarded")
        if not 100 <= response.status <= 599:
            raise http.client.HTTPException("status out of range")
        service.count(served=True)
        return Answer(response.status, response.getheader("Content-Type") or
                      "application/octet-stream", b"".join(chunks))
    except TimeoutError:
        service.count(served=False, error="request timed out")
        raise ServiceError(504, "service_timeout",
                           f"service {service.id} did not answer within "
                           f"{spec.request_timeout_seconds}s (its manifest's limit); the "
                           "request was abandoned, the service goes on") from None
    except (OSError, http.client.HTTPException) as exc:
        service.count(served=False, error="no answer from the service")
        raise ServiceError(502, "service_failed",
                           f"service {service.id} ended this request without a complete "
                           f"answer ({exc.__class__.__name__}); it may have crashed: check "
                           "its state and restarts") from None
    finally:
        conn.close()


def accepts(path: str, owner: int | None) -> bool:
    try:
        connect_service_socket(path, owner, 0.5).close()
        return True
    except OSError:
        return False
