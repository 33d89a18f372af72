"""Services: a bundle's `service` entrypoint, unsealed once, answering many requests.

A service is isolated exactly like a run (`enclave/runner.py`), with the same pieces: the image
policy decides from the bundle's header before any KMS request (`unseal_checked`), the app gets
a user of its own from the runs' pool, a fresh 0700 private directory under the private root,
the same environment and the same starter (no new privileges, no core dumps), and no NSM (the
device is root's). It serves HTTP/1.1 on the Unix socket SEALED_SERVICE_SOCKET names, inside that
private directory; only the runtime, as root, can reach it, and the host's requests arrive
through the runtime's API with the manifest's limits applied (`forward`).

When it stops, or crashes with no restart left, every process of its user is killed and the
private directory (plaintext included) is removed. A restart (`"restart": "on-failure"`) reuses
the unsealed files: the host's credentials are not kept, so the bundle cannot be unsealed again.
Before a restart the app's processes are killed and its home and temporary directories emptied.
"""

from __future__ import annotations

import builtins
import http.client
import os
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclave.app_process import APPEXEC_SOURCE, app_environment, kill_group, wipe
from enclave.config import RuntimeConfig
from enclave.events import EventLog
from enclave.exchange import ExchangeArea
from enclave.exchange_errors import ExchangeError, IsADirectory
from enclave.image import app_argv
from enclave.isolation import AppUser, UserPool, chown_tree, kill_user
from enclave.kms_wiring import KeyProviderFactory
from enclave.manifest import ManifestError, ServiceSpec
from enclave.paths import INBOX
from enclave.run_records import Cancelled, Credentials, RunFailure, RunRefused
from enclave.runner import Unseal, unseal_checked

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
MAX_SERVICES = 4
MAX_KEPT_SERVICES = 100
# Request headers passed on to the app; everything else (the host's own headers) stays out.
FORWARDED_HEADERS = ("Content-Type", "Accept")
# Set by the runtime on an error it gives for a forwarded request itself; a service cannot set it
# (only its status, Content-Type and body are passed on), so the client can tell the two apart.
RUNTIME_ERROR_HEADER = "Sealed-Runtime-Error"
_READY_POLL_SECONDS = 0.02
_SLOT_WAIT_SECONDS = 1.0
_READ_CHUNK = 64 * 1024


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


