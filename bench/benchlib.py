"""Pieces both benchmarks share: size arguments and where the data lives."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_size(text: str) -> int:
    """`1GiB`, `256M`, `1.5G`, `65536` -> bytes (binary units)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 1GiB or 256MiB")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def ram_workdir() -> Path | None:
    """/dev/shm where it exists: the enclave's file system is RAM, and on a shared disk writeback
    makes the same run vary by 2x from one try to the next."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None
