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
"""

from __future__ import annotations

import builtins
import hashlib
import os
import secrets
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from enclave.app_process import (
    APPEXEC_SOURCE,
    Capture,
    app_environment,
    kill_group,
    wipe,
    withhold_source_lines,
    written_files,
)
from enclave.config import RuntimeConfig
from enclave.events import EventLog
from enclave.exchange import ExchangeArea
from enclave.exchange_errors import Conflict, ExchangeError, IsADirectory
from enclave.image import app_argv
from enclave.isolation import AppUser, UserPool, chown_tree, isolation_available, kill_user
from enclave.manifest import Manifest, ManifestError
from enclave.paths import INBOX, OUTBOX
from enclave.policy import BundleRefused, ImagePolicy
from enclave.receipt import RECEIPT_FORMAT

UNSEALING = "unsealing"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
TIMED_OUT = "timed_out"
CANCELLED = "cancelled"
ACTIVE_STATES = frozenset({UNSEALING, RUNNING})
TERMINAL_STATES = frozenset({SUCCEEDED, FAILED, TIMED_OUT, CANCELLED})

_COPY_CHUNK = 1024 * 1024
MAX_DATA_KEYS = 16


@dataclass(frozen=True)
class Credentials:
    """AWS credentials for one run's KMS call. Never logged, never stored beyond the run."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:
        return "Credentials(<withheld>)"


@dataclass(frozen=True)
class RunRequest:
    bundle: str
    entrypoint: str
    args: tuple[str, ...]
    credentials: Credentials | None = field(default=None, repr=False)


# Builds the key provider that unseals with this run's credentials, for the one pinned KMS key
# ARN the bundle's header was checked against (the image policy chose it, not the host).
KeyProviderFactory = Callable[[Credentials | None, str, ImagePolicy], Any]
Unseal = Callable[..., Manifest]


class RunRefused(Exception):
    """The run cannot be accepted now; `code`/`status` map to the HTTP error."""

    def __init__(self, code: str, status: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message


class _RunFailure(Exception):
    """A run-ending failure whose message is safe to show the host."""


class _Cancelled(Exception):
    pass


@dataclass
class Job:
    id: str
    bundle: str
    entrypoint: str
    args: tuple[str, ...]
    state: str = UNSEALING
    exit_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    output_digests: dict[str, str] = field(default_factory=dict)
    # Receipt material, known once the bundle has been read and the inputs hashed.
    bundle_sha256: str | None = None
    input_digests: dict[str, str] = field(default_factory=dict)
    app_id: str | None = None
    app_version: str | None = None
    # Internal.
    private_dir: Path | None = field(default=None, repr=False)
    cancel_requested: threading.Event = field(default_factory=threading.Event, repr=False)
    done: threading.Event = field(default_factory=threading.Event, repr=False)

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "bundle": self.bundle,
            "entrypoint": self.entrypoint,
            "state": self.state,
            "exit_code": self.exit_code,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "error": self.error,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "output_digests": dict(self.output_digests),
        }

    def receipt(self) -> dict[str, Any]:
        return {
            "format": RECEIPT_FORMAT,
            "run_id": self.id,
            "app_id": self.app_id,
            "app_version": self.app_version,
            "bundle": {"path": self.bundle, "sha256": self.bundle_sha256},
            "entrypoint": self.entrypoint,
            "args": list(self.args),
            "inputs": dict(self.input_digests),
            "outputs": dict(self.output_digests),
            "state": self.state,
            "exit_code": self.exit_code,
        }


