"""The exchange area: every way out of inbox/outbox the sample allowed must be refused here."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from enclave.exchange import ExchangeArea
from enclave.exchange_errors import (
    Conflict,
    NotFound,
    NotRegularFile,
    PathRejected,
    UploadIncomplete,
)
from enclave.paths import PARTIAL_PREFIX, confine, split_relative


@pytest.fixture
def area(tmp_path: Path) -> ExchangeArea:
    return ExchangeArea(tmp_path / "exchange")


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    outside = tmp_path / "private" / "secret.py"
    outside.parent.mkdir()
    outside.write_text("SECRET = 'plaintext'\n")
    return outside


def put(area: ExchangeArea, relative: str, data: bytes) -> None:
    area.upload("inbox", relative, io.BytesIO(data), len(data))


# -- pure confinement --------------------------------------------------------------------------

@pytest.mark.parametrize(
    "relative",
    [
        "..",
        "../x",
        "a/../../x",
        "a/..",
        "/etc/passwd",
        "//x",
        "/../x",
        "./x",
        "a//b",
        "a/./b",
        "x\x00y",
        "x\ny",
        "a\\..\\b",
        PARTIAL_PREFIX + "abc",
    ],
)
def test_confine_refuses_escaping_or_ambiguous_paths(tmp_path: Path, relative: str) -> None:
    with pytest.raises(PathRejected):
        confine(tmp_path, relative)


def test_confine_refuses_overlong_path(tmp_path: Path) -> None:
    with pytest.raises(PathRejected):
        confine(tmp_path, "a/" * 600)


def test_confine_refuses_overlong_name(tmp_path: Path) -> None:
    with pytest.raises(PathRejected):
        confine(tmp_path, "n" * 256)


def test_confine_maps_relative_path_under_root(tmp_path: Path) -> None:
    assert confine(tmp_path, "data/in.csv") == tmp_path / "data" / "in.csv"
    assert confine(tmp_path, "") == tmp_path


def test_percent_encoded_dots_are_literal_names_not_traversal() -> None:
    # The server decodes the URL exactly once; what is left is a plain name, never re-decoded.
    assert split_relative("%2e%2e/x") == ("%2e%2e", "x")


# -- links and special files -------------------------------------------------------------------

def test_symlink_to_outside_file_is_not_read(area: ExchangeArea, secret: Path) -> None:
    os.symlink(secret, area.root / "inbox" / "link.py")
    with pytest.raises(PathRejected):
        area.open_read("inbox", "link.py")


def test_symlinked_directory_is_not_walked(area: ExchangeArea, secret: Path) -> None:
    os.symlink(secret.parent, area.root / "outbox" / "dir")
    with pytest.raises(PathRejected):
        area.open_read("outbox", "dir/secret.py")
    with pytest.raises(PathRejected):
        area.list("outbox", "dir")


def test_symlink_loop_is_refused(area: ExchangeArea) -> None:
    os.symlink("b", area.root / "inbox" / "a")
    os.symlink("a", area.root / "inbox" / "b")
    with pytest.raises(PathRejected):
        area.open_read("inbox", "a")
    with pytest.raises(PathRejected):
        area.list("inbox", "a")


def test_hardlink_to_outside_file_is_not_read(area: ExchangeArea, secret: Path) -> None:
    os.link(secret, area.root / "outbox" / "copy.py")
    with pytest.raises(NotRegularFile):
        area.open_read("outbox", "copy.py")


def test_fifo_is_refused_without_blocking(area: ExchangeArea) -> None:
    os.mkfifo(area.root / "inbox" / "pipe")
    with pytest.raises(NotRegularFile):
        area.open_read("inbox", "pipe")
    with pytest.raises(NotRegularFile):
        area.stat("inbox", "pipe")


def test_device_node_is_refused(area: ExchangeArea) -> None:
    node = area.root / "inbox" / "null"
    try:
        os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod not permitted here; the FIFO test covers non-regular files")
    with pytest.raises(NotRegularFile):
        area.open_read("inbox", "null")


def test_unix_socket_file_is_refused(area: ExchangeArea, tmp_path: Path) -> None:
    import socket

    path = area.root / "inbox" / "s"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        with pytest.raises(NotRegularFile):
            area.open_read("inbox", "s")


def test_listing_hides_links_specials_and_partial_uploads(area: ExchangeArea, secret: Path) -> None:
    put(area, "real.txt", b"x")
    os.symlink(secret, area.root / "inbox" / "link")
    os.mkfifo(area.root / "inbox" / "fifo")
    (area.root / "inbox" / (PARTIAL_PREFIX + "0000")).write_bytes(b"half")
    (area.root / "inbox" / "sub").mkdir()
    assert [(e.name, e.type) for e in area.list("inbox", "")] == [
        ("real.txt", "file"),
        ("sub", "dir"),
    ]


# -- uploads -----------------------------------------------------------------------------------

def test_upload_writes_file_and_reports_digest(area: ExchangeArea) -> None:
    result = area.upload("inbox", "a.bin", io.BytesIO(b"hello"), 5)
    assert (area.root / "inbox" / "a.bin").read_bytes() == b"hello"
    assert result.sha256 == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"


class _BrokenBody(io.RawIOBase):
    """A body that delivers some bytes and then the peer vanishes."""

    def __init__(self, data: bytes, error: Exception | None) -> None:
        self._data = io.BytesIO(data)
        self._error = error

    def readinto(self, b) -> int:  # type: ignore[override]
        n = self._data.readinto(b)
        if n == 0 and self._error is not None:
            raise self._error
        return n


@pytest.mark.parametrize("error", [None, ConnectionResetError(), TimeoutError()])
def test_interrupted_upload_leaves_nothing(area: ExchangeArea, error: Exception | None) -> None:
    with pytest.raises(UploadIncomplete):
        area.upload("inbox", "big.bin", _BrokenBody(b"x" * 1000, error), 10_000)
    assert os.listdir(area.root / "inbox") == []


def test_interrupted_upload_keeps_previous_version(area: ExchangeArea) -> None:
    put(area, "model.bin", b"old")
    with pytest.raises(UploadIncomplete):
        area.upload("inbox", "model.bin", io.BytesIO(b"ne"), 3)
    assert (area.root / "inbox" / "model.bin").read_bytes() == b"old"


def test_upload_replaces_hardlink_instead_of_writing_through(
    area: ExchangeArea, secret: Path
) -> None:
    os.link(secret, area.root / "inbox" / "victim")
    put(area, "victim", b"overwritten")
    assert secret.read_text() == "SECRET = 'plaintext'\n"


def test_upload_through_symlinked_directory_is_refused(area: ExchangeArea, secret: Path) -> None:
    os.symlink(secret.parent, area.root / "inbox" / "d")
    with pytest.raises(PathRejected):
        put(area, "d/evil.py", b"x")
    assert sorted(os.listdir(secret.parent)) == ["secret.py"]


def test_upload_into_missing_directory_is_not_found(area: ExchangeArea) -> None:
    with pytest.raises(NotFound):
        put(area, "nodir/x", b"x")


def test_upload_over_directory_is_conflict(area: ExchangeArea) -> None:
    area.mkdir("inbox", "d")
    with pytest.raises(Conflict):
        put(area, "d", b"x")


# -- delete and mkdir --------------------------------------------------------------------------

def test_delete_removes_link_not_its_target(area: ExchangeArea, secret: Path) -> None:
    os.symlink(secret, area.root / "outbox" / "link")
    area.delete("outbox", "link")
    assert secret.exists()


def test_delete_non_empty_directory_is_conflict(area: ExchangeArea) -> None:
    area.mkdir("inbox", "d")
    put(area, "d/f", b"x")
    with pytest.raises(Conflict):
        area.delete("inbox", "d")


def test_area_root_cannot_be_deleted(area: ExchangeArea) -> None:
    with pytest.raises(Conflict):
        area.delete("inbox", "")


def test_unknown_area_is_not_found(area: ExchangeArea) -> None:
    with pytest.raises(NotFound):
        area.list("private", "")


def test_files_snapshot_skips_links_and_descends_directories(
    area: ExchangeArea, secret: Path
) -> None:
    (area.root / "outbox" / "sub").mkdir()
    (area.root / "outbox" / "sub" / "r.txt").write_text("r")
    os.symlink(secret.parent, area.root / "outbox" / "away")
    assert list(area.files("outbox")) == ["sub/r.txt"]


# -- each kind of conflict carries its own code (clients map codes, never messages) -------------

def test_each_kind_of_conflict_has_its_own_code(area: ExchangeArea) -> None:
    area.mkdir("inbox", "d")
    put(area, "d/f", b"x")
    with pytest.raises(Conflict) as exists:
        area.mkdir("inbox", "d")
    with pytest.raises(Conflict) as not_empty:
        area.delete("inbox", "d")
    with pytest.raises(Conflict) as is_a_directory:
        put(area, "d", b"x")
    assert (exists.value.code, exists.value.status) == ("exists", 409)
    assert (not_empty.value.code, not_empty.value.status) == ("not_empty", 409)
    assert (is_a_directory.value.code, is_a_directory.value.status) == ("is_a_directory", 409)
