"""The code base stays `ruff` and `mypy` clean: both run as `make lint` does, from the project root.

Their configuration lives in pyproject.toml. mypy keeps its cache in .mypy_cache: a first run
analyses the CDK library and takes about a minute; later runs take about a second.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Far above a cold mypy run here; only there so that a hung checker fails instead of stalling.
TIMEOUT_SECONDS = 600


def _run_checker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=TIMEOUT_SECONDS, check=False)


def test_ruff_finds_nothing():
    result = _run_checker("ruff", "check", ".")
    assert result.returncode == 0, (
        f"`ruff check .` exited {result.returncode}; fix these (or `ruff check --fix .`):\n"
        f"{result.stdout}{result.stderr}")


def test_mypy_finds_nothing():
    result = _run_checker("mypy")
    assert result.returncode == 0, (
        f"`mypy` exited {result.returncode}; fix these (configuration: [tool.mypy] in "
        f"pyproject.toml):\n{result.stdout}{result.stderr}")
