"""The exchange area's refusals and failures, each with the HTTP status and code the host sees.

Shared by the runtime (`enclave/exchange.py`, `enclave/server.py`) and the path rule
(`enclave/paths.py`), so a client importing the rule gets the same `PathRejected`.
"""

from __future__ import annotations


class ExchangeError(Exception):
    """A refused or failed exchange-area operation; `code` and `status` map to the HTTP error."""

    code = "exchange_error"
    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PathRejected(ExchangeError):
    code = "bad_path"
    status = 400


class NotFound(ExchangeError):
    code = "not_found"
    status = 404


class NotRegularFile(ExchangeError):
    code = "not_regular_file"
    status = 403


class Conflict(ExchangeError):
    code = "conflict"
    status = 409


# The kinds of conflict carry their own codes, so a client (the FUSE layer's errno) need not
# read messages; each is still a `Conflict` (409).
class AlreadyExists(Conflict):
    code = "exists"


class NotEmpty(Conflict):
    code = "not_empty"


class IsADirectory(Conflict):
    code = "is_a_directory"


class TooMany(ExchangeError):
    code = "too_many_entries"
    status = 413


class NoSpace(ExchangeError):
    code = "insufficient_storage"
    status = 507


class UploadIncomplete(ExchangeError):
    """The body ended before Content-Length bytes arrived (client gone); nothing was kept."""

    code = "upload_incomplete"
    status = 400
