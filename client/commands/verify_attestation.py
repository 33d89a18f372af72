"""`verify-attestation FILE`: verify a saved Nitro Enclaves attestation document, offline.

Checks, failing closed (exit 3 on the first that fails): COSE_Sign1 ES384 signature over the
payload as received; certificate chain from the document's cabundle to the pinned AWS Nitro
Enclaves Root-G1 (or `--root`, e.g. the local simulation's development root); every certificate
valid at `--at` (default now); each `--expect-pcr`; `--nonce`; and no debug-mode document unless
`--allow-debug`. Without `--expect-pcr` a genuine document may come from any enclave, so the
command fails (exit 3) unless `--any-image` says that is what the user wants.

FILE holds the document as raw CBOR bytes, or as base64 text (as APIs and logs often carry it).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
from pathlib import Path
from typing import Any

from client.attestation import AWS_NITRO_ROOT_G1_SHA256, verify_attestation
from client.attestation_inputs import expected_pcr_map, load_root, parse_hex
from client.errors import NotFoundError, UsageError
from client.output import emit

SHOWN_PCRS = (0, 1, 2, 8)  # image, kernel+boot, application, signing certificate
MAX_DOCUMENT_BYTES = 64 * 1024


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "verify-attestation", parents=parents,
        help="verify a saved attestation document (signature, chain, PCRs, nonce)",
        description="Verify an AWS Nitro Enclaves attestation document: COSE signature, "
                    "certificate chain to the pinned AWS Nitro root, validity time, expected "
                    "PCRs, nonce, debug mode. Exit 0 only if every check holds, 3 otherwise.")
    parser.add_argument("file", type=Path, metavar="FILE",
                        help="the document (raw CBOR, or base64 text)")
    add_document_checks(parser, nonce_help="require the document to carry this nonce")
    parser.set_defaults(func=verify_attestation_command)


def add_document_checks(parser: argparse.ArgumentParser, *, nonce_help: str) -> None:
    """The options every offline check of an attestation document takes (one definition)."""
    parser.add_argument("--at", metavar="TIME", type=parse_time,
                        help="verify as of this time, ISO 8601 with a zone, e.g. "
                             "2023-01-18T13:07:20Z (default: now)")
    parser.add_argument("--expect-pcr", action="append", default=[], metavar="N=HEX",
                        help="require PCR N to equal HEX (96 hex digits); "
                                             "repeat for several PCRs")
    parser.add_argument("--any-image", action="store_true",
                        help="check the document without any expected PCR: it then proves only "
                             "that some Nitro enclave made it (instead of --expect-pcr)")
    parser.add_argument("--nonce", metavar="HEX", help=nonce_help)
    parser.add_argument("--root", type=Path, metavar="PEM",
                        help="trust this root certificate instead of the pinned AWS Nitro root "
                             "(the local simulation's <state>/pki/root.pem)")
    parser.add_argument("--allow-debug", action="store_true",
                        help="accept a debug-mode document (all-zero PCRs): development only")


def parse_time(value: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO 8601 time; expected e.g. 2023-01-18T13:07:20Z") from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{value!r} has no time zone; add Z for UTC, e.g. 2023-01-18T13:07:20Z")
    return parsed.astimezone(dt.UTC)


def read_document(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"no attestation document at {path}") from None
    except OSError as exc:
        raise NotFoundError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise UsageError(f"{path} is {len(data)} bytes; an attestation document is well under "
                         f"{MAX_DOCUMENT_BYTES}")
    if data[:1] in (b"\x84", b"\xd2"):  # a COSE_Sign1 array, untagged or tagged
        return data
    try:
        return base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        return data  # not base64 either: let the verifier say what is wrong with it


def presence(value: bytes | None) -> str:
    return f"present, {len(value)} bytes" if value else "absent"


def verify_attestation_command(args: argparse.Namespace) -> int:
    expected = expected_pcr_map(args.expect_pcr, any_image=args.any_image)
    nonce = parse_hex(args.nonce, "--nonce") if args.nonce is not None else None
    root_pem = load_root(args.root)
    document = read_document(args.file)
    result = verify_attestation(document, at=args.at, expected_pcrs=expected or None,
                                nonce=nonce, root_pem=root_pem,
                                allow_debug=args.allow_debug)
    shown = sorted({i for i, v in result.pcrs.items() if any(v)} | set(SHOWN_PCRS)
                   & set(result.pcrs))
    root = (f"AWS Nitro Enclaves Root-G1 (pinned, SHA-256 {AWS_NITRO_ROOT_G1_SHA256})"
            if args.root is None else f"{args.root} (SHA-256 {result.root_sha256})")
    data: dict[str, Any] = {"verified": True, "root_file": str(args.root) if args.root else None,
                            **result.to_json()}
    lines = [
        "attestation document verified",
        f"module id:   {result.module_id}",
        f"timestamp:   {data['timestamp']}",
        f"root:        {root}",
        f"debug mode:  {'YES (accepted by --allow-debug)' if result.debug_mode else 'no'}",
        f"public key:  {presence(result.public_key)}",
        f"user data:   {presence(result.user_data)}",
        f"nonce:       {'matches' if nonce else presence(result.nonce) + ', not checked'}",
    ]
    for index in shown:
        mark = "  (expected: match)" if index in expected else ""
        lines.append(f"PCR{index:<2}        {result.pcrs[index].hex()}{mark}")
    if not expected:
        lines.append("PCRs:        NOT CHECKED (--any-image)")
    emit(args, data, "\n".join(lines))
    return 0
