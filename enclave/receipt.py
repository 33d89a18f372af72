"""Run receipts: the canonical bytes an attestation document's `user_data` commits to.

`POST /v1/runs/{id}/receipt` returns a receipt (JSON object) and an attestation document whose
`user_data` is `receipt_user_data(receipt)`. A verifier recomputes it from the receipt it received,
so both sides must serialise identically: keys sorted, no whitespace, ASCII-only escapes, UTF-8.
Shared by the runtime and the client; pure.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

RECEIPT_FORMAT = 1


def canonical_receipt(receipt: dict[str, Any]) -> bytes:
    return json.dumps(
        receipt, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def receipt_user_data(receipt: dict[str, Any]) -> bytes:
    """SHA-384 of the canonical receipt (48 bytes, within the NSM's 512-byte user_data limit)."""
    return hashlib.sha384(canonical_receipt(receipt)).digest()
