"""Runs: unseal a bundle from the inbox into a private directory, run one declared entrypoint, wipe.

What the host controls is narrow on purpose: which bundle (an inbox path), which entrypoint (a name
the bundle's own manifest declares), and the arguments (a list, checked and mapped by
`Manifest.resolve_arguments`). Which bundles may be unsealed at all is the image policy's choice
(`enclave/policy.py`), checked on the bundle's header before any KMS request. The command itself,
the time limit, whether stdout/stderr are returned and how much of them, all come from the sealed
manifest.

Each run has its own user (when the runtime is root, `enclave/isolation.py`), reads private copies
of its inputs made while hashing them, and writes its outputs privately; after it ended and every
process of its user was killed, the files at its declared outputs are published to the outbox and
hashed. So a receipt names exactly the bytes the app read and wrote.

The plaintext lives in a fresh 0700 directory under `RuntimeConfig.private_root` (RAM inside the
enclave), which is outside the exchange root and so unreachable through the API. It is removed in
a `finally` whatever happens. File contents are not overwritten first: in the enclave that
directory is in enclave memory, which the host cannot read, and pages the kernel frees are zeroed
before any process gets them again, so an overwrite would cost time and protect nothing.

Here: the `Runner` (accepting runs, their registry, the steps of one run) and the checked unseal
shared with services (`read_bundle_header`, `unseal_checked`). A run's record is
`enclave/run_records.py`'s, its files `enclave/run_files.py`'s, its process
`enclave/run_process.py`'s, and the KMS key provider `enclave/kms_wiring.py`'s.
"""

from __future__ import annotations

import builtins
import hashlib
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from enclave.app_process import (
    wipe,
)
from enclave.config import RuntimeConfig
from enclave.events import EventLog
from enclave.exchange import ExchangeArea
from enclave.exchange_errors import ExchangeError, IsADirectory
from enclave.isolation import AppUser, UserPool, chown_tree, isolation_available, kill_user
from enclave.kms_wiring import KeyProviderFactory
from enclave.manifest import Manifest, ManifestError
from enclave.paths import INBOX
from enclave.policy import BundleRefused, ImagePolicy
from enclave.run_files import prepare_run_files, publish_outputs
from enclave.run_process import run_app
from enclave.run_records import (
    ACTIVE_STATES,
    CANCELLED,
    FAILED,
    RUNNING,
    SUCCEEDED,
    TERMINAL_STATES,
    TIMED_OUT,
    Cancelled,
    Credentials,
    Job,
    RunFailure,
    RunRefused,
    RunRequest,
)

_COPY_CHUNK = 1024 * 1024
MAX_DATA_KEYS = 16

Unseal = Callable[..., Manifest]


@dataclass(frozen=True)
class BundleHeader:
    """What a sealed bundle's header says, read without decrypting anything."""

    data_keys: tuple[tuple[str, str], ...]  # (provider id, key info) of each encrypted data key
    encryption_context: dict[str, str]


def read_bundle_header(stream: BinaryIO, name: str) -> BundleHeader:
    from aws_encryption_sdk.internal.formatting.deserialize import deserialize_header

    try:
        header, _raw = deserialize_header(stream, max_encrypted_data_keys=MAX_DATA_KEYS)
    except Exception as exc:  # the SDK raises several unrelated types for a malformed header
        raise RunFailure(
            f"unsealing {name!r} failed: it is not a sealed bundle ({exc.__class__.__name__}); "
            "upload the .sealed file the pipeline produced"
        ) from exc
    keys = []
    for key in header.encrypted_data_keys:
        info = key.key_provider.key_info
        keys.append((_text(key.key_provider.provider_id),
                     _text(info)))
    return BundleHeader(tuple(keys), {_text(k): _text(v)
                                      for k, v in header.encryption_context.items()})


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _default_unseal(src: BinaryIO, target: Path, **kwargs: Any) -> Manifest:
    from enclave.sealing import unseal_bundle

    return unseal_bundle(src, target, **kwargs)


