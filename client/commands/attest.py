"""`attest`: ask the enclave for a fresh attestation document and verify it.

A new 32-byte nonce goes with every request, so a recorded document cannot be replayed. The
expected measurement comes from the command line, the measurements JSON that the image build
wrote next to the EIF, the enclave this client last started, or the simulation state. With no
expectation at all the command fails: a signature alone says nothing about what runs.

The trusted root is the pinned AWS Nitro root, unless the user names another (`--root PEM`) or
says the target is the local simulation (`--simulation`, which trusts its development root). It
never falls back to the development root by itself, e.g. because no enclave was found.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
from pathlib import Path
from typing import Any

from client import hoststate
from client.attestation import verify_attestation
from client.attestation_inputs import load_root, parse_hex, parse_pcr_expectation, parse_pcr_value
from client.errors import NotFoundError, UsageError, VerificationError
from client.output import emit
from client.target import resolve_target
from enclave.receipt import HOST_USER_DATA_MAX_BYTES, host_user_data

NONCE_BYTES = 32
PCR_KEY = re.compile(r"^PCR(\d{1,2})$")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "attest", parents=parents, help="verify the enclave's attestation for a fresh nonce",
        description="Fetch an attestation document for a fresh random nonce and verify its "
                    "signature, certificate chain, nonce and measurement. Exit 3 if anything "
                    "does not verify.")
    parser.add_argument("--expect-pcr0", metavar="HEX", help="the expected PCR0 (SHA-384, hex)")
    parser.add_argument("--expect-pcr", action="append", default=[], metavar="N=HEX",
                        help="another expected PCR, e.g. 8=<hex> (repeatable)")
    parser.add_argument("--measurements", type=Path, metavar="FILE",
                        help="measurements JSON written by `nitro-cli build-enclave`")
    parser.add_argument("--eif", type=Path, metavar="PATH",
                        help="use the measurements JSON next to this EIF")
    parser.add_argument("--root", type=Path, metavar="PEM",
                        help="trust this root instead of the pinned AWS Nitro root")
    parser.add_argument("--simulation", action="store_true",
                        help="the target is the local simulation: trust its development root "
                             "(a document signed by it proves nothing on a real host)")
    parser.add_argument("--user-data", metavar="HEX",
                        help="bytes (hex) to have the enclave bind into the document, behind "
                             "its host-data tag")
    parser.add_argument("--allow-debug", action="store_true",
                        help="accept a debug-mode enclave (development only: proves nothing)")
    parser.add_argument("--save", type=Path, metavar="FILE",
                        help="also write the raw document (CBOR) to FILE")
    parser.set_defaults(func=attest_command)


def pcrs_from_measurements(data: Any, source: str) -> dict[int, bytes]:
    """PCRs from `{"Measurements": {"PCR0": ...}}` (nitro-cli) or a flat `{"PCR0": ...}`."""
    if isinstance(data, dict) and isinstance(data.get("Measurements"), dict):
        data = data["Measurements"]
    if not isinstance(data, dict):
        raise UsageError(f"{source} is not a measurements object; expected "
                         '{"Measurements": {"PCR0": "<hex>", ...}}')
    pcrs = {}
    for key, value in data.items():
        match = PCR_KEY.match(str(key))
        if match and isinstance(value, str):
            pcrs[int(match.group(1))] = parse_pcr_value(value, f"{source} {key}")
    if 0 not in pcrs:
        raise UsageError(f"{source} has no PCR0; expected the JSON that "
                         "`nitro-cli build-enclave` prints")
    return pcrs


def measurements_next_to(eif: Path) -> Path:
    for candidate in (eif.with_suffix(".json"), eif.with_name(eif.name + ".json"),
                      eif.parent / "measurements.json"):
        if candidate.is_file():
            return candidate
    raise UsageError(f"no measurements JSON next to {eif} (looked for {eif.with_suffix('.json')}"
                     f" and {eif.parent / 'measurements.json'}); pass --measurements or "
                     "--expect-pcr0")


def command_line_pcrs(args: argparse.Namespace) -> dict[int, bytes]:
    """The PCRs `--expect-pcr0` and `--expect-pcr N=HEX` name (parsed before anything runs)."""
    pcrs: dict[int, bytes] = {}
    if args.expect_pcr0:
        pcrs[0] = parse_pcr_value(args.expect_pcr0, "--expect-pcr0")
    for item in args.expect_pcr:
        index, value = parse_pcr_expectation(item)
        pcrs[index] = value
    return pcrs


def expected_pcrs(args: argparse.Namespace, given: dict[int, bytes],
                  simulation: dict[str, Any] | None) -> tuple[dict[int, bytes], str]:
    if given:
        return given, "command line"
    path = args.measurements or (measurements_next_to(args.eif) if args.eif else None)
    if path is not None:
        return pcrs_from_measurements(_load_json(path), str(path)), str(path)
    started = hoststate.read_json("enclave.json")
    if simulation is None and started and started.get("measurements"):
        return (pcrs_from_measurements(started["measurements"], "the last `enclave start`"),
                f"enclave start {started.get('eif')}")
    if simulation is not None and simulation.get("measurements"):
        return pcrs_from_measurements(simulation["measurements"], "the simulation state"), \
            "simulation"
    raise VerificationError("no expected measurement: pass --expect-pcr0 HEX, --measurements "
                            "FILE or --eif PATH; a document verified against nothing proves "
                            "nothing")


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise NotFoundError(f"measurements file {path} does not exist; pass the JSON "
                            "`nitro-cli build-enclave` wrote (the pipeline uploads it beside "
                            "the EIF)") from exc
    except OSError as exc:
        raise NotFoundError(f"cannot read measurements file {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise UsageError(f"measurements file {path} is not JSON ({exc})") from exc


def simulation_root(args: argparse.Namespace, simulation: dict[str, Any] | None
                    ) -> bytes | None:
    """PEM of the simulation's development root when the user asked for it by name
    (`--simulation`); None means the pinned AWS Nitro root."""
    if not args.simulation:
        return None
    if simulation is None:
        raise UsageError("--simulation given, but the target is not the local simulation; "
                         "start it with `python -m client simulate up`")
    return load_root(Path(simulation["dev_root"]))


def attest_command(args: argparse.Namespace) -> int:
    # What the command line says is checked before anything is asked of the enclave.
    given = command_line_pcrs(args)
    root_pem = load_root(args.root)
    user_data = parse_hex(args.user_data, "--user-data") if args.user_data else None
    if user_data is not None and not 1 <= len(user_data) <= HOST_USER_DATA_MAX_BYTES:
        raise UsageError(f"--user-data must be 1 to {HOST_USER_DATA_MAX_BYTES} bytes")
    target = resolve_target(args)
    expected, expectation_source = expected_pcrs(args, given, target.simulation)
    if root_pem is None:
        root_pem = simulation_root(args, target.simulation)
    nonce = secrets.token_bytes(NONCE_BYTES)
    with target.client(timeout=args.timeout) as client:
        document = client.attestation(nonce, user_data)
    if args.save:
        args.save.write_bytes(document)
    try:
        result = verify_attestation(document, expected_pcrs=expected, nonce=nonce,
                                    root_pem=root_pem, allow_debug=args.allow_debug)
    except VerificationError as exc:
        if root_pem is None and target.simulation is not None:
            raise VerificationError(
                "the document does not chain to the pinned AWS Nitro root: the target is the "
                "local simulation, whose development root attest trusts only when told; pass "
                "--simulation (never on a real host)") from exc
        raise
    if user_data is not None and result.user_data != host_user_data(user_data):
        raise VerificationError("the document does not carry the user data sent with the request")
    if root_pem is None:
        root_name = "the pinned AWS Nitro root"
    elif args.root is not None:
        root_name = str(args.root)
    else:
        root_name = "the simulation's development root"
    data = {"verified": True, "target": str(target.address), "expected_from": expectation_source,
            "root": root_name, **result.to_json()}
    checked = ", ".join(f"PCR{i}" for i in result.pcrs_checked)
    emit(args, data, f"attestation verified: {checked} match ({expectation_source}), nonce "
                     f"fresh, chain to {data['root']}, module {result.module_id}")
    return 0
