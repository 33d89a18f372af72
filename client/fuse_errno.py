"""The errno a program sees when the runtime refuses a FUSE operation (`client/fusefs.py`)."""

from __future__ import annotations

import errno

from client.api_errors import ApiError
from client.errors import NotFoundError, UsageError

# The runtime's error codes (enclave/exchange.py, enclave/server.py) and the errno each means.
# Decided by the code alone, never by the message's text.
ERRNO_BY_CODE = {
    "not_found": errno.ENOENT,
    "bad_path": errno.EINVAL,  # a name the runtime refuses (reserved, control character...)
    "read_only": errno.EROFS,
    "not_regular_file": errno.EACCES,  # a device, FIFO or socket; a file with several links
    "exists": errno.EEXIST,
    "not_empty": errno.ENOTEMPTY,
    "is_a_directory": errno.EISDIR,
    "too_many_entries": errno.EOVERFLOW,  # a directory too large to list, not a large file
    "payload_too_large": errno.EFBIG,
    "insufficient_storage": errno.ENOSPC,
}
# For codes this table does not know (a newer runtime's): the HTTP status decides.
ERRNO_BY_STATUS = {401: errno.EACCES, 403: errno.EACCES, 404: errno.ENOENT, 409: errno.EEXIST,
                   413: errno.EFBIG, 507: errno.ENOSPC}


def errno_for(exc: Exception) -> int:
    """The errno a program should see for a failed runtime call."""
    if isinstance(exc, ApiError):
        fallback = errno.EINVAL if 400 <= exc.http_status < 500 else errno.EIO
        return ERRNO_BY_CODE.get(exc.code, ERRNO_BY_STATUS.get(exc.http_status, fallback))
    if isinstance(exc, NotFoundError):  # nothing answers at the runtime's address
        return errno.ENOENT
    if isinstance(exc, UsageError):
        return errno.EINVAL
    return errno.EIO
