"""Where the local simulation lives and what `simulate up` recorded about it.

`state.json` in the state directory (`.sim/` under the project root, or `$SEALED_SIM_DIR`) is the
one place the other commands look to find the simulated runtime, its NSM, the local KMS endpoint
and the simulated principals' credentials.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from client.errors import UsageError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STATE_FILE = "state.json"
ENV_VAR = "SEALED_SIM_DIR"


def sim_dir() -> Path:
    configured = os.environ.get(ENV_VAR)
    return Path(configured).resolve() if configured else PROJECT_ROOT / ".sim"


def load_state(directory: Path | None = None) -> dict[str, Any] | None:
    """The recorded state, or None when no simulation was started here."""
    path = (directory or sim_dir()) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise UsageError(f"{path} is not valid JSON ({exc}); run `python -m client simulate down` "
                         "to clean it up, then `simulate up`") from exc
    if not isinstance(state, dict):
        raise UsageError(f"{path} is not a JSON object; run `python -m client simulate down` "
                         "to clean it up, then `simulate up`")
    return state


def save_state(state: dict[str, Any], directory: Path | None = None) -> Path:
    directory = directory or sim_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) still answers kill(0); it is not running.
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0] != "Z"
    except (OSError, IndexError):
        return True


def runtime_running(state: dict[str, Any]) -> bool:
    runtime = state.get("runtime") or {}
    return pid_alive(runtime.get("pid")) and Path(runtime.get("socket", "")).exists()
