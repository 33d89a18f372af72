"""The Makefile as a user meets it: `make setup` says what it is doing, `make clean` leaves no
orphaned simulation, CI lints as its own step before the tests.

Each test runs the project's real Makefile with `make -f` in a scratch directory (its root is
the directory make runs in), so nothing of the working tree is touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.sim_support import short_socket_dir

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MAKEFILE = PROJECT_ROOT / "Makefile"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def make(directory: Path, *targets: str, env: dict[str, str],
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "--no-print-directory", "-C", str(directory), "-f",
                           str(MAKEFILE), *targets], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


FAKE_PYTHON = """#!/bin/sh
# Stands in for `python3 -m venv DIR`: a virtualenv whose pip and npm only say they ran.
[ "$1" = "-m" ] && [ "$2" = "venv" ] || exit 2
mkdir -p "$3/bin"
for tool in pip npm; do
    printf '#!/bin/sh\\necho "RAN %s $*"\\nmkdir -p node_modules\\n' "$tool" > "$3/bin/$tool"
    chmod +x "$3/bin/$tool"
done
echo "RAN venv"
"""


def test_setup_announces_each_stage_before_it_runs(tmp_path):
    for name in ("requirements.txt", "requirements-checkov.txt", "package.json",
                 "package-lock.json"):
        (tmp_path / name).write_text("")
    fake_python = tmp_path / "fake-python"
    fake_python.write_text(FAKE_PYTHON)
    fake_python.chmod(0o755)
    done = make(tmp_path, "setup", f"PYTHON={fake_python}", env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    ran = [i for i, line in enumerate(lines) if line.startswith("RAN ")]
    assert [lines[i].split()[1] for i in ran] == ["venv", "pip", "pip", "npm",
                                                  "venv", "pip", "pip"]
    announced = [lines[i - 1] for i in ran if not lines[i - 1].startswith("RAN ")]
    assert [line.split(":")[0] for line in announced] == [f"setup {n}/5" for n in range(1, 6)]
    assert "requirements.txt" in lines[ran[2] - 1] and "npm ci" in lines[ran[3] - 1]
    assert "checkov" in lines[ran[4] - 1]


def test_clean_stops_a_running_simulation_before_deleting_its_state(tmp_path,
                                                                    third_party_template_path):
    with short_socket_dir() as root:
        sim_dir = root / ".sim"
        env = {**os.environ, "SEALED_SIM_DIR": str(sim_dir), "PATH": "/usr/bin:/bin",
               "PYTHONPATH": str(PROJECT_ROOT)}
        started = subprocess.run([sys.executable, "-m", "client", "simulate", "up",
                                  "--template", str(third_party_template_path)], env=env,
                                 cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
                                 check=False)
        assert started.returncode == 0, started.stderr
        state = json.loads((sim_dir / "state.json").read_text())
        pids = [state[name]["pid"] for name in ("runtime", "nsm", "kms")]
        try:
            # `python` for the Makefile: this interpreter (the scratch root has no .venv).
            bin_dir = root / "bin"
            bin_dir.mkdir()
            (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
            (bin_dir / "python").chmod(0o755)
            env_make = {**env, "PATH": f"{bin_dir}:/usr/bin:/bin"}
            env_make.pop("SEALED_SIM_DIR")  # `make clean` means the root's own .sim
            done = make(root, "clean", env=env_make)
            assert done.returncode == 0, done.stderr
            assert "simulation stopped" in done.stdout
            deadline = time.monotonic() + 10
            while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not [pid for pid in pids if _alive(pid)], "orphaned simulation processes"
            assert not sim_dir.exists()
        finally:  # never leave the simulation behind, whatever make did to its state
            from client.sim.processes import MODULES, stop_component

            for name, module in MODULES.items():
                if name in state:
                    stop_component(state[name], module)


def test_clean_without_a_simulation_just_deletes(tmp_path):
    (tmp_path / "cdk.out").mkdir()
    done = make(tmp_path, "clean", env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "cdk.out").exists()


def test_ci_lints_as_its_own_step_before_the_tests():
    steps = re.findall(r"^make (\w+)$", (PROJECT_ROOT / ".ci" / "run").read_text(),
                       flags=re.MULTILINE)
    assert steps.index("lint") < steps.index("test")
    lint = MAKEFILE.read_text().split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "ruff check ." in lint and "mypy" in lint


def test_the_test_run_does_not_run_mypy():
    """mypy cold needs several GB; `make lint` runs it, the tests must not."""
    for path in (PROJECT_ROOT / "tests").glob("*.py"):
        if path.name == Path(__file__).name:
            continue
        assert not re.search(r"""["']mypy["']""", path.read_text()), path.name


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is gone for our purpose.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
