"""A service's record: its states, what the host asked for, and what the API shows of it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclave.manifest import ServiceSpec
from enclave.run_records import Credentials

STARTING = "starting"
READY = "ready"
RESTARTING = "restarting"
STOPPED = "stopped"
CRASHED = "crashed"
FAILED = "failed"
ACTIVE_STATES = frozenset({STARTING, READY, RESTARTING})
TERMINAL_STATES = frozenset({STOPPED, CRASHED, FAILED})

SOCKET_ENV = "SEALED_SERVICE_SOCKET"
SOCKET_NAME = "service.sock"
# Request headers passed on to the app; everything else (the host's own headers) stays out.
FORWARDED_HEADERS = ("Content-Type", "Accept")
# Set by the runtime on an error it gives for a forwarded request itself; a service cannot set it
# (only its status, Content-Type and body are passed on), so the client can tell the two apart.
RUNTIME_ERROR_HEADER = "Sealed-Runtime-Error"


@dataclass(frozen=True)
class ServiceRequest:
    bundle: str
    entrypoint: str
    credentials: Credentials | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Answer:
    """What goes back to the host for one forwarded request."""

    status: int
    content_type: str
    body: bytes


class ServiceError(Exception):
    """A forwarded request the runtime answers itself; `status`/`code` map to the HTTP error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class Service:
    id: str
    bundle: str
    entrypoint: str
    state: str = STARTING
    restarts: int = 0
    requests_served: int = 0
    errors: int = 0
    last_error: str | None = None
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    ready_at: float | None = None
    ended_at: float | None = None
    app_id: str | None = None
    app_version: str | None = None
    bundle_sha256: str | None = None
    spec: ServiceSpec | None = None
    # Internal.
    uid: int | None = field(default=None, repr=False)  # its user's, when isolated
    private_dir: Path | None = field(default=None, repr=False)
    socket_path: str | None = field(default=None, repr=False)
    slots: threading.BoundedSemaphore | None = field(default=None, repr=False)
    stop_requested: threading.Event = field(default_factory=threading.Event, repr=False)
    done: threading.Event = field(default_factory=threading.Event, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def view(self) -> dict[str, Any]:
        spec = self.spec
        return {
            "id": self.id,
            "bundle": self.bundle,
            "entrypoint": self.entrypoint,
            "state": self.state,
            "restarts": self.restarts,
            "requests_served": self.requests_served,
            "errors": self.errors,
            "last_error": self.last_error,
            "error": self.error,
            "started_at": self.started_at,
            "ready_at": self.ready_at,
            "ended_at": self.ended_at,
            "app_id": self.app_id,
            "app_version": self.app_version,
            "limits": None if spec is None else {
                "max_concurrent_requests": spec.max_concurrent_requests,
                "max_request_bytes": spec.max_request_bytes,
                "max_response_bytes": spec.max_response_bytes,
                "request_timeout_seconds": spec.request_timeout_seconds,
                "ready_timeout_seconds": spec.ready_timeout_seconds,
                "restart": spec.restart,
                "max_restarts": spec.max_restarts,
            },
        }

    def count(self, *, served: bool, error: str | None = None) -> None:
        with self.lock:
            if served:
                self.requests_served += 1
            if error is not None:
                self.errors += 1
                self.last_error = error
