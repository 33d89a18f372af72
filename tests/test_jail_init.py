"""The emulated enclave's init, client/sim/jail_init.py, step by step in a private mount namespace.

The emulated enclave runs it as PID 1 of fresh namespaces, where nothing it does can be observed
from outside; here its steps run in a forked child that first enters a mount namespace of its
own (so no mount reaches this machine), and report what they built through a pipe.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from client.sim import jail_init

CLONE_NEWNS = 0x00020000

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="needs root for mount namespaces")


def in_mount_namespace(body: Callable[[], Any]) -> Any:
    """Run `body` in a forked child in a private mount namespace; what it returned (as JSON),
    or the exception it raised, re-raised here as RuntimeError with its text."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(CLONE_NEWNS) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
            jail_init.mount(None, "/", None, jail_init.MS_REC | jail_init.MS_PRIVATE)
            result = {"value": body()}
        except BaseException as exc:  # everything goes back to the test
            result = {"error": f"{type(exc).__name__}: {exc}"}
        with os.fdopen(write_end, "w") as out:
            json.dump(result, out)
        os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as reply:
        text = reply.read()
    os.waitpid(pid, 0)
    result = json.loads(text)
    if "error" in result:
        raise RuntimeError(result["error"])
    return result["value"]


def mount_options(target: Path) -> list[str]:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(target):
            return fields[5].split(",") + fields[fields.index("-") + 3].split(",")
    raise AssertionError(f"{target} is not a mount point")


def test_steps_build_the_tree_the_plan_lists(tmp_path):
    root = tmp_path / "root"
    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "tool").write_text("from the host")
    shared_dir = tmp_path / "shared"
    shared_dir.mkdir()
    (shared_dir / "data").write_text("bound")
    shared_file = tmp_path / "hosts"
    shared_file.write_text("127.0.0.1 localhost\n")
    steps = [
        {"op": "tmpfs", "target": "/", "data": "mode=0755"},
        {"op": "dir", "target": "/etc", "mode": 0o750},
        {"op": "symlink", "target": "/bin", "to": "usr/bin"},
        {"op": "overlay", "source": str(lower), "target": "/usr",
         "scratch": str(tmp_path / "layer")},
        {"op": "file", "target": "/usr/tool", "content": "replaced", "mode": 0o700},
        {"op": "file", "target": "/usr/new", "content": "new"},
        {"op": "remount", "target": "/usr", "flags": ["ro", "nosuid"]},
        {"op": "bind", "source": str(shared_dir), "target": "/srv", "flags": ["ro"]},
        {"op": "bind", "source": str(shared_file), "target": "/etc/hosts"},
        {"op": "tmpfs", "target": "/tmp", "flags": ["nosuid", "nodev", "noexec"],
         "data": "mode=1777"},
        {"op": "tmpfs", "target": "/sealed", "flags": ["ro"]},
        {"op": "dir", "target": "/tmp/gone/deep"},
        {"op": "file", "target": "/tmp/gone-file", "content": "x"},
        {"op": "remove", "target": "/tmp/gone"},
        {"op": "remove", "target": "/tmp/gone-file"},
        {"op": "remove", "target": "/tmp/never-there"},
        {"op": "proc", "target": "/proc", "flags": ["nosuid", "nodev", "noexec"]},
    ]

    def build() -> dict[str, Any]:
        for step in steps:
            jail_init.apply(str(root), step)
        usr_writable = True
        try:
            (root / "usr/other").write_text("x")
        except OSError:
            usr_writable = False
        return {
            "etc_mode": stat.S_IMODE(os.stat(root / "etc").st_mode),
            "bin": os.readlink(root / "bin"),
            "tool": (root / "usr/tool").read_text(),
            "tool_mode": stat.S_IMODE(os.stat(root / "usr/tool").st_mode),
            "new": (root / "usr/new").read_text(),
            "usr_writable": usr_writable,
            "usr": mount_options(root / "usr"),
            "srv": (root / "srv/data").read_text(),
            "srv_options": mount_options(root / "srv"),
            "hosts": (root / "etc/hosts").read_text(),
            "tmp": mount_options(root / "tmp"),
            "tmp_left": sorted(os.listdir(root / "tmp")),
            "sealed": mount_options(root / "sealed"),
            "proc_self": os.path.isdir(root / "proc/self"),
        }

    built = in_mount_namespace(build)
    assert built["etc_mode"] == 0o750 and built["bin"] == "usr/bin"
    assert (built["tool"], built["tool_mode"], built["new"]) == ("replaced", 0o700, "new")
    assert built["usr_writable"] is False and {"ro", "nosuid"} <= set(built["usr"])
    assert built["srv"] == "bound" and "ro" in built["srv_options"]
    assert built["hosts"] == "127.0.0.1 localhost\n"
    assert {"nosuid", "nodev", "noexec"} <= set(built["tmp"]) and built["tmp_left"] == []
    assert "ro" in built["sealed"] and built["proc_self"] is True
    # nothing of it reached this mount namespace; the lower layer kept its file
    assert not (root / "usr/tool").exists() and (lower / "tool").read_text() == "from the host"


