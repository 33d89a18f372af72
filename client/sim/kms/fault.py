"""The error the local KMS answers a caller with, as KMS does:
`{"__type": kind, "message": message}`."""

from __future__ import annotations


class KmsFault(Exception):
    """An error answered to the caller as `{"__type": kind, "message": message}`."""

    def __init__(self, kind: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
