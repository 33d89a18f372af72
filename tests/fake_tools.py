"""Fake command-line tools (nitro-cli, vsock-proxy) put first on PATH by tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def install_tool(bin_dir: Path, name: str, body: str) -> Path:
    """Write an executable Python script `name` into `bin_dir`; `body` runs with `argv`, `log`."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text(
        # Not measured by coverage (its .pth file starts it where this variable is set): a
        # tool must start within the grace periods the commands allow it, as the real one does.
        f"#!/usr/bin/env -S -u COVERAGE_PROCESS_CONFIG {sys.executable}\n"
        "import json, os, sys, time\n"
        "argv = sys.argv[1:]\n"
        f"log = {str(bin_dir / (name + '.calls'))!r}\n"
        "with open(log, 'a') as f:\n"
        "    f.write(json.dumps({'argv': argv, 'cwd': os.getcwd()}) + '\\n')\n"
        + body)
    path.chmod(0o755)
    return path


def calls(bin_dir: Path, name: str) -> list[dict]:
    import json

    path = bin_dir / f"{name}.calls"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def on_path(monkeypatch, bin_dir: Path) -> None:
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