class ServiceManager:
    """Starts services, supervises each in its own thread, forwards requests, keeps records."""

    def __init__(self, config: RuntimeConfig, exchange: ExchangeArea, events: EventLog, *,
                 users: UserPool | None, key_provider_factory: KeyProviderFactory,
                 unseal: Unseal) -> None:
        self.config = config
        self.exchange = exchange
        self.events = events
        self.policy = config.image_policy
        self._users = users
        self._key_provider_factory = key_provider_factory
        self._unseal = unseal
        self._services: dict[str, Service] = {}
        self._lock = threading.Lock()
        # Plaintext left by a runtime that died while serving goes first.
        for stale in Path(config.private_root).glob("svc-*"):
            if not wipe(stale):
                events.add("a service directory left by an earlier runtime could not be removed")

    # -- public --------------------------------------------------------------------------------

    def start(self, request: ServiceRequest) -> Service:
        entry = self.exchange.stat(INBOX, request.bundle)  # confined; raises ExchangeError
        if entry.type != "file":
            raise IsADirectory(f"bundle {request.bundle!r} is a directory; name the sealed file")
        with self._lock:
            active = [s for s in self._services.values() if s.state in ACTIVE_STATES]
            if len(active) >= MAX_SERVICES:
                raise RunRefused("busy", 429,
                                 f"{len(active)} services are up, the limit is {MAX_SERVICES}; "
                                 "stop one first")
            service = Service(id=secrets.token_hex(8), bundle=request.bundle,
                              entrypoint=request.entrypoint)
            self._services[service.id] = service
            self._prune()
        self.events.add(f"service {service.id}: accepted, bundle {service.bundle!r}, "
                        f"entrypoint {service.entrypoint!r}")
        # As for runs: the credentials travel in a box the worker empties once unsealed.
        worker = threading.Thread(target=self._supervise, args=(service, [request]),
                                  name=f"service-{service.id}", daemon=True)
        worker.start()
        return service

    def get(self, service_id: str) -> Service | None:
        with self._lock:
            return self._services.get(service_id)

    # From here on `list` in this class body names this method.
    def list(self) -> list[Service]:
        with self._lock:
            return sorted(self._services.values(), key=lambda s: s.started_at)

    def stop(self, service_id: str, timeout: float = 10.0) -> Service | None:
        """Stop a service and wait (up to `timeout`) until its plaintext is gone."""
        service = self.get(service_id)
        if service is None:
            return None
        if service.state in ACTIVE_STATES:
            service.stop_requested.set()
            self.events.add(f"service {service.id}: stop requested")
            service.done.wait(timeout)
        return service

    def shutdown(self, timeout: float = 10.0) -> None:
        active = [s for s in self.list() if s.state in ACTIVE_STATES]
        for service in active:
            service.stop_requested.set()
        deadline = time.monotonic() + timeout
        for service in active:
            service.done.wait(max(0.0, deadline - time.monotonic()))

    def forward(self, service_id: str, method: str, target: str, headers: dict[str, str],
                body: bytes) -> Answer:
        """One host request to the service, within its manifest's limits.

        The caller has already refused a body over `max_request_bytes` (it knows the length
        before reading). Whatever goes wrong here concerns this request only.
        """
        service = self.get(service_id)
        if service is None:
            raise ServiceError(404, "not_found", f"no service {service_id!r}; list services "
                                                 "with GET /v1/services")
        spec, slots, path = service.spec, service.slots, service.socket_path
        if service.state != READY or spec is None or slots is None or path is None:
            raise ServiceError(503, "service_unavailable",
                               f"service {service.id} is {service.state}, not ready; "
                               "check it with GET /v1/services/{id}")
        if len(body) > spec.max_request_bytes:
            service.count(served=False, error="request too large")
            raise ServiceError(413, "request_too_large",
                               f"the request body is {len(body)} bytes; the service's manifest "
                               f"allows {spec.max_request_bytes}")
        if not slots.acquire(timeout=_SLOT_WAIT_SECONDS):
            service.count(served=False, error="too many concurrent requests")
            raise ServiceError(429, "busy",
                               f"service {service.id} already handles "
                               f"{spec.max_concurrent_requests} requests (its manifest's limit); "
                               "retry shortly")
        try:
            return self._exchange(service, spec, path, method, target, headers, body)
        finally:
            slots.release()

    # -- forwarding ----------------------------------------------------------------------------

    def _exchange(self, service: Service, spec: ServiceSpec, path: str, method: str,
                  target: str, headers: dict[str, str], body: bytes) -> Answer:
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

    # -- the service's life --------------------------------------------------------------------

    def _supervise(self, service: Service, box: builtins.list[ServiceRequest]) -> None:
        request = box.pop()
        private: Path | None = None
        user: AppUser | None = None
        final, error = FAILED, None
        try:
            if self._users is not None:
                user = self._users.acquire()
                if user is None:
                    raise RunFailure("no free application user (runs and services share "
                                      "them); retry when a run has ended or stop a service")
            private = Path(tempfile.mkdtemp(prefix="svc-", dir=self.config.private_root))
            service.private_dir = private
            app_dir = private / "app"
            app_dir.mkdir(mode=0o700)
            manifest, service.bundle_sha256 = unseal_checked(
                self.exchange, self.policy, self._key_provider_factory, self._unseal,
                bundle=request.bundle, credentials=request.credentials, target=app_dir,
                cancelled=service.stop_requested, events=self.events,
                label=f"service {service.id}")
            del request  # the credentials are not needed past this point
            service.app_id, service.app_version = manifest.app_id, manifest.app_version
            entry = manifest.entrypoint(service.entrypoint)
            if entry.kind != "service" or entry.service is None:
                raise RunFailure(f"entrypoint {service.entrypoint!r} is not a service; start "
                                  f"it with `python -m client run -s {service.entrypoint}`")
            try:
                argv = app_argv(entry.command, self.config.app_interpreter)
            except ValueError as exc:
                raise RunFailure(f"entrypoint {service.entrypoint!r}: {exc}") from None
            if not os.path.isfile(argv[0]):
                raise RunFailure(f"entrypoint {service.entrypoint!r} could not be started: "
                                  f"the image's interpreter {argv[0]} is missing")
            service.spec = entry.service
            service.slots = threading.BoundedSemaphore(entry.service.max_concurrent_requests)
            if user is not None:
                chown_tree(private, user)
                service.uid = user.uid
            final, error = self._serve(service, entry.service, argv, app_dir, private, user)
        except Cancelled:
            final, error = STOPPED, None
        except RunFailure as exc:
            final, error = FAILED, str(exc)
        except (ManifestError, ExchangeError) as exc:
            final, error = FAILED, getattr(exc, "message", None) or str(exc)
        except Exception as exc:  # a runtime fault: report it without internals
            final = FAILED
            error = (f"the runtime failed while starting the service "
                     f"({exc.__class__.__name__}); see `logs`")
            self.events.add(f"service {service.id}: internal error {exc.__class__.__name__}")
        finally:
            service.socket_path = None
            if user is not None:
                kill_user(user.uid)  # before the wipe: nothing of the service may write any more
            wiped = wipe(private) if private is not None else True
            if user is not None and self._users is not None:
                self._users.release(user)
            if not wiped:
                self.events.add(f"service {service.id}: could not remove its private directory")
                error = (error + "; " if error else "") + "private directory not fully removed"
            with self._lock:
                service.state = final
                service.error = error
                service.ended_at = time.time()
            service.done.set()
            self.events.add(f"service {service.id}: {final}" + (f": {error}" if error else ""))

    def _serve(self, service: Service, spec: ServiceSpec, argv: builtins.list[str],
               app_dir: Path, private: Path, user: AppUser | None) -> tuple[str, str | None]:
        """Start, watch and restart the app until it is stopped or out of restarts."""
        socket_path = private / SOCKET_NAME
        while True:
            process = self._spawn(service, argv, app_dir, private, socket_path, user)
            try:
                outcome = self._await_ready(service, spec, process, socket_path)
                if outcome is None:
                    with self._lock:
                        service.state = READY
                        service.ready_at = time.time()
                    self.events.add(f"service {service.id}: ready")
                    outcome = self._watch(service, process)
            finally:
                with self._lock:
                    if service.state == READY:
                        service.state = RESTARTING  # no new request reaches a dying process
                kill_group(process.pid)
                process.wait()  # reaped first: a zombie still counts as a process of its user
                if user is not None and not kill_user(user.uid):
                    self.events.add(f"service {service.id}: processes of its user survived "
                                    "the kill")
            if outcome == STOPPED:
                return STOPPED, None
            service.count(served=False, error=outcome)
            self.events.add(f"service {service.id}: {outcome}")
            if spec.restart != "on-failure" or service.restarts >= spec.max_restarts:
                return CRASHED, outcome
            with self._lock:
                service.restarts += 1
                service.state = RESTARTING
            self.events.add(f"service {service.id}: restarting ({service.restarts} of "
                            f"{spec.max_restarts})")

    def _spawn(self, service: Service, argv: builtins.list[str], app_dir: Path, private: Path,
               socket_path: Path, user: AppUser | None) -> subprocess.Popen:
        home, tmp = private / "home", private / "tmp"
        for directory in (home, tmp):  # emptied between starts: a restart begins clean
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(mode=0o700)
            if user is not None:
                os.chown(directory, user.uid, user.gid)
        try:
            socket_path.unlink()
        except FileNotFoundError:
            pass
        env = app_environment(self.config, home, tmp)
        env[SOCKET_ENV] = str(socket_path)
        identity: dict[str, Any] = {}
        if user is not None:
            identity = {"user": user.uid, "group": user.gid, "extra_groups": []}
        self.events.add(f"service {service.id}: starting entrypoint {service.entrypoint!r}")
        try:
            return subprocess.Popen(
                [argv[0], "-I", "-S", "-c", APPEXEC_SOURCE, *argv],
                cwd=app_dir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,  # a service's output could quote its code
                start_new_session=True, close_fds=True, **identity)
        except OSError as exc:
            raise RunFailure(f"entrypoint {service.entrypoint!r} could not be started: "
                              f"{exc.strerror or exc}") from exc

    def _await_ready(self, service: Service, spec: ServiceSpec, process: subprocess.Popen,
                     socket_path: Path) -> str | None:
        """None once the app accepts connections on its socket, else why it did not."""
        deadline = time.monotonic() + spec.ready_timeout_seconds
        while True:
            if service.stop_requested.is_set():
                return STOPPED
            if process.poll() is not None:
                return f"the service exited with status {process.returncode} before it was ready"
            if _accepts(str(socket_path), service.uid):
                service.socket_path = str(socket_path)
                return None
            if time.monotonic() >= deadline:
                return (f"the service did not listen on {SOCKET_ENV} within "
                        f"{spec.ready_timeout_seconds}s")
            time.sleep(_READY_POLL_SECONDS)

    def _watch(self, service: Service, process: subprocess.Popen) -> str:
        while True:
            try:
                process.wait(timeout=0.1)
                return f"the service exited with status {process.returncode}"
            except subprocess.TimeoutExpired:
                if service.stop_requested.is_set():
                    return STOPPED

    def _prune(self) -> None:
        excess = len(self._services) - MAX_KEPT_SERVICES
        if excess <= 0:
            return
        ended = sorted((s for s in self._services.values() if s.state in TERMINAL_STATES),
                       key=lambda s: s.started_at)
        for service in ended[:excess]:
            del self._services[service.id]


def _accepts(path: str, owner: int | None) -> bool:
    try:
        connect_service_socket(path, owner, 0.5).close()
        return True
    except OSError:
        return False
