"""What the AWS Encryption SDK and botocore report, translated into what a user can act on.

The SDK hides a key service's refusal behind a generic "unable to decrypt" error and logs the
cause; `key_service_errors()` collects those causes on the calling thread, `service_error_text`
finds an AWS error in an exception's chain, `describe_error` makes any exception one line.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
from collections.abc import Iterator

from botocore.exceptions import BotoCoreError, ClientError

# Loggers whose ERROR records may carry a key service failure (see _KeyServiceErrorLog), and the
# record attribute under which the enclave's attested key provider puts the exception.
KEY_SERVICE_LOGGERS = ("aws_encryption_sdk", "enclave")
KEY_SERVICE_ERROR = "key_service_error"


class _KeyServiceErrorLog(logging.Handler):
    """Keeps the key service errors logged on this thread.

    The SDK's key providers log a KMS failure (AccessDenied, a disabled key, throttling) and then
    raise a generic "unable to decrypt" error; the logged cause is what the user can act on. The
    SDK's own providers log it as the record's exception; the enclave's attested key provider
    (enclave.attested_kms) as its `KEY_SERVICE_ERROR` attribute. Being a handler on the SDK's
    logger also keeps Python's last-resort handler from printing the SDK's tracebacks to stderr.
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.thread = threading.get_ident()
        self.causes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread:
            return
        error = getattr(record, KEY_SERVICE_ERROR, None)
        if error is None and record.exc_info:
            error = record.exc_info[1]
        cause = service_error_text(error) if isinstance(error, BaseException) else ""
        if cause and cause not in self.causes:
            self.causes.append(cause)


@contextlib.contextmanager
def key_service_errors() -> Iterator[list[str]]:
    handler = _KeyServiceErrorLog()
    loggers = [logging.getLogger(name) for name in KEY_SERVICE_LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler.causes
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def service_error_text(exc: BaseException) -> str:
    """`Code: message` of the first AWS error in an exception's chain, else ''."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ClientError):
            error = seen.response.get("Error", {})
            return f"{error.get('Code', 'Error')}: {error.get('Message', '')}".rstrip(": ")
        if isinstance(seen, BotoCoreError):
            return describe_error(seen)
        seen = seen.__cause__ or seen.__context__
    return ""


def key_service_suffix(causes: list[str]) -> str:
    return f" (key service: {'; '.join(causes)})" if causes else ""


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}" + (" (disk full?)" if exc.errno == errno.ENOSPC else "")
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
