"""A run's files: private copies of its inputs (hashed while copied), a place for its outputs,
and, after the run, its outputs published to the outbox (hashed while moved).

So a receipt names exactly the bytes the app read and wrote, whatever the host does to the inbox
meanwhile.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from enclave.app_process import written_files
from enclave.events import EventLog
from enclave.exchange import ExchangeArea
from enclave.exchange_errors import Conflict, ExchangeError
from enclave.image import app_argv
from enclave.isolation import AppUser
from enclave.manifest import Manifest
from enclave.paths import INBOX, OUTBOX
from enclave.run_records import Job, RunFailure

_COPY_CHUNK = 1024 * 1024


def prepare_run_files(job: Job, manifest: Manifest, private: Path, exchange: ExchangeArea,
                      app_interpreter: str) -> list[str]:
    """Snapshot the inputs, lay out the outputs; return the argv (inputs and outputs mapped).

    The app reads a private copy of each input made while hashing it, so the receipt names
    exactly the bytes it read, whatever the host does to the inbox meanwhile; it writes its
    outputs privately, and only what it wrote is published to the outbox after the run.
    """
    entry = manifest.entrypoint(job.entrypoint)
    if entry.kind != "run":
        raise RunFailure(f"entrypoint {job.entrypoint!r} is a {entry.kind}: start it with "
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
                job.input_digests[value] = _snapshot_input(exchange, value, inputs)
            except ExchangeError as exc:
                raise RunFailure(f"input {spec.name!r}: {exc.message}") from exc
        elif spec.kind == "output":
            (outputs / value).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        return [*app_argv(entry.command, app_interpreter), *tail]
    except ValueError as exc:  # noexec /run: only the image's interpreters can start an app
        raise RunFailure(f"entrypoint {job.entrypoint!r}: {exc}") from None

def _snapshot_input(exchange: ExchangeArea, relative: str, inputs: Path) -> str:
    target = inputs / relative
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    digest = hashlib.sha256()
    # Opened the confined way: no link on the path, a single-link regular file.
    with exchange.open_read(INBOX, relative) as source, open(target, "xb") as copy:
        while chunk := source.read(_COPY_CHUNK):
            digest.update(chunk)
            copy.write(chunk)
    os.chmod(target, 0o400)
    return digest.hexdigest()

def publish_outputs(job: Job, manifest: Manifest, outputs: Path, user: AppUser | None,
                    exchange: ExchangeArea, events: EventLog) -> None:
    """Move what the app wrote at its declared outputs into the outbox, hashing each file."""
    entry = manifest.entrypoint(job.entrypoint)
    for spec, value in zip(entry.args, job.args, strict=False):
        if spec.kind != "output":
            continue
        for relative, fd in written_files(outputs, spec.area_path(value), user):
            with os.fdopen(fd, "rb", buffering=0) as f:
                try:
                    _make_outbox_parents(exchange, relative)
                    result = exchange.upload(OUTBOX, relative, f,
                                                  os.fstat(f.fileno()).st_size)
                except ExchangeError as exc:
                    events.add(f"run {job.id}: output {relative!r} not published: "
                                    f"{exc.message}")
                    continue
            job.output_digests[result.path] = result.sha256

def _make_outbox_parents(exchange: ExchangeArea, relative: str) -> None:
    parts = relative.split("/")[:-1]
    for depth in range(1, len(parts) + 1):
        try:
            exchange.mkdir(OUTBOX, "/".join(parts[:depth]))
        except Conflict:
            pass