def attested_kms_key_provider_factory(config: RuntimeConfig, nsm: Any) -> KeyProviderFactory:
    """Production: KMS Decrypt with an attestation document, through the in-enclave bridge.

    The key ARN and the region are the image policy's; the host only lends its credentials.
    """

    def build(credentials: Credentials | None, key_arn: str, policy: ImagePolicy) -> Any:
        import boto3

        from enclave.keyprovider import AttestedKmsMasterKeyProvider

        if credentials is None:
            raise _RunFailure(
                "the run request carries no AWS credentials; the enclave has no other source. "
                "Send credentials (the client takes them from IMDSv2)"
            )
        kms = boto3.session.Session(
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            aws_session_token=credentials.session_token,
            region_name=policy.region,
        ).client("kms", endpoint_url=config.kms_endpoint_for(policy.region))
        return AttestedKmsMasterKeyProvider(key_arn, kms, nsm,
                                            context_guard=policy.check_context)

    return build


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
        raise _RunFailure(
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
            raise _Cancelled()
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
        raise _RunFailure("this runtime was started without an image policy and runs "
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
            raise _RunFailure(f"bundle {bundle!r} refused: {exc}") from exc
        raw.seek(0)
        key_provider = key_provider_factory(credentials, key_arn, policy)
        reader = _BundleReader(raw, cancelled)
        try:
            manifest = unseal(reader, target, key_provider=key_provider,
                              expected_app_id=header.encryption_context.get("app_id"))
        except _Cancelled:
            raise
        except Exception as exc:
            if cancelled.is_set():
                raise _Cancelled() from exc
            message = str(exc) or exc.__class__.__name__
            raise _RunFailure(f"unsealing {bundle!r} failed: {message}") from exc
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
        request = box.pop()
        outcome, error = FAILED, None
        private: Path | None = None
        user: AppUser | None = None
        try:
            if self._users is not None:
                user = self._users.acquire()
                if user is None:  # more runs than users: submit() keeps this from happening
                    raise _RunFailure("no free application user; retry when a run has ended")
            private = Path(tempfile.mkdtemp(prefix="run-", dir=self.config.private_root))
            job.private_dir = private
            app_dir = private / "app"
            app_dir.mkdir(mode=0o700)
            manifest = self._unseal_into(job, request, app_dir)
            del request  # the credentials are not needed past this point
            argv = self._prepare(job, manifest, private)
            if user is not None:
                chown_tree(private, user)
            self._claim_slot(job, manifest)
            try:
                outcome = self._launch(job, manifest, argv, app_dir, private, user)
            finally:
                if user is not None and not kill_user(user.uid):
                    self.events.add(f"run {job.id}: processes of its user survived the kill")
            self._publish_outputs(job, manifest, private / "out", user)
            error = {
                FAILED: f"the application exited with status {job.exit_code}",
                TIMED_OUT: f"time limit of {manifest.time_limit_seconds}s reached; "
                           "the application was killed",
                CANCELLED: "cancelled at the host's request",
            }.get(outcome)
        except _Cancelled:
            outcome, error = CANCELLED, "cancelled at the host's request"
        except _RunFailure as exc:
            outcome, error = FAILED, str(exc)
        except (ManifestError, ExchangeError) as exc:
            outcome, error = FAILED, getattr(exc, "message", None) or str(exc)
        except Exception as exc:  # a runtime fault: report it without internals
            outcome = FAILED
            error = (f"the runtime failed while running ({exc.__class__.__name__}); "
                     "see `logs` and retry")
            self.events.add(f"run {job.id}: internal error {exc.__class__.__name__}")
        finally:
            if user is not None:
                kill_user(user.uid)  # before the wipe: nothing of the run may write any more
            wiped = wipe(private) if private is not None else True
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
            raise _Cancelled()
        return manifest

    def _prepare(self, job: Job, manifest: Manifest, private: Path) -> builtins.list[str]:
        """Snapshot the inputs, lay out the outputs; return the argv (inputs and outputs mapped).

        The app reads a private copy of each input made while hashing it, so the receipt names
        exactly the bytes it read, whatever the host does to the inbox meanwhile; it writes its
        outputs privately, and only what it wrote is published to the outbox after the run.
        """
        entry = manifest.entrypoint(job.entrypoint)
        if entry.kind != "run":
            raise _RunFailure(f"entrypoint {job.entrypoint!r} is a {entry.kind}: start it with "
                              f"`python -m client service start -s {job.entrypoint}`")
        inputs, outputs = private / "in", private / "out"
        inputs.mkdir(mode=0o700)
        outputs.mkdir(mode=0o700)
        tail = manifest.resolve_arguments(job.entrypoint, list(job.args), inputs, outputs)
        for spec, value in zip(entry.args, job.args, strict=False):
            if spec.kind in ("input", "output"):
                value = spec.area_path(value)  # `inbox/x` is `x`, as resolve_arguments read it
            if spec.kind == "input":
                try:
                    job.input_digests[value] = self._snapshot_input(value, inputs)
                except ExchangeError as exc:
                    raise _RunFailure(f"input {spec.name!r}: {exc.message}") from exc
            elif spec.kind == "output":
                (outputs / value).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            return [*app_argv(entry.command, self.config.app_interpreter), *tail]
        except ValueError as exc:  # noexec /run: only the image's interpreters can start an app
            raise _RunFailure(f"entrypoint {job.entrypoint!r}: {exc}") from None

    def _snapshot_input(self, relative: str, inputs: Path) -> str:
        target = inputs / relative
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        digest = hashlib.sha256()
        # Opened the confined way: no link on the path, a single-link regular file.
        with self.exchange.open_read(INBOX, relative) as source, open(target, "xb") as copy:
            while chunk := source.read(_COPY_CHUNK):
                digest.update(chunk)
                copy.write(chunk)
        os.chmod(target, 0o400)
        return digest.hexdigest()

    def _publish_outputs(self, job: Job, manifest: Manifest, outputs: Path,
                         user: AppUser | None) -> None:
        """Move what the app wrote at its declared outputs into the outbox, hashing each file."""
        entry = manifest.entrypoint(job.entrypoint)
        for spec, value in zip(entry.args, job.args, strict=False):
            if spec.kind != "output":
                continue
            for relative, fd in written_files(outputs, spec.area_path(value), user):
                with os.fdopen(fd, "rb", buffering=0) as f:
                    try:
                        self._make_parents(relative)
                        result = self.exchange.upload(OUTBOX, relative, f,
                                                      os.fstat(f.fileno()).st_size)
                    except ExchangeError as exc:
                        self.events.add(f"run {job.id}: output {relative!r} not published: "
                                        f"{exc.message}")
                        continue
                job.output_digests[result.path] = result.sha256

    def _make_parents(self, relative: str) -> None:
        parts = relative.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            try:
                self.exchange.mkdir(OUTBOX, "/".join(parts[:depth]))
            except Conflict:
                pass

    def _claim_slot(self, job: Job, manifest: Manifest) -> None:
        """Enforce the manifest's `concurrent_runs` across every bundle of the same app."""
        with self._lock:
            self._known_limits[job.bundle] = manifest.concurrent_runs
            if job.cancel_requested.is_set():
                raise _Cancelled()
            running = [j for j in self._jobs.values()
                       if j is not job and j.state == RUNNING and j.app_id == job.app_id]
            if len(running) >= manifest.concurrent_runs:
                raise _RunFailure(
                    f"app {job.app_id!r} already has {len(running)} run(s) in progress and its "
                    f"manifest allows {manifest.concurrent_runs}; wait for them or cancel one"
                )
            job.state = RUNNING

    def _launch(self, job: Job, manifest: Manifest, argv: builtins.list[str], app_dir: Path,
                private: Path, user: AppUser | None) -> str:
        home, tmp = private / "home", private / "tmp"
        for directory in (home, tmp):
            directory.mkdir(mode=0o700)
            if user is not None:
                os.chown(directory, user.uid, user.gid)
        env = app_environment(self.config, home, tmp)
        # argv[0] is the image's interpreter (app_argv), by absolute path; the starter is the
        # same interpreter, running as the app's user.
        starter = argv[0]
        if not os.path.isfile(starter):
            raise _RunFailure(f"entrypoint {job.entrypoint!r} could not be started: the image's "
                              f"interpreter {starter} is missing")
        policy = manifest.output
        capture_out = Capture(policy.max_bytes) if policy.stdout else None
        capture_err = Capture(policy.max_bytes) if policy.stderr else None
        self.events.add(f"run {job.id}: starting entrypoint {job.entrypoint!r}")
        identity: dict[str, Any] = {}
        if user is not None:
            identity = {"user": user.uid, "group": user.gid, "extra_groups": []}
        try:
            process = subprocess.Popen(
                [starter, "-I", "-S", "-c", APPEXEC_SOURCE, *argv],
                cwd=app_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture_out else subprocess.DEVNULL,
                stderr=subprocess.PIPE if capture_err else subprocess.DEVNULL,
                start_new_session=True,  # its own process group, killed as a whole
                close_fds=True,
                **identity,
            )
        except OSError as exc:
            raise _RunFailure(
                f"entrypoint {job.entrypoint!r} could not be started: {exc.strerror or exc}"
            ) from exc
        readers = []
        if capture_out:
            readers.append(capture_out.start(process.stdout))
        if capture_err:
            readers.append(capture_err.start(process.stderr))
        deadline = time.monotonic() + manifest.time_limit_seconds
        outcome = None
        try:
            while outcome is None:
                try:
                    process.wait(timeout=0.1)
                    outcome = SUCCEEDED if process.returncode == 0 else FAILED
                except subprocess.TimeoutExpired:
                    if job.cancel_requested.is_set():
                        outcome = CANCELLED
                    elif time.monotonic() >= deadline:
                        outcome = TIMED_OUT
        finally:
            # Always, also after a clean exit: nothing the app started outlives the run.
            kill_group(process.pid)
            if user is not None:
                kill_user(user.uid)
            process.wait()
            for reader in readers:
                reader.join(timeout=5)
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()
        job.exit_code = process.returncode
        if capture_out:
            job.stdout = capture_out.text()
        if capture_err:
            job.stderr = withhold_source_lines(capture_err.text(), app_dir)
        return outcome

    def _prune(self) -> None:
        excess = len(self._jobs) - self.config.max_kept_runs
        if excess <= 0:
            return
        finished = sorted((j for j in self._jobs.values() if j.state in TERMINAL_STATES),
                          key=lambda j: j.started_at)
        for job in finished[:excess]:
            del self._jobs[job.id]
