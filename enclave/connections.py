"""The runtime server's connection hardening, below HTTP.

- bounded concurrency: at most `max_connections` connections, each in its own thread; one more
  gets `503` at once instead of waiting behind a slow client;
- a deadline for the request head (slowloris), enforced by a watchdog that shuts the socket down
  under a reader blocked past it; the per-read/write timeout is set by the request handler;
- a listening socket the caller has already bound: AF_VSOCK in the enclave, AF_UNIX in tests and
  simulation, same code.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from typing import Any

from enclave.attested_kms import AttestationSource
from enclave.config import RuntimeConfig
from enclave.events import EventLog
from enclave.exchange import ExchangeArea
from enclave.runner import Runner
from enclave.services import ServiceManager


class RuntimeServer(socketserver.BaseServer):
    """Serves the API on an already-bound socket; `serve_forever()` / `shutdown()` as usual."""

    def __init__(self, sock: socket.socket, handler: type[socketserver.BaseRequestHandler], *,
                 config: RuntimeConfig, exchange: ExchangeArea, runner: Runner,
                 events: EventLog, nsm: AttestationSource | None,
                 services: ServiceManager | None = None) -> None:
        super().__init__(sock.getsockname(), handler)
        self.socket = sock
        self.config = config
        self.exchange = exchange
        self.runner = runner
        self.services = services
        self.events = events
        self.nsm = nsm
        self._slots = threading.BoundedSemaphore(config.max_connections)
        self._deadlines: dict[socket.socket, float] = {}
        self._deadline_lock = threading.Lock()
        self._watchdog = threading.Thread(target=self._watch, name="head-deadline", daemon=True)
        self._watchdog_stop = threading.Event()
        sock.listen(max(config.max_connections, 16))
        self._watchdog.start()

    # socketserver plumbing for a socket we did not create ------------------------------------

    def fileno(self) -> int:
        return self.socket.fileno()

    def get_request(self) -> tuple[socket.socket, Any]:
        return self.socket.accept()

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        try:
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        request.close()

    def close_request(self, request: socket.socket) -> None:  # type: ignore[override]
        request.close()

    def server_close(self) -> None:
        self._watchdog_stop.set()
        self.socket.close()

    def process_request(self, request: socket.socket, client_address: Any) -> None:  # type: ignore[override]
        if not self._slots.acquire(blocking=False):
            self.events.add("connection refused: all connection slots busy")
            _refuse_busy(request, self.config.max_connections)
            self.shutdown_request(request)
            return
        thread = threading.Thread(target=self._serve_connection, args=(request, client_address),
                                  daemon=True)
        thread.start()

    def _serve_connection(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception as exc:
            self.events.add(f"connection ended by an internal error ({exc.__class__.__name__})")
        finally:
            self.disarm(request)
            self.shutdown_request(request)
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.events.add("connection ended by an internal error")

    # head deadline ---------------------------------------------------------------------------

    def arm(self, conn: socket.socket, seconds: float) -> None:
        with self._deadline_lock:
            self._deadlines[conn] = time.monotonic() + seconds

    def disarm(self, conn: socket.socket) -> None:
        with self._deadline_lock:
            self._deadlines.pop(conn, None)

    def _watch(self) -> None:
        period = min(0.25, self.config.header_timeout / 4)
        while not self._watchdog_stop.wait(period):
            now = time.monotonic()
            with self._deadline_lock:
                expired = [c for c, d in self._deadlines.items() if d <= now]
                for conn in expired:
                    del self._deadlines[conn]
            for conn in expired:
                try:
                    conn.shutdown(socket.SHUT_RDWR)  # unblocks the reader thread
                except OSError:
                    pass


def _refuse_busy(request: socket.socket, limit: int) -> None:
    body = error_body("busy", f"the runtime already serves {limit} connections; retry shortly")
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n")
    try:
        request.settimeout(1.0)
        request.sendall(head.encode("ascii") + body)
    except OSError:
        pass


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()
