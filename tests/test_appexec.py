"""The app starter, enclave/appexec.py: no way to gain privileges, no core dumps, clear refusals.

The runtime starts it as `python3 -I -S -c SOURCE CMD...` under the run's own user; here its
`main` runs in a forked child (it changes the calling process for good: no_new_privs, core
limit, exec), with the child's stdout and stderr sent to pipes.
"""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Callable

from enclave import appexec


def run_forked(body: Callable[[], int]) -> tuple[int, str, str]:
    """Run `body` in a forked child; its exit status, stdout and stderr."""
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only os._exit leaves it, whatever happens
        status = 70
        try:
            os.dup2(out_write, 1)
            os.dup2(err_write, 2)
            sys.stdout = open(1, "w", closefd=False)  # the child's own fds
            sys.stderr = open(2, "w", closefd=False)
            status = body()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    os.close(out_write)
    os.close(err_write)
    with open(out_read) as out, open(err_read) as err:
        stdout, stderr = out.read(), err.read()
    _, wait_status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wait_status), stdout, stderr


def test_the_command_runs_with_no_new_privs_and_no_core_dumps():
    def start() -> int:
        # core dumps allowed before, as far as this process may raise its own limit
        hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
        resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))
        print(resource.getrlimit(resource.RLIMIT_CORE)[0], flush=True)
        return appexec.main(["sh", "-c", "grep NoNewPrivs /proc/self/status; ulimit -c; exit 7"])

    status, stdout, stderr = run_forked(start)
    assert (status, stderr) == (7, "")
    before, *after = stdout.split()
    assert before != "0", "the test needs a process that may dump core to show the change"
    assert after == ["NoNewPrivs:", "1", "0"]


def test_the_command_gets_the_callers_environment():
    os.environ["APPEXEC_TEST_VALUE"] = "kept"
    try:
        status, stdout, _ = run_forked(lambda: appexec.main(
            ["sh", "-c", 'printf %s "$APPEXEC_TEST_VALUE"']))
    finally:
        del os.environ["APPEXEC_TEST_VALUE"]
    assert (status, stdout) == (0, "kept")


def test_no_command_is_refused_with_127():
    assert run_forked(lambda: appexec.main([])) == (127, "", "appexec: no command\n")


def test_a_command_that_cannot_start_is_named_with_the_reason():
    status, stdout, stderr = run_forked(lambda: appexec.main(["/nonexistent/app", "x"]))
    assert (status, stdout) == (127, "")
    assert stderr == "appexec: cannot start '/nonexistent/app': No such file or directory\n"


def test_the_command_does_not_start_when_no_new_privs_cannot_be_set(monkeypatch):
    class RefusingLibc:
        def prctl(self, *_args: int) -> int:
            return -1

    monkeypatch.setattr(appexec.ctypes, "CDLL", lambda *_args, **_kwargs: RefusingLibc())
    status, stdout, stderr = run_forked(lambda: appexec.main(["sh", "-c", "echo started"]))
    assert (status, stdout, stderr) == (126, "", "appexec: cannot set no_new_privs\n")


def test_the_runtime_starts_this_very_source():
    from enclave.app_process import APPEXEC_SOURCE

    assert APPEXEC_SOURCE == open(appexec.__file__).read()
