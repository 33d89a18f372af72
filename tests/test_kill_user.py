"""Ending every process of a run's user: enclave/isolation.py `kill_user` and its forked child."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import pytest

from enclave import isolation

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to take another uid")
UNUSED_UID = 1 << 29  # far above the uids of this machine's accounts


@needs_root
def test_kill_user_ends_every_process_of_the_uid_and_spares_the_others():
    theirs = [subprocess.Popen(["sleep", "60"], user=UNUSED_UID, group=UNUSED_UID,
                               extra_groups=[]) for _ in range(3)]
    ours = subprocess.Popen(["sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        while len(isolation.processes_of(UNUSED_UID)) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sorted(isolation.processes_of(UNUSED_UID)) == sorted(p.pid for p in theirs)
        # reaped as they die, as the runtime reaps its apps: a zombie still counts as a process
        statuses: list[int] = []
        reaper = threading.Thread(target=lambda: statuses.extend(p.wait() for p in theirs))
        reaper.start()
        assert isolation.kill_user(UNUSED_UID) is True
        reaper.join(timeout=10)
        assert statuses == [-signal.SIGKILL] * 3
        assert isolation.processes_of(UNUSED_UID) == [] and ours.poll() is None
    finally:
        for process in [*theirs, ours]:
            process.kill()
            process.wait()


def test_kill_user_with_no_process_left_forks_nothing(monkeypatch):
    monkeypatch.setattr(isolation.os, "fork", lambda: pytest.fail("forked"))
    assert isolation.kill_user(UNUSED_UID) is True


def test_the_child_drops_groups_then_gid_then_uid_before_signalling_all():
    """The order matters: once the uid is dropped the child could no longer change its gid and
    would signal as a member of root's groups."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # stands in for the calls that would change this process for good
        def record(name: str):
            def call(*args: object) -> None:
                os.write(write_end, (json.dumps([name, *args]) + "\n").encode())
            return call

        for name in ("setgroups", "setresgid", "setresuid", "kill"):
            setattr(os, name, record(name))
        isolation.signal_all_as(4321)
    os.close(write_end)
    with os.fdopen(read_end) as calls:
        recorded = [json.loads(line) for line in calls]
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert recorded == [["setgroups", []], ["setresgid", 4321, 4321, 4321],
                        ["setresuid", 4321, 4321, 4321], ["kill", -1, signal.SIGKILL]]


def test_the_child_leaves_even_when_it_cannot_take_the_uid():
    pid = os.fork()
    if pid == 0:
        def refuse(*_args: object) -> None:
            raise PermissionError(1, "Operation not permitted")

        os.setgroups = refuse
        isolation.signal_all_as(4321)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
