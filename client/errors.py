"""Exceptions the client's commands raise, each mapped by `client.cli.main` to an exit status.

The logic below `main` raises; it never prints-and-exits. A message says what was wrong, what was
expected and what to do next, on one line.
"""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """Documented exit codes of `python -m client` (README, "Exit codes")."""

    OK = 0
    ERROR = 1  # an unexpected failure; the message says what happened
    USAGE = 2  # bad command line or configuration (client/attestation_inputs.py: bad hex)
    VERIFICATION_FAILED = 3  # an attestation document or measurement did not verify
    NOT_FOUND = 4  # no enclave, no simulation, no such file or job, an unreadable file
    ENCLAVE_ERROR = 5  # the enclave runtime refused the request or failed
    AWS_ERROR = 6  # an AWS/KMS/S3 call failed or was denied
    TIMEOUT = 7  # a wait or a run exceeded its time limit
    INTERRUPTED = 130  # SIGINT (Ctrl-C), 128 + 2 as a shell reports it
    TERMINATED = 143  # SIGTERM (e.g. `sync --foreground` stopped by kill), 128 + 15


class ClientError(Exception):
    """A failure the user can act on."""

    status: ExitStatus = ExitStatus.ERROR

    def __init__(self, message: str, *, status: ExitStatus | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class UsageError(ClientError):
    status = ExitStatus.USAGE


class VerificationError(ClientError):
    status = ExitStatus.VERIFICATION_FAILED


class NotFoundError(ClientError):
    status = ExitStatus.NOT_FOUND


class EnclaveError(ClientError):
    status = ExitStatus.ENCLAVE_ERROR


class AwsError(ClientError):
    status = ExitStatus.AWS_ERROR


class TimeoutExpired(ClientError):
    status = ExitStatus.TIMEOUT
