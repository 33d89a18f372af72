"""The FUSE file system's operations, client/fusefs.py `ExchangeFs`, called as libfuse calls them.

tests/test_fuse_sync.py mounts it for real; libfuse calls these methods from threads of its own,
which coverage does not follow, so the same operations are checked here directly against the
real runtime server over its Unix socket: the errno a program sees, and what reaches the runtime.
"""

from __future__ import annotations

import errno
import os
import stat

import mfusepy as fuse
import pytest

from client.api import RuntimeClient
from client.api_errors import ApiError
from client.errors import NotFoundError, UsageError
from client.fuse_errno import errno_for
from client.fusefs import ExchangeFs, split_mount_path
from client.transport import UnixAddress


@pytest.fixture
def fs(tmp_path, exchange_runtime):
    root = exchange_runtime.config.exchange_root
    with RuntimeClient(UnixAddress(exchange_runtime.socket_path), timeout=5) as client:
        (root / "outbox" / "result.txt").write_bytes(b"result")
        (root / "inbox" / "old.txt").write_bytes(b"old content")
        (root / "inbox" / "sub").mkdir()
        yield ExchangeFs(client, staging_dir=str(tmp_path)), root


def expect(code: int, function, *args):
    with pytest.raises(fuse.FuseOSError) as caught:
        function(*args)
    assert caught.value.errno == code, errno.errorcode.get(caught.value.errno)


def test_the_top_level_holds_the_two_fixed_areas(fs):
    filesystem, _ = fs
    assert filesystem.readdir("/", 0) == [".", "..", "inbox", "outbox"]
    assert stat.S_IMODE(filesystem.getattr("/")["st_mode"]) == 0o555
    assert stat.S_IMODE(filesystem.getattr("/inbox")["st_mode"]) == 0o755
    assert stat.S_IMODE(filesystem.getattr("/outbox")["st_mode"]) == 0o555
    expect(errno.ENOENT, filesystem.getattr, "/elsewhere")
    for path in ("/", "/inbox", "/outbox"):
        expect(errno.EACCES, filesystem.mkdir, path, 0o755)


def test_files_show_their_size_and_the_outbox_is_read_only(fs):
    filesystem, _ = fs
    inbox = filesystem.getattr("/inbox/old.txt")
    assert stat.S_ISREG(inbox["st_mode"]) and inbox["st_size"] == len(b"old content")
    assert stat.S_IMODE(inbox["st_mode"]) == 0o644
    assert stat.S_IMODE(filesystem.getattr("/outbox/result.txt")["st_mode"]) == 0o444
    assert stat.S_ISDIR(filesystem.getattr("/inbox/sub")["st_mode"])
    assert sorted(filesystem.readdir("/inbox", 0)[2:]) == ["old.txt", "sub"]
    expect(errno.ENOENT, filesystem.getattr, "/inbox/missing")
    expect(errno.EROFS, filesystem.open, "/outbox/result.txt", os.O_WRONLY)
    expect(errno.EROFS, filesystem.create, "/outbox/new", stat.S_IFREG | 0o644)
    expect(errno.EROFS, filesystem.utimens, "/outbox/result.txt")
    assert filesystem.utimens("/inbox/old.txt") == 0


def test_a_file_written_through_the_mount_is_uploaded_on_flush(fs):
    filesystem, root = fs
    fh = filesystem.create("/inbox/new.txt", stat.S_IFREG | 0o644)
    assert (root / "inbox/new.txt").read_bytes() == b""  # the name is checked at once
    assert filesystem.write("/inbox/new.txt", b"hello", 0, fh) == 5
    assert filesystem.getattr("/inbox/new.txt")["st_size"] == 5  # pending, seen at once
    assert filesystem.read("/inbox/new.txt", 5, 0, fh) == b"hello"
    assert filesystem.flush("/inbox/new.txt", fh) == 0
    assert (root / "inbox/new.txt").read_bytes() == b"hello"
    assert filesystem.fsync("/inbox/new.txt", 0, fh) == 0
    assert filesystem.release("/inbox/new.txt", fh) == 0
    assert filesystem.release("/inbox/new.txt", fh) == 0  # twice is harmless
    expect(errno.EBADF, filesystem.read, "/inbox/new.txt", 1, 0, fh)