class _BundleReader:
    """Reads the sealed bundle for the decryptor, hashing it and honouring cancellation."""

    def __init__(self, raw: BinaryIO, cancelled: threading.Event) -> None:
        self._raw = raw
        self._cancelled = cancelled
        self._digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        if self._cancelled.is_set():
            raise Cancelled()
        data = self._raw.read(size)
        self._digest.update(data)
        return data

    def readable(self) -> bool:
        return True

    def hexdigest(self) -> str:
        # Whatever the decryptor left unread (it stops at the end of the message) still counts.
        while self.read(1024 * 1024):
            pass
        return self._digest.hexdigest()


def unseal_checked(exchange: ExchangeArea, policy: ImagePolicy | None,
                   key_provider_factory: KeyProviderFactory, unseal: Unseal, *, bundle: str,
                   credentials: Credentials | None, target: Path, cancelled: threading.Event,
                   events: EventLog, label: str) -> tuple[Manifest, str]:
    """Unseal an inbox bundle into `target` the one way runs and services both use: the image
    policy decides from the header before any KMS request. Returns (manifest, bundle sha256)."""
    if policy is None:
        raise RunFailure("this runtime was started without an image policy and runs "
                          "nothing; the image build writes /opt/enclave/policy.json")
    with exchange.open_read(INBOX, bundle) as raw:
        # The image's policy decides from the header alone, before any KMS request. The same
        # open file is then decrypted (an upload never rewrites a file in place, it replaces
        # it), and the key provider checks the context again just before KMS.
        header = read_bundle_header(raw, bundle)
        try:
            key_arn = policy.check_header(header.data_keys, header.encryption_context)
        except BundleRefused as exc:
            events.add(f"{label}: bundle refused by the image policy")
            raise RunFailure(f"bundle {bundle!r} refused: {exc}") from exc
        raw.seek(0)
        key_provider = key_provider_factory(credentials, key_arn, policy)
        reader = _BundleReader(raw, cancelled)
        try:
            manifest = unseal(reader, target, key_provider=key_provider,
                              expected_app_id=header.encryption_context.get("app_id"))
        except Cancelled:
            raise
        except Exception as exc:
            if cancelled.is_set():
                raise Cancelled() from exc
            message = str(exc) or exc.__class__.__name__
            raise RunFailure(f"unsealing {bundle!r} failed: {message}") from exc
        return manifest, reader.hexdigest()


