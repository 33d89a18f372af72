"""`receipt RUN_ID [-o FILE]`: fetch a finished run's receipt, signed by the enclave, as one file.

The runtime answers with the receipt (what ran: app, version, bundle digest, entrypoint,
arguments, the digests of the bytes the app read and wrote, outcome) and an attestation document
whose `user_data` binds it (`enclave/receipt.py`), for a fresh nonce of this command's. The file
is self-contained JSON, to be checked anywhere, later, with `verify-receipt`.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import sys
from pathlib import Path
from typing import Any

from client.api import RuntimeClient
from client.errors import EnclaveError, UsageError
from client.output import emit
from client.target import resolve_target

RECEIPT_FILE_FORMAT = 1
NONCE_BYTES = 32


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "receipt", parents=parents, help="save a finished run's signed receipt",
        description="Fetch the receipt of a finished run with an attestation document binding "
                    "it, for a fresh nonce, into one JSON file for `verify-receipt`.")
    parser.add_argument("run_id", metavar="RUN_ID")
    parser.add_argument("-o", "--output", type=Path, metavar="FILE",
                        help="write the receipt file here (default: standard output)")
    parser.set_defaults(func=receipt_command)


def fetch_receipt_file(client: RuntimeClient, run_id: str) -> dict[str, Any]:
    """The receipt file's content for `run_id`, bound to a fresh nonce of ours."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    answer = client.receipt(run_id, nonce)
    receipt, document = answer.get("receipt"), answer.get("document")
    if not isinstance(receipt, dict) or not isinstance(document, str):
        raise EnclaveError("the runtime's receipt answer lacks `receipt` or `document`; check "
                           "that --socket/--cid points at this project's runtime")
    try:
        base64.b64decode(document, validate=True)
    except ValueError as exc:
        raise EnclaveError("the runtime's receipt document is not base64") from exc
    return {"format": RECEIPT_FILE_FORMAT, "nonce": nonce.hex(), "receipt": receipt,
            "document": document}


def receipt_command(args: argparse.Namespace) -> int:
    target = resolve_target(args)
    with target.client(timeout=args.timeout) as client:
        bundle = fetch_receipt_file(client, args.run_id)
    receipt = bundle["receipt"]
    nonce = bytes.fromhex(bundle["nonce"])
    text = json.dumps(bundle, indent=2, sort_keys=True) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        args.output.write_text(text)
    except OSError as exc:
        raise UsageError(f"cannot write {args.output}: {exc.strerror}") from exc
    emit(args, {"run_id": receipt.get("run_id"), "file": str(args.output), "nonce": nonce.hex()},
         f"receipt of run {receipt.get('run_id')} ({receipt.get('state')}) saved to "
         f"{args.output}; check it with `python -m client verify-receipt {args.output} "
         "--expect-pcr 0=<PCR0>`")
    return 0
