"""The coverage gate of `make test`: measured with branches, failing under 90 %, and nothing left
out of the measure but what needs the Nitro hardware (the /dev/nsm ioctl, AF_VSOCK sockets)."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import PROJECT_ROOT

PYPROJECT = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
HARDWARE = "# pragma: no cover - hardware"


def test_make_test_measures_branches_and_fails_under_90_percent():
    run, report = PYPROJECT["tool"]["coverage"]["run"], PYPROJECT["tool"]["coverage"]["report"]
    assert run["branch"] is True and set(run["source"]) == {"enclave", "client"}
    assert "subprocess" in run["patch"]
    assert report["fail_under"] >= 90
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    recipe = makefile.split("\ntest: setup\n", 1)[1].split("\n\n", 1)[0]
    assert re.search(r"^\tpython -m pytest --cov\b", recipe, flags=re.MULTILINE)
    assert "--cov-fail-under" not in recipe  # the threshold is the one in pyproject.toml


def test_only_the_hardware_pragma_excludes_lines():
    """The default pattern is replaced: a bare `pragma: no cover` would count as not covered."""
    assert PYPROJECT["tool"]["coverage"]["report"]["exclude_lines"] == [HARDWARE]
    assert "exclude_also" not in PYPROJECT["tool"]["coverage"]["report"]


def test_every_excluded_block_is_an_nsm_ioctl_or_an_af_vsock_socket():
    marked = []
    sources = [*PROJECT_ROOT.glob("enclave/**/*.py"), *PROJECT_ROOT.glob("client/**/*.py")]
    for path in sorted(sources):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if "no cover" not in line:
                continue
            where = f"{path.relative_to(PROJECT_ROOT)}:{number + 1}"
            assert HARDWARE in line, f"{where}: only '{HARDWARE}: reason' may exclude lines"
            block = [line]  # the marked line, or the whole block it opens
            indent = len(line) - len(line.lstrip())
            for following in lines[number + 1:]:
                if following.strip() and len(following) - len(following.lstrip()) <= indent:
                    break
                block.append(following)
            body = "\n".join(block).strip()
            assert "AF_VSOCK" in body or "fcntl.ioctl" in body, where
            assert len(body.splitlines()) <= 12, f"{where}: exclude only the hardware call"
            marked.append(where)
    assert marked  # the scan found the marks it is about
