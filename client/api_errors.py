"""The runtime's error answers as client exceptions: each keeps the runtime's `code` and HTTP
status (the FUSE mount maps them to errno values) and picks the exit code it deserves."""

from __future__ import annotations

import json

from client.errors import EnclaveError, ExitStatus, NotFoundError, TimeoutExpired


class ApiError(EnclaveError):
    """The runtime answered with an error: its `code` and HTTP status are kept for callers
    (the FUSE mount maps them to errno values)."""

    def __init__(self, message: str, *, code: str, http_status: int) -> None:
        super().__init__(message)
        self.code = code
        self.http_status = http_status


class ApiNotFound(ApiError, NotFoundError):
    status = ExitStatus.NOT_FOUND


class ApiTimeout(ApiError, TimeoutExpired):
    status = ExitStatus.TIMEOUT


def error_from_response(status: int, raw: bytes) -> ApiError:
    """Map a runtime error response to the exception (and so the exit code) it deserves."""
    code, message = f"http_{status}", ""
    try:
        error = json.loads(raw)["error"]
        code = str(error.get("code") or code)
        message = str(error.get("message") or "")
    except (ValueError, KeyError, TypeError, AttributeError):
        message = raw[:200].decode("utf-8", "replace").strip()
    text = f"enclave runtime: {message or 'no message'} ({code}, HTTP {status})"
    kind = ApiError
    if status == 404:
        kind = ApiNotFound
    elif status in (408, 504):
        kind = ApiTimeout
    return kind(text, code=code, http_status=status)