def test_a_failed_upload_is_not_tried_again_behind_the_writers_back(fs, monkeypatch):
    # The writer learns of the failure from close(2) (flush); release, which the kernel runs
    # after close has returned, must not upload the file it was told was not written.
    filesystem, root = fs
    fh = filesystem.create("/inbox/new.txt", stat.S_IFREG | 0o644)
    filesystem.write("/inbox/new.txt", b"hello", 0, fh)
    attempts = []

    def area_full(*args, **kwargs):  # the real full area: tests/test_fuse_sync.py (needs root)
        attempts.append(args[0])
        raise ApiError("full", code="insufficient_storage", http_status=507)

    monkeypatch.setattr(filesystem.client, "upload", area_full)
    expect(errno.ENOSPC, filesystem.flush, "/inbox/new.txt", fh)
    assert filesystem.release("/inbox/new.txt", fh) == 0
    assert attempts == ["new.txt"]
    assert (root / "inbox/new.txt").read_bytes() == b""


def test_reading_comes_from_the_runtime_in_ranges(fs):
    filesystem, _ = fs
    fh = filesystem.open("/outbox/result.txt", os.O_RDONLY)
    assert filesystem.read("/outbox/result.txt", 3, 2, fh) == b"sul"
    expect(errno.EBADF, filesystem.write, "/outbox/result.txt", b"x", 0, fh)
    assert filesystem.flush("/outbox/result.txt", fh) == 0
    filesystem.release("/outbox/result.txt", fh)
    expect(errno.EISDIR, filesystem.open, "/inbox", os.O_RDONLY)
    expect(errno.EISDIR, filesystem.open, "/inbox/sub", os.O_RDONLY)


def test_an_in_place_change_keeps_the_content_and_appends_at_the_end(fs):
    filesystem, root = fs
    fh = filesystem.open("/inbox/old.txt", os.O_WRONLY | os.O_APPEND)
    filesystem.write("/inbox/old.txt", b"!", 0, fh)
    filesystem.release("/inbox/old.txt", fh)
    assert (root / "inbox/old.txt").read_bytes() == b"old content!"
    fh = filesystem.open("/inbox/old.txt", os.O_RDWR | os.O_TRUNC)
    filesystem.write("/inbox/old.txt", b"new", 0, fh)
    filesystem.release("/inbox/old.txt", fh)
    assert (root / "inbox/old.txt").read_bytes() == b"new"


def test_truncate_by_path_and_by_open_handle(fs):
    filesystem, root = fs
    assert filesystem.truncate("/inbox/old.txt", 3) == 0
    assert (root / "inbox/old.txt").read_bytes() == b"old"
    assert filesystem.truncate("/inbox/old.txt", 0) == 0
    assert (root / "inbox/old.txt").read_bytes() == b""
    expect(errno.ENOENT, filesystem.truncate, "/inbox/missing", 0)
    fh = filesystem.create("/inbox/t.txt", stat.S_IFREG | 0o644)
    filesystem.write("/inbox/t.txt", b"abcdef", 0, fh)
    assert filesystem.truncate("/inbox/t.txt", 2, fh) == 0
    filesystem.release("/inbox/t.txt", fh)
    assert (root / "inbox/t.txt").read_bytes() == b"ab"
    fh = filesystem.create("/inbox/p.txt", stat.S_IFREG | 0o644)
    filesystem.write("/inbox/p.txt", b"pending", 0, fh)
    assert filesystem.truncate("/inbox/p.txt", 4) == 0  # by path, while open for writing
    filesystem.release("/inbox/p.txt", fh)
    assert (root / "inbox/p.txt").read_bytes() == b"pend"


