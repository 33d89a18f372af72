"""Supervising one run's process: start the app as its user, wait for it within the manifest's
time limit or until cancelled, then kill everything it started and keep what it printed.

The output kept is what the manifest allows (`Capture`), stderr without the app's source lines
(`withhold_source_lines`); both live in `enclave/app_process.py`, shared with services.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from enclave.app_process import (
    APPEXEC_SOURCE,
    Capture,
    app_environment,
    kill_group,
    withhold_source_lines,
)
from enclave.config import RuntimeConfig
from enclave.events import EventLog
from enclave.isolation import AppUser, kill_user
from enclave.manifest import Manifest
from enclave.run_records import CANCELLED, FAILED, SUCCEEDED, TIMED_OUT, Job, RunFailure

POLL_SECONDS = 0.1


def run_app(job: Job, manifest: Manifest, argv: list[str], *, app_dir: Path, private: Path,
            user: AppUser | None, config: RuntimeConfig, events: EventLog) -> str:
    """Run the app to its end; record its exit code and output in `job`; return the outcome."""
    home, tmp = _private_home_and_tmp(private, user)
    env = app_environment(config, home, tmp)
    # argv[0] is the image's interpreter (app_argv), by absolute path; the starter is the
    # same interpreter, running as the app's user.
    starter = argv[0]
    if not os.path.isfile(starter):
        raise RunFailure(f"entrypoint {job.entrypoint!r} could not be started: the image's "
                         f"interpreter {starter} is missing")
    policy = manifest.output
    capture_out = Capture(policy.max_bytes) if policy.stdout else None
    capture_err = Capture(policy.max_bytes) if policy.stderr else None
    events.add(f"run {job.id}: starting entrypoint {job.entrypoint!r}")
    process = _start(job, [starter, "-I", "-S", "-c", APPEXEC_SOURCE, *argv], app_dir, env,
                     capture_out is not None, capture_err is not None, user)
    readers = []
    if capture_out:
        readers.append(capture_out.start(process.stdout))
    if capture_err:
        readers.append(capture_err.start(process.stderr))
    try:
        outcome = _wait(process, job, time.monotonic() + manifest.time_limit_seconds)
    finally:
        _stop(process, user, readers)
    job.exit_code = process.returncode
    if capture_out:
        job.stdout = capture_out.text()
    if capture_err:
        job.stderr = withhold_source_lines(capture_err.text(), app_dir)
    return outcome


def _private_home_and_tmp(private: Path, user: AppUser | None) -> tuple[Path, Path]:
    home, tmp = private / "home", private / "tmp"
    for directory in (home, tmp):
        directory.mkdir(mode=0o700)
        if user is not None:
            os.chown(directory, user.uid, user.gid)
    return home, tmp


def _start(job: Job, command: list[str], app_dir: Path, env: dict[str, str], stdout: bool,
           stderr: bool, user: AppUser | None) -> subprocess.Popen[bytes]:
    identity: dict[str, Any] = {}
    if user is not None:
        identity = {"user": user.uid, "group": user.gid, "extra_groups": []}
    try:
        return subprocess.Popen(
            command,
            cwd=app_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
            stderr=subprocess.PIPE if stderr else subprocess.DEVNULL,
            start_new_session=True,  # its own process group, killed as a whole
            close_fds=True,
            **identity,
        )
    except OSError as exc:
        raise RunFailure(
            f"entrypoint {job.entrypoint!r} could not be started: {exc.strerror or exc}"
        ) from exc


def _wait(process: subprocess.Popen[bytes], job: Job, deadline: float) -> str:
    """The outcome: the app's own exit, or the host's cancel, or the time limit."""
    while True:
        try:
            process.wait(timeout=POLL_SECONDS)
            return SUCCEEDED if process.returncode == 0 else FAILED
        except subprocess.TimeoutExpired:
            if job.cancel_requested.is_set():
                return CANCELLED
            if time.monotonic() >= deadline:
                return TIMED_OUT


def _stop(process: subprocess.Popen[bytes], user: AppUser | None,
          readers: list[threading.Thread]) -> None:
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
