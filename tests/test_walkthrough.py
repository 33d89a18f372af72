"""docs/client.md's walkthrough "By hand against the simulation", run line by line as written.

Only `make synth` is not run (the session's synthesized template stands in for it, in a scratch
directory laid out like the project's root, so the project's own cdk.out and .sim are left
alone): every other line goes to bash unchanged, in one shell, with `set -e`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT

DOC = PROJECT_ROOT / "docs" / "client.md"


def walkthrough_lines() -> list[str]:
    section = DOC.read_text().split("### By hand against the simulation", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "docs/client.md lost its walkthrough"
    return [line.split("  #", 1)[0].rstrip() for line in block.group(1).splitlines()
            if line.strip() and not line.startswith("#")]


def test_walkthrough_runs_as_written(tmp_path, third_party_template_path):
    lines = walkthrough_lines()
    assert lines[0] == "make synth"
    work = tmp_path / "project"
    (work / "cdk.out").mkdir(parents=True)
    shutil.copy(third_party_template_path, work / "cdk.out" / "ThirdPartyStack.template.json")
    for name in ("src", "samples", "envelope_encryptor.py", "cdk.json"):
        (work / name).symlink_to(PROJECT_ROOT / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PYTHONPATH=str(PROJECT_ROOT), SEALED_SIM_DIR=str(tmp_path / "sim"),
               SEALED_STATE_DIR=str(tmp_path / "host"),
               PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin")
    script = "set -euo pipefail\ntrap 'python -m client simulate down >/dev/null 2>&1' EXIT\n" \
        + "\n".join(lines[1:]) + "\n"
    result = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (work / "app.sealed").exists()
    scores = (work / "scores.csv").read_text().splitlines()
    assert scores[0].startswith("patient_id") and len(scores) > 1
