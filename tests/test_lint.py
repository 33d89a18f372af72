"""The code base stays `ruff` clean: it runs as `make lint` runs it, from the project root.

mypy is not run here: `make lint` runs it as its own step (CI: before `make test`), because a
cold mypy over the CDK library needs several times the memory of the whole test run.
Configuration for both lives in pyproject.toml.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Only there so that a hung checker fails instead of stalling.
TIMEOUT_SECONDS = 120


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False)
    assert result.returncode == 0, (
        f"`ruff check .` exited {result.returncode}; fix these (or `ruff check --fix .`):\n"
        f"{result.stdout}{result.stderr}")
