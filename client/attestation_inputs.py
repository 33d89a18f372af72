"""What a user gives the attestation checks: expected PCRs, nonces and other hex values, and the
root certificate to trust. One definition for `attest`, `verify-attestation`, `verify-receipt`
and `jobs results`, so that the same mistake gets the same message and exit status everywhere:

- a malformed value (hex, `N=HEX`) is a usage error, exit 2, `error: <option> '<value>' is not
  ...; <what to give instead>`;
- a root certificate that cannot be read is a file not found, exit 4, `error: cannot read the root
  certificate <path>: <reason>; ...`, as for every other file named on the command line.

Values are parsed in the command, not by argparse, so that both mistakes go through
`client.cli.main` and read alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from client.attestation import SHA384_BYTES
from client.errors import NotFoundError, UsageError, VerificationError

MAX_PCR_INDEX = 31
PCR_HINT = "as printed by `nitro-cli describe-eif` or the measurements JSON"


def parse_hex(value: str, what: str) -> bytes:
    """Bytes from hex text (case-insensitive, an optional 0x, surrounding blanks ignored)."""
    text = value.strip().lower().removeprefix("0x")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise UsageError(f"{what} {value!r} is not hex; give an even number of hex digits, "
                         "e.g. 01ab") from None
    if not raw:
        raise UsageError(f"{what} {value!r} is empty; give at least one byte in hex, e.g. 01ab")
    return raw


def parse_pcr_value(value: str, what: str) -> bytes:
    """One PCR (SHA-384) from hex text."""
    text = value.strip().lower().removeprefix("0x")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise UsageError(f"{what} {value!r} is not hex; give the {2 * SHA384_BYTES} hex digits "
                         f"of a PCR {PCR_HINT}") from None
    if len(raw) != SHA384_BYTES:
        raise UsageError(f"{what} {value!r} has {len(text)} hex digits; a PCR (SHA-384) has "
                         f"{2 * SHA384_BYTES}, {PCR_HINT}")
    return raw


def parse_pcr_expectation(item: str, option: str = "--expect-pcr") -> tuple[int, bytes]:
    """`N=HEX` (N in 0..31) as (N, PCR value)."""
    index, sep, value = item.partition("=")
    index = index.strip()
    if not sep or not index.isdigit() or int(index) > MAX_PCR_INDEX:
        raise UsageError(f"{option} {item!r} is not N=HEX with N in 0..{MAX_PCR_INDEX}; e.g. "
                         f"{option} 0=<PCR0 {PCR_HINT}>")
    return int(index), parse_pcr_value(value, f"{option} {item!r}:")


def expected_pcr_map(items: Iterable[str], *, any_image: bool) -> dict[int, bytes]:
    """The expected PCRs from `--expect-pcr N=HEX` items; none at all is a failure unless the
    user said `--any-image`."""
    expected: dict[int, bytes] = {}
    for index, value in map(parse_pcr_expectation, items):
        if index in expected and expected[index] != value:
            raise UsageError(f"--expect-pcr gives two different values for PCR{index}")
        expected[index] = value
    if expected and any_image:
        raise UsageError("--any-image and --expect-pcr contradict each other; give one")
    if not expected and not any_image:
        raise VerificationError(
            "no --expect-pcr given: a genuine document from any enclave would pass, which "
            "proves nothing about what ran; pass --expect-pcr 0=<PCR0 of your EIF> (or "
            "--any-image to check only that some Nitro enclave made it)")
    return expected


def load_root(path: Path | None) -> bytes | None:
    """PEM of the root certificate at `path`; None (no path) means the pinned AWS Nitro root."""
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise NotFoundError(f"cannot read the root certificate {path}: {exc.strerror}; give a "
                            "readable PEM file of the root to trust") from None
