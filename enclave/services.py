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

Here: the `ServiceManager` (accepting services, their registry, each one's life). A service's
record is `enclave/service_records.py`'s; talking to its socket `enclave/service_forwarding.py`'s.
"""

from __future__ import annotations

import builtins
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
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
from enclave.manifest import Manifest, ManifestError, ServiceSpec
from enclave.paths import INBOX
from enclave.run_records import Cancelled, RunFailure, RunRefused
from enclave.runner import Unseal, unseal_checked
from enclave.service_forwarding import accepts, exchange_with_service
from enclave.service_records import (
    ACTIVE_STATES,
    CRASHED,
    FAILED,
    READY,
    RESTARTING,
    SOCKET_ENV,
    SOCKET_NAME,
    STOPPED,
    TERMINAL_STATES,
    Answer,
    Service,
    ServiceError,
    ServiceRequest,
)

MAX_SERVICES = 4
MAX_KEPT_SERVICES = 100
_READY_POLL_SECONDS = 0.02
_SLOT_WAIT_SECONDS = 1.0







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
            return exchange_with_service(service, spec, path, method, target, headers, body)
        finally:
            slots.release()

    # -- forwarding ----------------------------------------------------------------------------

    # -- the service's life --------------------------------------------------------------------

    def _supervise(self, service: Service, box: builtins.list[ServiceRequest]) -> None:
        user: AppUser | None = None
        final, error = FAILED, None
        try:
            if self._users is not None:
                user = self._users.acquire()
                if user is None:
                    raise RunFailure("no free application user (runs and services share "
                                     "them); retry when a run has ended or stop a service")
            final, error = self._unseal_and_serve(service, box, user)
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
            self._finish(service, final, error, user)

    def _unseal_and_serve(self, service: Service, box: builtins.list[ServiceRequest],
                          user: AppUser | None) -> tuple[str, str | None]:
        request = box.pop()
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
        spec, argv = self._service_entrypoint(service, manifest)
        service.spec = spec
        service.slots = threading.BoundedSemaphore(spec.max_concurrent_requests)
        if user is not None:
            chown_tree(private, user)
            service.uid = user.uid
        return self._serve(service, spec, argv, app_dir, private, user)

    def _service_entrypoint(self, service: Service,
                            manifest: Manifest) -> tuple[ServiceSpec, builtins.list[str]]:
        """The service's limits and command, or why this entrypoint cannot be served."""
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
        return entry.service, argv

    def _finish(self, service: Service, final: str, error: str | None,
                user: AppUser | None) -> None:
        """Whatever happened: kill the service's user, wipe its plaintext, record the end."""
        service.socket_path = None
        if user is not None:
            kill_user(user.uid)  # before the wipe: nothing of the service may write any more
        private = service.private_dir
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
               socket_path: Path, user: AppUser | None) -> subprocess.Popen[bytes]:
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

    def _await_ready(self, service: Service, spec: ServiceSpec, process: subprocess.Popen[bytes],
                     socket_path: Path) -> str | None:
        """None once the app accepts connections on its socket, else why it did not."""
        deadline = time.monotonic() + spec.ready_timeout_seconds
        while True:
            if service.stop_requested.is_set():
                return STOPPED
            if process.poll() is not None:
                return f"the service exited with status {process.returncode} before it was ready"
            if accepts(str(socket_path), service.uid):
                service.socket_path = str(socket_path)
                return None
            if time.monotonic() >= deadline:
                return (f"the service did not listen on {SOCKET_ENV} within "
                        f"{spec.ready_timeout_seconds}s")
            time.sleep(_READY_POLL_SECONDS)

    def _watch(self, service: Service, process: subprocess.Popen[bytes]) -> str:
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
