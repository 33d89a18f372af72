"""The enclave's only network path: TCP on 127.0.0.1 forwarded to the parent's vsock-proxy.

An enclave has no network interface. boto3 inside it connects to `kms.<region>.amazonaws.com:443`,
which the image's /etc/hosts maps to 127.0.0.1; this bridge accepts that TCP connection and pipes
its bytes, untouched, to the parent instance's `vsock-proxy` (CID 3, port 8000 by default), which
connects on to the real KMS endpoint on its allow list. TLS therefore runs end to end between
boto3 and KMS: the certificate is verified against the real hostname inside the enclave, and the
parent sees only ciphertext. The bridge never parses, logs or stores what it carries (the SigV4
credentials travel inside that TLS stream).

`start(local_port=443, parent_cid=3, parent_port=8000)` runs it in a background thread.
`Bridge(listener, connect_upstream)` takes an already-listening socket and a factory for the
upstream connection, so tests drive the same code with TCP or Unix sockets on loopback.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
from collections.abc import Callable

PARENT_CID = 3  # the parent instance, as seen from an enclave
DEFAULT_PROXY_PORT = 8000  # the runbook's `vsock-proxy 8000 kms.<region>.amazonaws.com 443`
CHUNK_BYTES = 64 * 1024
IDLE_TIMEOUT_SECONDS = 300.0
CONNECT_TIMEOUT_SECONDS = 10.0
# vsock-proxy serves 4 connections at once by default; a few more may queue in its backlog
MAX_CONNECTIONS = 16

log = logging.getLogger("enclave.bridge")
UpstreamFactory = Callable[[], socket.socket]


def vsock_upstream(cid: int = PARENT_CID, port: int = DEFAULT_PROXY_PORT,
                   timeout: float = CONNECT_TIMEOUT_SECONDS) -> UpstreamFactory:
    """A factory connecting to (cid, port) over AF_VSOCK: the parent's vsock-proxy."""
    def connect() -> socket.socket:  # pragma: no cover - hardware: AF_VSOCK
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect((cid, port))
        except OSError:
            sock.close()
            raise
        return sock
    return connect


def pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy bytes from `source` to `sink` until EOF, then half-close `sink` so the peer sees
    the end of this direction while the other direction may still flow (TLS close_notify)."""
    try:
        while True:
            data = source.recv(CHUNK_BYTES)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        # a reset or an idle timeout on either side ends both directions
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        return
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def forward(client: socket.socket, upstream: socket.socket, *,
            idle_timeout: float = IDLE_TIMEOUT_SECONDS) -> None:
    """Pipe both directions between the two connected sockets until both have ended."""
    for sock in (client, upstream):
        sock.settimeout(idle_timeout)
    back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
    back.start()
    pump(client, upstream)
    back.join()


class Bridge:
    """Accept on `listener`; forward each connection to a fresh `connect_upstream()` socket."""

    def __init__(self, listener: socket.socket, connect_upstream: UpstreamFactory, *,
                 max_connections: int = MAX_CONNECTIONS,
                 idle_timeout: float = IDLE_TIMEOUT_SECONDS) -> None:
        self.listener = listener
        self.connect_upstream = connect_upstream
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stop = threading.Event()
        self.connections_served = 0
        self.upstream_failures = 0

    def serve_forever(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self.listener], [], [], 0.2)
            except (OSError, ValueError):
                return
            if not ready:
                continue
            try:
                client, _ = self.listener.accept()
            except OSError:
                if self._stop.is_set():
                    return
                continue
            if not self._slots.acquire(blocking=False):
                # over the limit: refuse at once rather than queue behind a stuck connection
                log.warning("KMS bridge: %d connections open, refusing one more",
                            self.max_connections)
                client.close()
                continue
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        try:
            try:
                upstream = self.connect_upstream()
            except OSError as exc:
                self.upstream_failures += 1
                log.warning("KMS bridge: cannot reach the parent's vsock-proxy (%s); is "
                            "`python -m client proxy -s kms` running on the host?", exc.strerror)
                return
            with upstream:
                self.connections_served += 1
                forward(client, upstream, idle_timeout=self.idle_timeout)
        finally:
            client.close()
            self._slots.release()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.listener.close()


def start(*, local_port: int = 443, parent_cid: int = PARENT_CID,
          parent_port: int = DEFAULT_PROXY_PORT, host: str = "127.0.0.1",
          connect_upstream: UpstreamFactory | None = None) -> Bridge:
    """Listen on host:local_port and serve in a daemon thread; returns the running Bridge."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, local_port))
    listener.listen(MAX_CONNECTIONS)
    bridge = Bridge(listener, connect_upstream or vsock_upstream(parent_cid, parent_port))
    threading.Thread(target=bridge.serve_forever, name="kms-bridge", daemon=True).start()
    log.info("KMS bridge: %s:%d -> vsock %d:%d", host, listener.getsockname()[1], parent_cid,
             parent_port)
    return bridge
