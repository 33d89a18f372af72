"""`sync -d DIR`: a real FUSE mount of the exchange area, served by the real runtime server.

The runtime (tests/runtime_harness.py) runs in this process on a Unix socket; the mount runs in
its own process, as `sync -d` starts it. Every errno below comes from a real request the runtime
answered, except where a comment says why a failure is injected into it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from client.cli import main
from client.errors import ExitStatus
from tests.runtime_harness import Runtime, small_tmpfs, start_runtime, stop_runtime

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def missing_fuse() -> str | None:
    """What this machine lacks for a real FUSE mount, by name, or None."""
    missing = [name for name, present in (("/dev/fuse", os.path.exists("/dev/fuse")),
                                          ("fusermount3 (Debian fuse3)",
                                           shutil.which("fusermount3") is not None))
               if not present]
    return ", ".join(missing) or None


@pytest.fixture
def fuse_usable() -> None:
    """Skip a test that mounts where FUSE is missing; in CI (CI=true) fail instead.

    Only the tests that mount ask for it (tests/conftest.py marks them `fuse`); the others here
    need no FUSE and run everywhere."""
    missing = missing_fuse()
    if missing is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the FUSE tests, but this machine lacks {missing}")
    pytest.skip(f"needs {missing}")


@contextlib.contextmanager
def mount(rt: Runtime, mnt: Path):
    code = main(["--socket", rt.socket_path, "sync", "-d", str(mnt)])
    assert code == 0
    try:
        yield mnt
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", str(mnt)], check=False)


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SEALED_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture
def mounted(fuse_usable, state_dir, exchange_runtime, tmp_path):
    with mount(exchange_runtime, tmp_path / "mnt") as mnt:
        yield exchange_runtime, mnt


def expect_errno(code: int, function, *args):
    with pytest.raises(OSError) as info:
        function(*args)
    assert info.value.errno == code, f"expected {errno.errorcode[code]}, got " \
                                     f"{errno.errorcode.get(info.value.errno)}"


def test_mount_shows_inbox_and_outbox(mounted):
    _, mnt = mounted
    assert sorted(os.listdir(mnt)) == ["inbox", "outbox"]


def test_write_is_uploaded_on_close_and_reads_back(mounted):
    runtime, mnt = mounted
    data = os.urandom(300_000)
    (mnt / "inbox" / "data.bin").write_bytes(data)
    assert (runtime.inbox / "data.bin").read_bytes() == data
    assert (mnt / "inbox" / "data.bin").read_bytes() == data


def test_outbox_file_is_listed_and_readable(mounted):
    runtime, mnt = mounted
    (runtime.outbox / "result.json").write_text('{"ok": true}')
    assert os.listdir(mnt / "outbox") == ["result.json"]
    assert (mnt / "outbox" / "result.json").read_text() == '{"ok": true}'
    assert (mnt / "outbox" / "result.json").stat().st_size == 12


def test_write_into_outbox_is_refused(mounted):
    _, mnt = mounted
    with pytest.raises(OSError) as info:
        (mnt / "outbox" / "forged.json").write_text("x")
    assert info.value.errno in (errno.EROFS, errno.EACCES)


def test_overwrite_of_outbox_file_is_refused(mounted):
    runtime, mnt = mounted
    (runtime.outbox / "r.txt").write_text("result")
    with pytest.raises(OSError) as info:
        open(mnt / "outbox" / "r.txt", "w").close()
    assert info.value.errno in (errno.EROFS, errno.EACCES)
    assert (runtime.outbox / "r.txt").read_text() == "result"


def test_unlink_missing_file_is_enoent(mounted):
    _, mnt = mounted
    expect_errno(errno.ENOENT, os.unlink, mnt / "inbox" / "missing.txt")


def test_unlink_in_outbox_is_erofs(mounted):
    runtime, mnt = mounted
    (runtime.outbox / "r.txt").write_text("result")
    expect_errno(errno.EROFS, os.unlink, mnt / "outbox" / "r.txt")


def test_creating_at_the_top_level_is_refused(mounted):
    _, mnt = mounted
    expect_errno(errno.EACCES, os.mkdir, mnt / "elsewhere")


def test_dotdot_names_cannot_leave_the_mount(mounted):
    runtime, mnt = mounted
    (runtime.outbox / "r.txt").write_text("result")
    # The kernel resolves `..` before FUSE sees it: inbox/../outbox is the outbox, still
    # read-only, and the mount root's parent is never reached through the runtime.
    with pytest.raises(OSError) as info:
        (mnt / "inbox" / ".." / "outbox" / "x").write_text("x")
    assert info.value.errno in (errno.EROFS, errno.EACCES)
    assert os.path.realpath(mnt / "inbox" / ".." / "..") == str(mnt.parent)
    assert not (runtime.config.exchange_root / "x").exists()


def test_traversal_name_in_file_is_treated_as_plain_missing_name(mounted):
    _, mnt = mounted
    expect_errno(errno.ENOENT, os.stat, mnt / "inbox" / "..%2F..%2Fetc")


def test_mkdir_rmdir_and_their_errnos(mounted):
    runtime, mnt = mounted
    os.mkdir(mnt / "inbox" / "d")
    assert (runtime.inbox / "d").is_dir()
    expect_errno(errno.EEXIST, os.mkdir, mnt / "inbox" / "d")
    (mnt / "inbox" / "d" / "f").write_text("x")
    expect_errno(errno.ENOTEMPTY, os.rmdir, mnt / "inbox" / "d")
    expect_errno(errno.EISDIR, os.unlink, mnt / "inbox" / "d")
    expect_errno(errno.ENOTDIR, os.rmdir, mnt / "inbox" / "d" / "f")
    os.unlink(mnt / "inbox" / "d" / "f")
    os.rmdir(mnt / "inbox" / "d")
    assert not (runtime.inbox / "d").exists()


def test_opening_a_directory_for_writing_is_eisdir(mounted):
    _, mnt = mounted
    os.mkdir(mnt / "inbox" / "d")
    expect_errno(errno.EISDIR, open, mnt / "inbox" / "d", "w")


def test_links_and_device_nodes_are_refused(mounted):
    runtime, mnt = mounted
    (mnt / "inbox" / "a").write_text("a")
    expect_errno(errno.EPERM, os.symlink, "/etc/passwd", mnt / "inbox" / "link")
    expect_errno(errno.EPERM, os.link, mnt / "inbox" / "a", mnt / "inbox" / "hard")
    expect_errno(errno.EPERM, os.mkfifo, mnt / "inbox" / "fifo")
    assert sorted(os.listdir(runtime.inbox)) == ["a"]


@pytest.mark.parametrize("name", ["a\\b", "tab\there", ".partial-upload"])
def test_name_the_runtime_refuses_is_einval(mounted, name):
    runtime, mnt = mounted
    expect_errno(errno.EINVAL, open, mnt / "inbox" / name, "w")
    assert os.listdir(runtime.inbox) == []


def test_server_failure_is_eio(mounted, monkeypatch):
    runtime, mnt = mounted
    (mnt / "inbox" / "a").write_text("a")

    # No real request makes the runtime fail inside: break its exchange area, so that the
    # server answers as it does for any internal failure (500 internal_error).
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(runtime.server.exchange, "upload", broken)
    with pytest.raises(OSError) as info:
        with open(mnt / "inbox" / "a", "w") as f:
            f.write("b")
    assert info.value.errno == errno.EIO


def test_rename_is_exdev_so_mv_copies(mounted):
    runtime, mnt = mounted
    (mnt / "inbox" / "a").write_text("a")
    expect_errno(errno.EXDEV, os.rename, mnt / "inbox" / "a", mnt / "inbox" / "b")
    subprocess.run(["mv", str(mnt / "inbox" / "a"), str(mnt / "inbox" / "b")], check=True)
    assert sorted(os.listdir(runtime.inbox)) == ["b"]


def test_append_keeps_existing_content(mounted):
    runtime, mnt = mounted
    (mnt / "inbox" / "log.txt").write_text("one\n")
    with open(mnt / "inbox" / "log.txt", "a") as f:
        f.write("two\n")
    assert (runtime.inbox / "log.txt").read_text() == "one\ntwo\n"


def test_unmount_removes_the_mount(mounted):
    _, mnt = mounted
    assert main(["sync", "-d", str(mnt), "--unmount"]) == 0
    assert not os.path.ismount(mnt)


def test_unmount_of_a_plain_directory_is_not_found(tmp_path):
    assert main(["sync", "-d", str(tmp_path), "--unmount"]) == ExitStatus.NOT_FOUND


def test_mount_fails_cleanly_when_runtime_is_down(fuse_usable, tmp_path, monkeypatch):
    monkeypatch.setenv("SEALED_STATE_DIR", str(tmp_path / "state"))
    code = main(["--socket", str(tmp_path / "none.sock"), "sync", "-d", str(tmp_path / "m")])
    assert code == ExitStatus.NOT_FOUND
    assert not os.path.ismount(tmp_path / "m")


def test_sync_help_keeps_runbook_spelling():
    done = subprocess.run([sys.executable, "-m", "client", "sync", "--help"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, check=True)
    assert "-d DIR" in done.stdout


def test_listing_drops_names_that_would_escape(mounted, monkeypatch):
    from enclave.exchange import Entry

    runtime, mnt = mounted
    (runtime.outbox / "ok.txt").write_text("x")

    # No directory holds such names, so the real runtime never lists them: its exchange area
    # is made to, to show the mount would not follow a hostile or broken runtime there.
    def hostile_listing(area, relative):
        return [Entry(n, "file", 1, 0.0) for n in ("ok.txt", "..", "a/b", ".")]

    monkeypatch.setattr(runtime.server.exchange, "list", hostile_listing)
    assert os.listdir(mnt / "outbox") == ["ok.txt"]


def test_dead_mount_is_reported_and_can_be_unmounted(mounted, tmp_path, capsys):
    import signal

    runtime, mnt = mounted
    server = subprocess.run(["pgrep", "-f", f"sync -d {mnt} --foreground"], capture_output=True,
                            text=True).stdout.split()
    assert len(server) == 1
    os.kill(int(server[0]), signal.SIGKILL)  # the mount's process dies; the mount stays
    with pytest.raises(OSError) as info:
        os.listdir(mnt)
    assert info.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)  # the kernel's two stages
    code = main(["--socket", runtime.socket_path, "sync", "-d", str(mnt)])
    assert code == ExitStatus.USAGE and "--unmount" in capsys.readouterr().err
    assert main(["sync", "-d", str(mnt), "--unmount"]) == 0
    assert os.listdir(mnt) == []


@pytest.mark.parametrize(("code", "expected"), [
    ("not_empty", errno.ENOTEMPTY), ("is_a_directory", errno.EISDIR), ("exists", errno.EEXIST),
])
def test_conflict_errno_comes_from_the_code_not_the_message(code, expected):
    from client.api_errors import ApiError
    from client.fuse_errno import errno_for

    assert errno_for(ApiError("no hint in this text", code=code, http_status=409)) == expected


def test_mv_inside_the_inbox_prints_nothing(mounted):
    runtime, mnt = mounted
    (mnt / "inbox" / "a").write_text("a")
    os.mkdir(mnt / "inbox" / "d")
    (mnt / "inbox" / "d" / "f").write_text("f")
    for old, new in (("a", "b"), ("d", "e")):
        done = subprocess.run(["mv", str(mnt / "inbox" / old), str(mnt / "inbox" / new)],
                              capture_output=True, text=True, check=False)
        assert (done.returncode, done.stderr) == (0, "")
    assert sorted(os.listdir(runtime.inbox)) == ["b", "e"]
    assert (runtime.inbox / "e" / "f").read_text() == "f"


def test_a_real_change_of_mode_or_owner_is_still_refused(mounted):
    _, mnt = mounted
    (mnt / "inbox" / "a").write_text("a")
    expect_errno(errno.EPERM, os.chmod, mnt / "inbox" / "a", 0o600)
    expect_errno(errno.EPERM, os.chown, mnt / "inbox" / "a", os.getuid() + 1, -1)
    os.chmod(mnt / "inbox" / "a", 0o644)  # what it already shows


@pytest.mark.parametrize(("signum", "status"), [
    (2, ExitStatus.INTERRUPTED),  # SIGINT: Ctrl-C
    (15, ExitStatus.TERMINATED),  # SIGTERM: kill
])
def test_foreground_mount_stopped_by_a_signal_unmounts_and_exits_quietly(
        fuse_usable, exchange_runtime, tmp_path, signum, status):
    import time

    mnt = tmp_path / "mnt"
    runtime = exchange_runtime
    process = subprocess.Popen(
        [sys.executable, "-m", "client", "--socket", runtime.socket_path, "sync", "-d",
         str(mnt), "--foreground"], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ,
                                                 "SEALED_STATE_DIR": str(tmp_path / "st")})
    try:
        deadline = time.monotonic() + 15
        while not os.path.ismount(mnt) and process.poll() is None:
            assert time.monotonic() < deadline, "the mount did not appear"
            time.sleep(0.05)
        (mnt / "inbox" / "kept.txt").write_text("kept")
        process.send_signal(signum)
        _out, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
    assert process.returncode == status, err
    assert not os.path.ismount(mnt)
    assert "Traceback" not in err and "Ignoring invalid" not in err
    assert err.splitlines()[-1] == f"unmounted {mnt}"
    assert (runtime.inbox / "kept.txt").read_text() == "kept"


# -- each error the runtime's exchange endpoints give, as the errno a program sees -----------------


@contextlib.contextmanager
def runtime_with(tmp_path: Path, **overrides):
    runtime = start_runtime(tmp_path, **overrides)
    try:
        yield runtime
    finally:
        stop_runtime(runtime)


def test_name_over_the_runtimes_limit_is_enametoolong(mounted):
    runtime, mnt = mounted
    expect_errno(errno.ENAMETOOLONG, open, mnt / "inbox" / ("n" * 256), "w")
    deep = mnt / "inbox"
    for _ in range(4):  # 4 x 251 bytes: the runtime's path limit (1024 bytes) is near
        deep = deep / ("d" * 250)
        os.mkdir(deep)
    expect_errno(errno.ENAMETOOLONG, open, deep / ("f" * 30), "w")
    assert os.listdir(deep) == []


def test_file_where_a_directory_is_expected_is_enotdir(mounted):
    _, mnt = mounted
    (mnt / "inbox" / "f").write_text("x")
    expect_errno(errno.ENOTDIR, os.stat, mnt / "inbox" / "f" / "x")
    expect_errno(errno.ENOTDIR, os.rmdir, mnt / "inbox" / "f")


def test_directory_too_large_to_list_is_eoverflow_not_efbig(mounted):
    from enclave.exchange import MAX_LIST_ENTRIES

    runtime, mnt = mounted
    crowded = runtime.inbox / "crowded"
    crowded.mkdir()
    for i in range(MAX_LIST_ENTRIES + 1):
        (crowded / f"{i}").touch()
    expect_errno(errno.EOVERFLOW, os.listdir, mnt / "inbox" / "crowded")
    assert (mnt / "inbox" / "crowded" / "7").read_text() == ""  # each file is still reachable


def test_file_over_the_upload_limit_is_efbig(fuse_usable, state_dir, tmp_path):
    with runtime_with(tmp_path, max_upload_bytes=4096) as runtime, \
            mount(runtime, tmp_path / "mnt") as mnt:
        with pytest.raises(OSError) as info:
            with open(mnt / "inbox" / "big.bin", "wb") as f:
                f.write(b"x" * 8192)
        assert info.value.errno == errno.EFBIG
        (mnt / "inbox" / "small.bin").write_bytes(b"x" * 4096)
        assert (runtime.inbox / "small.bin").stat().st_size == 4096


def test_full_exchange_area_is_enospc(fuse_usable, state_dir, tmp_path):
    with small_tmpfs(tmp_path, "256k") as exchange, \
            runtime_with(tmp_path, exchange_root=exchange) as runtime, \
            mount(runtime, tmp_path / "mnt") as mnt:
        with pytest.raises(OSError) as info:
            with open(mnt / "inbox" / "big.bin", "wb") as f:
                f.write(b"x" * (1 << 20))
        assert info.value.errno == errno.ENOSPC
        # Only the empty file `create` uploaded to claim the name: never a partial one.
        assert (runtime.inbox / "big.bin").stat().st_size == 0
        assert [p.name for p in runtime.inbox.iterdir()] == ["big.bin"]


def test_hard_linked_outbox_file_is_eacces(mounted):
    runtime, mnt = mounted
    (runtime.outbox / "r.txt").write_text("result")
    os.link(runtime.outbox / "r.txt", runtime.outbox / "again.txt")
    expect_errno(errno.EACCES, (mnt / "outbox" / "r.txt").read_bytes)


def test_symlink_planted_in_the_inbox_is_not_followed(mounted):
    runtime, mnt = mounted
    os.symlink("/etc/passwd", runtime.inbox / "link")
    assert os.listdir(mnt / "inbox") == []
    expect_errno(errno.EINVAL, (mnt / "inbox" / "link").read_bytes)