def test_directories_are_made_and_removed_as_programs_expect(fs):
    filesystem, root = fs
    assert filesystem.mkdir("/inbox/made", 0o755) == 0 and (root / "inbox/made").is_dir()
    expect(errno.EEXIST, filesystem.mkdir, "/inbox/made", 0o755)
    fh = filesystem.create("/inbox/made/f", stat.S_IFREG | 0o644)
    filesystem.release("/inbox/made/f", fh)
    expect(errno.ENOTEMPTY, filesystem.rmdir, "/inbox/made")
    expect(errno.EISDIR, filesystem.unlink, "/inbox/made")
    expect(errno.ENOTDIR, filesystem.rmdir, "/inbox/made/f")
    assert filesystem.unlink("/inbox/made/f") == 0
    assert filesystem.rmdir("/inbox/made") == 0 and not (root / "inbox/made").exists()
    expect(errno.EROFS, filesystem.unlink, "/outbox/result.txt")


def test_what_the_area_never_holds_is_refused(fs):
    filesystem, _ = fs
    expect(errno.EXDEV, filesystem.rename, "/inbox/old.txt", "/inbox/other.txt")
    expect(errno.EPERM, filesystem.symlink, "/inbox/link", "/inbox/old.txt")
    expect(errno.EPERM, filesystem.link, "/inbox/link", "/inbox/old.txt")
    expect(errno.EPERM, filesystem.mknod, "/inbox/fifo", stat.S_IFIFO | 0o644, 0)
    expect(errno.EPERM, filesystem.create, "/inbox/fifo", stat.S_IFIFO | 0o644)
    expect(errno.EINVAL, filesystem.readlink, "/inbox/old.txt")
    assert filesystem.chmod("/inbox/old.txt", stat.S_IFREG | 0o644) == 0  # what it shows
    expect(errno.EPERM, filesystem.chmod, "/inbox/old.txt", stat.S_IFREG | 0o600)
    assert filesystem.chown("/inbox/old.txt", -1, -1) == 0
    assert filesystem.chown("/inbox/old.txt", os.getuid(), os.getgid()) == 0
    expect(errno.EPERM, filesystem.chown, "/inbox/old.txt", os.getuid() + 1, -1)
    expect(errno.ENOENT, filesystem.chown, "/inbox/missing", -1, -1)
    assert filesystem.statfs("/")["f_namemax"] == 255


def test_a_transport_failure_becomes_eio_and_errno_errors_pass_through():
    class BrokenClient:
        def stat(self, area: str, relative: str) -> dict:
            raise ConnectionResetError("the runtime went away")

        def list(self, area: str, relative: str) -> list:
            raise fuse.FuseOSError(errno.EINTR)

    filesystem = ExchangeFs(BrokenClient())  # type: ignore[arg-type]
    expect(errno.EIO, filesystem.getattr, "/inbox/x")
    expect(errno.EINTR, filesystem.readdir, "/outbox", 0)


@pytest.mark.parametrize(("error", "code"), [
    (NotFoundError("gone"), errno.ENOENT),
    # from the code alone, never the message (ENOTDIR and ENAMETOOLONG come from elsewhere:
    # tests/test_client_errors.py provokes each code with a real request)
    (ApiError("x: not a directory", code="bad_path", http_status=400), errno.EINVAL),
    (ApiError("name too long", code="bad_path", http_status=400), errno.EINVAL),
    (ApiError("x", code="not_empty", http_status=409), errno.ENOTEMPTY),
    (ApiError("x", code="is_a_directory", http_status=409), errno.EISDIR),
    (ApiError("x", code="exists", http_status=409), errno.EEXIST),
    # codes the table does not know: by the HTTP status
    (ApiError("x", code="forbidden", http_status=403), errno.EACCES),
    (ApiError("x", code="too_large", http_status=413), errno.EFBIG),
    (ApiError("x", code="full", http_status=507), errno.ENOSPC),
    (ApiError("x", code="other", http_status=422), errno.EINVAL),
    (ApiError("x", code="internal", http_status=500), errno.EIO),
    (UsageError("x"), errno.EINVAL),
    (RuntimeError("x"), errno.EIO),
])
def test_runtime_errors_map_to_the_errno_a_program_expects(error, code):
    assert errno_for(error) == code


def test_mount_paths_split_into_area_and_relative_path():
    assert split_mount_path("/") == (None, "")
    assert split_mount_path("/inbox/a/b") == ("inbox", "a/b")
    with pytest.raises(fuse.FuseOSError):
        split_mount_path("/etc/passwd")
