"""A run's record: what the host asked for, what happened, and what its receipt says.

The states a run goes through, the request (with credentials that are never shown), the refusals
and failures whose messages the host may read, and `Job`, the record the API shows
(`view()`) and signs into a receipt (`receipt()`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enclave.receipt import RECEIPT_FORMAT

UNSEALING = "unsealing"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
TIMED_OUT = "timed_out"
CANCELLED = "cancelled"
ACTIVE_STATES = frozenset({UNSEALING, RUNNING})
TERMINAL_STATES = frozenset({SUCCEEDED, FAILED, TIMED_OUT, CANCELLED})


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


class RunRefused(Exception):
    """The run cannot be accepted now; `code`/`status` map to the HTTP error."""

    def __init__(self, code: str, status: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.message = message


class RunFailure(Exception):
    """A run-ending failure whose message is safe to show the host."""


class Cancelled(Exception):
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
