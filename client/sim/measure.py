"""PCRs of the simulated enclave, computed from what it actually loads.

A real Nitro enclave's PCR0 measures the whole image, PCR1 the kernel and boot ramdisk, PCR2 the
application. The simulated enclave has no kernel of its own; it runs this project's runtime
(`enclave/`) from an image definition (`containers/`). So:

- PCR1 = extend(0, SHA-384(SIMULATED_KERNEL)) — a documented constant;
- PCR2 = extend over every regular file under `enclave/` and `containers/` (caches excluded) and
  the image policy as the build places it (`containers/enclave-policy.json`, whose bytes are
  given, never read from a file left in the checkout), in the byte order of their POSIX relative
  paths, one extend per file with data = SHA-384(relative path UTF-8 || 0x00 || SHA-384(content));
- PCR0 = extend(PCR1's data), then the same per-file extends as PCR2: it covers both.

Every extend is the NSM's rule, PCR_new = SHA-384(PCR_old || data), from 48 zero bytes. Changing
one byte of the runtime or the image definition changes PCR0, which is what the key policy pins.
PCR3..15 stay zero (no IAM role, instance or signer is simulated). Debug mode zeroes everything.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PCR_BYTES = 48
PCR_COUNT = 16
MEASURED_DIRS = ("enclave", "containers")
SKIPPED_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
SKIPPED_SUFFIXES = {".pyc", ".pyo"}
SIMULATED_KERNEL = b"sealed-enclave local simulation: no kernel, boot ramdisk v1"
# Where the image build puts the policy file in the build context (containers/Dockerfile copies it).
POLICY_RELATIVE_PATH = "containers/enclave-policy.json"


def extend(pcr: bytes, data: bytes) -> bytes:
    """The NSM's extend: SHA-384(old value || data)."""
    return hashlib.sha384(pcr + data).digest()


def measured_files(project_root: Path) -> list[tuple[str, Path]]:
    """(relative POSIX path, path) of every measured file, in canonical order."""
    root = Path(project_root)
    found = []
    for top in MEASURED_DIRS:
        base = root / top
        if not base.is_dir():
            continue
        for path in base.rglob("*"):
            relative = path.relative_to(root)
            if SKIPPED_PARTS.intersection(relative.parts) or path.suffix in SKIPPED_SUFFIXES:
                continue
            if relative.as_posix() == POLICY_RELATIVE_PATH:
                continue  # the measured policy is the one the caller gives
            if path.is_file() and not path.is_symlink():
                found.append((relative.as_posix(), path))
    return sorted(found, key=lambda item: item[0].encode())


def file_record(relative: str, content: bytes) -> bytes:
    return hashlib.sha384(relative.encode() + b"\x00" + hashlib.sha384(content).digest()).digest()


def simulated_pcrs(project_root: Path, *, policy: bytes, debug: bool = False
                   ) -> dict[int, bytes]:
    """PCR0..15 the simulated NSM reports for the runtime, image definition and image policy."""
    pcrs = {index: bytes(PCR_BYTES) for index in range(PCR_COUNT)}
    if debug:
        return pcrs
    kernel = hashlib.sha384(SIMULATED_KERNEL).digest()
    pcr0 = extend(bytes(PCR_BYTES), kernel)
    pcr2 = bytes(PCR_BYTES)
    contents = {relative: path.read_bytes() for relative, path in measured_files(project_root)}
    contents[POLICY_RELATIVE_PATH] = policy
    for relative in sorted(contents, key=str.encode):
        record = file_record(relative, contents[relative])
        pcr0 = extend(pcr0, record)
        pcr2 = extend(pcr2, record)
    pcrs[0] = pcr0
    pcrs[1] = extend(bytes(PCR_BYTES), kernel)
    pcrs[2] = pcr2
    return pcrs


def image_sha384(project_root: Path, *, policy: bytes) -> str:
    """PCR0 as lowercase hex: the value `kms:RecipientAttestation:ImageSha384` compares."""
    return simulated_pcrs(project_root, policy=policy)[0].hex()
