"""What the enclave signs for the host: run receipts and host data, in separate domains.

An attestation document's `user_data` is the only value the host can ask the enclave to sign.
Both uses are tagged before they go in, so one can never stand for the other:

- a run receipt (`POST /v1/runs/{id}/receipt`): `RECEIPT_TAG || SHA-384(canonical receipt)`;
- host data (`POST /v1/attestation` with `user_data`): `HOST_TAG || the host's bytes`.

The tags differ in their first bytes, so no host data can produce a receipt's binding and no
receipt a host value. A verifier recomputes the binding from the receipt it received, so both
sides serialise identically: keys sorted, no whitespace, ASCII-only escapes. Shared by the runtime
and the client; pure.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

RECEIPT_FORMAT = 2
RECEIPT_TAG = b"sealed-enclave/run-receipt/v2\x00"
HOST_TAG = b"sealed-enclave/host-data/v1\x00"
NSM_USER_DATA_MAX_BYTES = 512
HOST_USER_DATA_MAX_BYTES = NSM_USER_DATA_MAX_BYTES - len(HOST_TAG)


def canonical_receipt(receipt: dict[str, Any]) -> bytes:
    return json.dumps(
        receipt, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def receipt_user_data(receipt: dict[str, Any]) -> bytes:
    """The receipt's binding: its tag and the SHA-384 of its canonical bytes (79 bytes)."""
    return RECEIPT_TAG + hashlib.sha384(canonical_receipt(receipt)).digest()


def host_user_data(data: bytes) -> bytes:
    """What a host-requested document carries for the host's `data`."""
    if not 1 <= len(data) <= HOST_USER_DATA_MAX_BYTES:
        raise ValueError(f"host user data must be 1 to {HOST_USER_DATA_MAX_BYTES} bytes")
    return HOST_TAG + data
