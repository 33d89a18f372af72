"""Where the client keeps host-side state: the proxy's pid file, the last started enclave.

`/run/sealed-enclave` when it can be written (root on the enclave host), else
`$XDG_RUNTIME_DIR/sealed-enclave` or `~/.cache/sealed-enclave`; `$SEALED_STATE_DIR` overrides.
Never relative to the working directory, so commands behave the same from anywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ENV_VAR = "SEALED_STATE_DIR"


def state_dir() -> Path:
    configured = os.environ.get(ENV_VAR)
    if configured:
        path = Path(configured)
    elif os.access("/run", os.W_OK):
        path = Path("/run/sealed-enclave")
    elif os.environ.get("XDG_RUNTIME_DIR"):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "sealed-enclave"
    else:
        path = Path.home() / ".cache" / "sealed-enclave"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def read_json(name: str) -> dict[str, Any] | None:
    try:
        data = json.loads((state_dir() / name).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(name: str, value: dict[str, Any]) -> Path:
    path = state_dir() / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path