class Runner:
    """Accepts runs, executes each in its own worker thread, keeps their records."""

    def __init__(
        self,
        config: RuntimeConfig,
        exchange: ExchangeArea,
        events: EventLog,
        *,
        key_provider_factory: KeyProviderFactory,
        unseal: Unseal = _default_unseal,
    ) -> None:
        self.config = config
        self.exchange = exchange
        self.events = events
        self.policy = config.image_policy
        self._key_provider_factory = key_provider_factory
        self._unseal = unseal
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        # concurrent_runs as last seen in each bundle's manifest, keyed by inbox path.
        self._known_limits: dict[str, int] = {}
        self.isolated = isolation_available()
        self._users = (UserPool(config.app_uid_base, config.max_active_runs)
                       if self.isolated else None)
        private_root = Path(config.private_root)
        private_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Run users may pass through (to their own 0700 directory) but not list it.
        os.chmod(private_root, 0o711 if self.isolated else 0o700)
        if self.isolated:
            os.chmod(exchange.root, 0o700)  # apps get copies of their inputs, never the areas
            assert self._users is not None
            events.add(f"isolation: each run has its own user, ids from {self._users.base}")
        else:
            events.add("isolation: the runtime is not root, so applications run as its own user "
                       "(no per-run user, no kill of escaped processes); run as root for both")
        if self.policy is None:
            events.add("no image policy: every run is refused")
        else:
            events.add(f"image policy: {self.policy.describe()}")
        # Plaintext left by a runtime that died mid-run (on a host, not in RAM) goes first.
        for stale in private_root.glob("run-*"):
            if not wipe(stale):
                events.add("a private directory left by an earlier runtime could not be removed")

    # -- public --------------------------------------------------------------------------------

    @property
    def users(self) -> UserPool | None:
        """The pool of application users, shared with services (None when not isolated)."""
        return self._users

    def submit(self, request: RunRequest) -> Job:
        entry = self.exchange.stat(INBOX, request.bundle)  # confined; raises ExchangeError
        if entry.type != "file":
            raise IsADirectory(f"bundle {request.bundle!r} is a directory; name the sealed file")
        with self._lock:
            active = [j for j in self._jobs.values() if j.state in ACTIVE_STATES]
            if len(active) >= self.config.max_active_runs:
                raise RunRefused(
                    "busy", 429,
                    f"{len(active)} runs are in progress, the limit is "
                    f"{self.config.max_active_runs}; wait for one to finish and retry",
                )
            same = [j for j in active if j.bundle == request.bundle]
            limit = self._known_limits.get(request.bundle, 1)
            if len(same) >= limit:
                raise RunRefused(
                    "run_in_progress", 409,
                    f"bundle {request.bundle!r} already has {len(same)} run(s) in progress "
                    f"({same[0].id}); its manifest allows {limit} at a time. Wait or cancel it",
                )
            job = Job(
                id=secrets.token_hex(8),
                bundle=request.bundle,
                entrypoint=request.entrypoint,
                args=tuple(request.args),
            )
            self._jobs[job.id] = job
            self._prune()
        self.events.add(f"run {job.id}: accepted, bundle {job.bundle!r}, entrypoint "
                        f"{job.entrypoint!r}")
        # Handed over in a box the worker empties, so the credentials are referenced only by the
        # worker's own frame (not by the Thread object) and are gone once unsealing is done.
        worker = threading.Thread(
            target=self._execute, args=(job, [request]), name=f"run-{job.id}", daemon=True
        )
        worker.start()
        return job

    def get(self, run_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(run_id)

    # From here on `list` in this class body names this method: annotations below that mean
    # the type spell it `builtins.list`.
    def list(self) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.started_at)

    def cancel(self, run_id: str) -> Job | None:
        job = self.get(run_id)
        if job is not None and job.state in ACTIVE_STATES:
            job.cancel_requested.set()
            self.events.add(f"run {job.id}: cancel requested")
        return job

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel every active run and wait for them to end (and wipe), up to `timeout`."""
        active = [job for job in self.list() if job.state in ACTIVE_STATES]
        for job in active:
            job.cancel_requested.set()
        deadline = time.monotonic() + timeout
        for job in active:
            job.done.wait(max(0.0, deadline - time.monotonic()))

    # -- the run -------------------------------------------------------------------------------

    def _execute(self, job: Job, box: builtins.list[RunRequest]) -> None:
        outcome, error = FAILED, None
        user: AppUser | None = None
        try:
            if self._users is not None:
                user = self._users.acquire()
                if user is None:  # more runs than users: submit() keeps this from happening
                    raise RunFailure("no free application user; retry when a run has ended")
            outcome, error = self._run(job, box, user)
        except Cancelled:
            outcome, error = CANCELLED, "cancelled at the host's request"
        except RunFailure as exc:
            outcome, error = FAILED, str(exc)
        except (ManifestError, ExchangeError) as exc:
            outcome, error = FAILED, getattr(exc, "message", None) or str(exc)
        except Exception as exc:  # a runtime fault: report it without internals
            outcome = FAILED
            error = (f"the runtime failed while running ({exc.__class__.__name__}); "
                     "see `logs` and retry")
            self.events.add(f"run {job.id}: internal error {exc.__class__.__name__}")
        finally:
            self._finish(job, outcome, error, user)

    def _run(self, job: Job, box: builtins.list[RunRequest],
             user: AppUser | None) -> tuple[str, str | None]:
        """Unseal, lay out the files, run the app, publish its outputs: (outcome, error)."""
        request = box.pop()
        private = Path(tempfile.mkdtemp(prefix="run-", dir=self.config.private_root))
        job.private_dir = private
        app_dir = private / "app"
        app_dir.mkdir(mode=0o700)
        manifest = self._unseal_into(job, request, app_dir)
        del request  # the credentials are not needed past this point
        argv = prepare_run_files(job, manifest, private, self.exchange,
                                 self.config.app_interpreter)
        if user is not None:
            chown_tree(private, user)
        self._claim_slot(job, manifest)
        try:
            outcome = run_app(job, manifest, argv, app_dir=app_dir, private=private,
                              user=user, config=self.config, events=self.events)
        finally:
            if user is not None and not kill_user(user.uid):
                self.events.add(f"run {job.id}: processes of its user survived the kill")
        publish_outputs(job, manifest, private / "out", user, self.exchange, self.events)
        error = {
            FAILED: f"the application exited with status {job.exit_code}",
            TIMED_OUT: f"time limit of {manifest.time_limit_seconds}s reached; "
                       "the application was killed",
            CANCELLED: "cancelled at the host's request",
        }.get(outcome)
        return outcome, error

    def _finish(self, job: Job, outcome: str, error: str | None, user: AppUser | None) -> None:
        """Whatever happened: kill the run's user, wipe its plaintext, record the outcome."""
        if user is not None:
            kill_user(user.uid)  # before the wipe: nothing of the run may write any more
        wiped = wipe(job.private_dir) if job.private_dir is not None else True
        if user is not None and self._users is not None:
            self._users.release(user)
        if not wiped:
            self.events.add(f"run {job.id}: could not remove its private directory")
            error = (error + "; " if error else "") + "private directory not fully removed"
            outcome = FAILED if outcome == SUCCEEDED else outcome
        with self._lock:
            job.state = outcome
            job.error = error
            job.ended_at = time.time()
        job.done.set()
        self.events.add(f"run {job.id}: {outcome}"
                        + (f" (exit {job.exit_code})" if job.exit_code is not None else "")
                        + (f": {error}" if error and job.exit_code is None else ""))

    def _unseal_into(self, job: Job, request: RunRequest, app_dir: Path) -> Manifest:
        manifest, job.bundle_sha256 = unseal_checked(
            self.exchange, self.policy, self._key_provider_factory, self._unseal,
            bundle=request.bundle, credentials=request.credentials, target=app_dir,
            cancelled=job.cancel_requested, events=self.events, label=f"run {job.id}")
        job.app_id, job.app_version = manifest.app_id, manifest.app_version
        if job.cancel_requested.is_set():
            raise Cancelled()
        return manifest

    def _claim_slot(self, job: Job, manifest: Manifest) -> None:
        """Enforce the manifest's `concurrent_runs` across every bundle of the same app."""
        with self._lock:
            self._known_limits[job.bundle] = manifest.concurrent_runs
            if job.cancel_requested.is_set():
                raise Cancelled()
            running = [j for j in self._jobs.values()
                       if j is not job and j.state == RUNNING and j.app_id == job.app_id]
            if len(running) >= manifest.concurrent_runs:
                raise RunFailure(
                    f"app {job.app_id!r} already has {len(running)} run(s) in progress and its "
                    f"manifest allows {manifest.concurrent_runs}; wait for them or cancel one"
                )
            job.state = RUNNING

    def _prune(self) -> None:
        excess = len(self._jobs) - self.config.max_kept_runs
        if excess <= 0:
            return
        finished = sorted((j for j in self._jobs.values() if j.state in TERMINAL_STATES),
                          key=lambda j: j.started_at)
        for job in finished[:excess]:
            del self._jobs[job.id]
