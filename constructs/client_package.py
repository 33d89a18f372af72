"""The client package for the enclave hosts: the project's wheel and its hashed dependencies.

At synth time the wheel is built from `pyproject.toml`, `client/` and `enclave/` (copied to a
scratch directory, so the checkout gets no build litter) with the pinned setuptools, without
network and with fixed timestamps, so the same sources always give the same bytes, hence the same
asset hash and no host replacement when nothing changed. The host installs it, and the
dependencies listed with their hashes in `requirements-host.txt`, with
`pip install --require-hashes`: every file it installs is the one named here.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_SOURCES = ("pyproject.toml", "client", "enclave")
HOST_REQUIREMENTS = PROJECT_ROOT / "requirements-host.txt"
DISTRIBUTION = "sealed-enclave"
# 1980-01-01, the earliest time a zip (hence a wheel) can record.
SOURCE_DATE_EPOCH = "315532800"
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache",
                                  "*.egg-info", "build")


class PackageError(RuntimeError):
    """The wheel could not be built; the message carries the builder's last lines."""


@dataclass(frozen=True)
class ClientWheel:
    path: Path
    sha256: str

    @property
    def file_name(self) -> str:
        return self.path.name


_built: dict[str, ClientWheel] = {}


def sources_digest(project_root: Path = PROJECT_ROOT) -> str:
    """SHA-256 over the names and contents of every file the wheel is built from."""
    digest = hashlib.sha256()
    for source in PACKAGE_SOURCES:
        root = project_root / source
        files = [root] if root.is_file() else sorted(
            p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
            and p.suffix != ".pyc")
        for path in files:
            digest.update(str(path.relative_to(project_root)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def build_client_wheel(project_root: Path = PROJECT_ROOT) -> ClientWheel:
    """Build (once per process and source state) the project's wheel; returns it and its hash."""
    key = sources_digest(project_root)
    if key in _built:
        return _built[key]
    scratch = Path(tempfile.mkdtemp(prefix="sealed-enclave-wheel-"))
    # CDK copies the asset into the cloud assembly during synth; the scratch copy is ours.
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    source, output = scratch / "source", scratch / "dist"
    source.mkdir()
    for name in PACKAGE_SOURCES:
        path = project_root / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=_IGNORED)
        else:
            shutil.copy2(path, source / name)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--disable-pip-version-check", "--wheel-dir", str(output), str(source)],
        env={**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH}, capture_output=True,
        text=True, timeout=300, check=False)
    wheels = sorted(output.glob("*.whl"))
    if done.returncode or len(wheels) != 1:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines()
                 if line.strip() and not line.lstrip().startswith(("note:", "hint:"))]
        tail = " | ".join(lines[-3:])
        raise PackageError(f"building the client wheel failed ({tail or 'no wheel written'}): "
                           "run `make setup` (it installs the pinned setuptools)")
    wheel = ClientWheel(wheels[0], hashlib.sha256(wheels[0].read_bytes()).hexdigest())
    _built[key] = wheel
    return wheel
