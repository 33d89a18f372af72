"""`verify-receipt FILE --expect-pcr 0=HEX ...`: check a run receipt offline, failing closed.

Checks, exit 3 on the first that fails: the attestation document as `verify-attestation` checks
it (signature, chain to the pinned AWS Nitro root or `--root`, validity at `--at`, `--expect-pcr`,
`--nonce`, no debug mode unless `--allow-debug`); that its `user_data` is the receipt's binding
(`enclave/receipt.py`: a host-requested document can never carry one); and that each local file
given with `--input NAME=PATH` / `--output NAME=PATH` has the digest the receipt names.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

from client.attestation import verify_attestation
from client.attestation_inputs import expected_pcr_map, load_root, parse_hex
from client.commands.verify_attestation import add_document_checks
from client.errors import NotFoundError, UsageError, VerificationError
from client.output import emit
from enclave.receipt import receipt_user_data

MAX_RECEIPT_FILE_BYTES = 1024 * 1024


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "verify-receipt", parents=parents,
        help="verify a saved run receipt (document, binding, file digests)",
        description="Verify a receipt file written by `receipt`: its attestation document, that "
                    "the document binds this receipt, and the digests of local files. Exit 0 "
                    "only if every check holds, 3 otherwise.")
    parser.add_argument("file", type=Path, metavar="FILE")
    add_document_checks(parser, nonce_help="require this nonce (default: the one recorded in "
                                            "the file)")
    parser.add_argument("--input", action="append", default=[], metavar="NAME=PATH",
                        type=_name_path, help="require the receipt's input NAME to be PATH's bytes")
    parser.add_argument("--output", action="append", default=[], metavar="NAME=PATH",
                        type=_name_path, help="require the receipt's output NAME to be PATH's "
                                              "bytes")
    parser.set_defaults(func=verify_receipt_command)


def _name_path(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{value!r} is not NAME=PATH, e.g. "
                                         "patients.csv=./patients.csv")
    return name, Path(path)


def load_receipt_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_RECEIPT_FILE_BYTES + 1)
    except FileNotFoundError:
        raise NotFoundError(f"no receipt file at {path}") from None
    except OSError as exc:
        raise NotFoundError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_RECEIPT_FILE_BYTES:
        raise VerificationError(f"{path} is over {MAX_RECEIPT_FILE_BYTES} bytes: not a receipt")
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise VerificationError(f"{path} is not JSON ({exc})") from None
    if (not isinstance(raw, dict) or not isinstance(raw.get("receipt"), dict)
            or not isinstance(raw.get("document"), str)):
        raise VerificationError(f"{path} is not a receipt file: expected an object with "
                                "`receipt` and `document` (written by `receipt -o`)")
    return raw


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(1024 * 1024):
                digest.update(chunk)
    except FileNotFoundError:
        raise NotFoundError(f"no file at {path}") from None
    except OSError as exc:
        raise NotFoundError(f"cannot read {path}: {exc.strerror}") from None
    return digest.hexdigest()


def check_files(kind: str, named: dict[str, str], given: list[tuple[str, Path]]) -> list[str]:
    checked = []
    for name, path in given:
        if name not in named:
            raise VerificationError(f"the receipt names no {kind} {name!r}; it names "
                                    f"{', '.join(sorted(named)) or 'none'}")
        actual = file_sha256(path)
        if not hmac.compare_digest(actual, str(named[name])):
            raise VerificationError(f"{kind} {name!r}: {path} has SHA-256 {actual}, the receipt "
                                    f"says {named[name]}: not the bytes the run used")
        checked.append(name)
    return checked


def verify_receipt_command(args: argparse.Namespace) -> int:
    expected = expected_pcr_map(args.expect_pcr, any_image=args.any_image)
    nonce = parse_hex(args.nonce, "--nonce") if args.nonce is not None else None
    root_pem = load_root(args.root)
    raw = load_receipt_file(args.file)
    receipt = raw["receipt"]
    document = read_document_text(raw["document"])
    if nonce is None and isinstance(raw.get("nonce"), str):
        nonce = recorded_nonce(raw["nonce"], args.file)
    result = verify_attestation(document, at=args.at, expected_pcrs=expected or None,
                                nonce=nonce, root_pem=root_pem,
                                allow_debug=args.allow_debug)
    if result.user_data is None or not hmac.compare_digest(result.user_data,
                                                           receipt_user_data(receipt)):
        raise VerificationError("the attestation document does not bind this receipt: the "
                                "receipt was altered, or the document was issued for something "
                                "else")
    inputs = check_files("input", receipt.get("inputs") or {}, args.input)
    outputs = check_files("output", receipt.get("outputs") or {}, args.output)
    data = {"verified": True, "receipt": receipt, "inputs_checked": inputs,
            "outputs_checked": outputs, **result.to_json()}
    pcr_line = (", ".join(f"PCR{i}" for i in sorted(expected)) + " match" if expected
                else "PCRs NOT CHECKED (--any-image)")
    lines = [
        f"receipt verified: run {receipt.get('run_id')} of {receipt.get('app_id')} "
        f"{receipt.get('app_version')}, entrypoint {receipt.get('entrypoint')}, "
        f"{receipt.get('state')} (exit {receipt.get('exit_code')})",
        f"document:  {pcr_line}; nonce {'matches' if nonce else 'not checked'}; "
        f"module {result.module_id}",
        f"bundle:    sha256 {(receipt.get('bundle') or {}).get('sha256')}",
    ]
    lines += [f"input:     {name} matches" for name in inputs]
    lines += [f"output:    {name} matches" for name in outputs]
    emit(args, data, "\n".join(lines))
    return 0


def recorded_nonce(value: str, path: Path) -> bytes:
    """The nonce the receipt file recorded: the file is evidence, so a bad one fails the check."""
    try:
        return parse_hex(value, "the recorded nonce")
    except UsageError as exc:
        raise VerificationError(f"{path}: {exc}") from None


def read_document_text(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise VerificationError("the receipt file's document is not base64") from None