def test_an_unknown_step_is_refused(tmp_path):
    with pytest.raises(RuntimeError, match="ValueError: unknown jail step 'chroot'"):
        in_mount_namespace(lambda: jail_init.apply(str(tmp_path), {"op": "chroot",
                                                                    "target": "/"}))


def test_a_failed_mount_names_its_target_and_the_reason(tmp_path):
    with pytest.raises(RuntimeError, match=r"FileNotFoundError: .*mount .*/x: No such file"):
        in_mount_namespace(lambda: jail_init.apply(str(tmp_path), {
            "op": "bind", "source": str(tmp_path / "missing"), "target": "/x"}))


def test_build_root_pivots_into_the_new_root(tmp_path):
    root = tmp_path / "root"
    plan = {"root": str(root), "steps": [
        {"op": "tmpfs", "target": "/", "data": "mode=0755"},
        {"op": "file", "target": "/marker", "content": "inside"}]}

    def pivoted() -> dict[str, Any]:
        jail_init.build_root(plan)
        return {"cwd": os.getcwd(), "entries": sorted(os.listdir("/")),
                "marker": Path("/marker").read_text()}

    assert in_mount_namespace(pivoted) == {"cwd": "/", "entries": ["marker"],
                                           "marker": "inside"}


def run_plan(plan: dict[str, Any]) -> tuple[int, str]:
    """jail_init.run in a forked child: its return value and what it wrote to stderr."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.dup2(write_end, 2)
            sys.stderr = open(2, "w", closefd=False)  # the child's own stderr
            code = jail_init.run(plan)
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as err:
        stderr = err.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), stderr


def plan_for(argv: list[str], **extra: Any) -> dict[str, Any]:
    return {"argv": argv, "env": {"PATH": "/usr/bin:/bin", "MARK": "set"}, "cwd": "/",
            "lookup_path": "/usr/bin:/bin", **extra}


def test_run_starts_the_command_from_the_lookup_path_and_returns_its_status(tmp_path):
    out = tmp_path / "out"
    code, stderr = run_plan(plan_for(["sh", "-c", f'echo "$MARK $(pwd)" > {out}; exit 5']))
    assert code == 5 and out.read_text() == "set /\n"
    assert stderr == "init: the image's command exited with status 5\n"


def test_run_reports_a_command_not_on_the_path(tmp_path):
    code, stderr = run_plan(plan_for(["no-such-command-here"]))
    assert code == 127
    assert stderr.splitlines() == [
        "init: execvpe no-such-command-here: no-such-command-here is not on PATH=/usr/bin:/bin",
        "init: the image's command exited with status 127"]


def test_run_forwards_sigterm_and_reports_the_signal_as_128_plus_its_number(tmp_path):
    ready = tmp_path / "ready"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 70
        try:
            os.dup2(write_end, 2)
            sys.stderr = open(2, "w", closefd=False)
            code = jail_init.run(plan_for(["sh", "-c", f"touch {ready}; exec sleep 30"]))
        finally:
            os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + 10
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # sh has exec'd sleep
    os.kill(pid, signal.SIGTERM)
    with os.fdopen(read_end) as err:
        stderr = err.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGTERM
    assert stderr == f"init: the image's command exited with status {-signal.SIGTERM}\n"
