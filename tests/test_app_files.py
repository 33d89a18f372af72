"""What the runtime takes from an app's private directory and what it lets through of its stderr
(enclave/app_process.py): only the run user's own regular files at declared outputs, never a
link, a device or a hard link; stderr lines that quote the bundle's files withheld; the private
directory removed even where the app made it read-only.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from enclave import app_process
from enclave.app_process import (
    WITHHELD_LINE,
    Capture,
    kill_group,
    wipe,
    withhold_source_lines,
    written_files,
)
from enclave.isolation import AppUser

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: files of another uid")


def collected(outputs: Path, relative: str, user: AppUser | None = None) -> dict[str, bytes]:
    found = {}
    for name, fd in written_files(outputs, relative, user):
        with os.fdopen(fd, "rb") as f:
            found[name] = f.read()
    return found


def test_a_declared_directory_gives_its_regular_files_in_order(tmp_path):
    (tmp_path / "out" / "sub").mkdir(parents=True)
    (tmp_path / "out" / "b.txt").write_bytes(b"b")
    (tmp_path / "out" / "sub" / "a.txt").write_bytes(b"a")
    assert list(collected(tmp_path, "out")) == ["out/b.txt", "out/sub/a.txt"]


def test_links_devices_and_hard_links_are_never_taken(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    secret = tmp_path / "runtime-secret"
    secret.write_bytes(b"secret")
    (out / "link").symlink_to(secret)
    os.link(secret, out / "hard")
    os.mkfifo(out / "fifo")
    (out / "real.txt").write_bytes(b"mine")
    assert collected(tmp_path, "out") == {"out/real.txt": b"mine"}


def test_a_link_on_the_way_to_an_output_is_not_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "r.txt").write_bytes(b"not the app's")
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "dir").symlink_to(elsewhere)
    assert collected(outputs, "dir/r.txt") == {}
    assert collected(tmp_path / "absent", "r.txt") == {}


@needs_root
def test_a_file_the_run_user_does_not_own_is_skipped(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_bytes(b"mine")
    (out / "theirs.txt").write_bytes(b"theirs")
    user = AppUser(uid=4_000_123, gid=4_000_123)
    os.chown(out / "mine.txt", user.uid, user.gid)
    assert collected(tmp_path, "out", user) == {}  # the declared path itself is root's
    os.chown(out, user.uid, user.gid)
    assert collected(tmp_path, "out", user) == {"out/mine.txt": b"mine"}


def test_no_more_than_the_output_file_limit_is_taken(tmp_path, monkeypatch):
    monkeypatch.setattr(app_process, "MAX_OUTPUT_FILES", 3)
    out = tmp_path / "out"
    out.mkdir()
    for i in range(5):
        (out / f"{i}.txt").write_bytes(b"x")
    assert list(collected(tmp_path, "out")) == ["out/0.txt", "out/1.txt", "out/2.txt"]


def test_stderr_lines_that_quote_the_bundle_are_withheld(tmp_path):
    app = tmp_path / "app"
    (app / "pkg").mkdir(parents=True)
    (app / "pkg" / "model.py").write_text("WEIGHTS = [0.25, 0.75]  # the secret\nx = 1\n")
    (app / "big.bin").write_bytes(b"\0" * (app_process._SOURCE_SCAN_FILE_LIMIT + 1))
    (app / "link.py").symlink_to("/etc/hostname")
    stderr = ("Traceback (most recent call last):\n"
              "    WEIGHTS = [0.25, 0.75]  # the secret\n"
              "x = 1\n"
              "ValueError: bad input")
    assert withhold_source_lines(stderr, app).splitlines() == [
        "Traceback (most recent call last):", WITHHELD_LINE, "x = 1", "ValueError: bad input"]
    assert withhold_source_lines("", app) == ""


def test_source_scanning_stops_at_its_total_budget(tmp_path, monkeypatch):
    app = tmp_path / "app"
    app.mkdir()
    (app / "a.py").write_text("first_secret_line = 1\n")
    monkeypatch.setattr(app_process, "_SOURCE_SCAN_TOTAL_LIMIT", 5)
    # over the budget nothing more is read: the line passes (the limit keeps the scan bounded)
    assert "first_secret_line" in withhold_source_lines("first_secret_line = 1\n", app)


def test_capture_keeps_its_limit_and_drains_the_rest():
    capture = Capture(limit=4)
    capture.start(io.BytesIO(b"abcdefgh")).join(5)
    assert capture.text() == "abcd"


def test_wipe_removes_what_the_app_made_read_only(tmp_path):
    private = tmp_path / "run"
    (private / "locked" / "deep").mkdir(parents=True)
    (private / "locked" / "deep" / "f").write_bytes(b"plaintext")
    os.chmod(private / "locked" / "deep", 0o500)
    os.chmod(private / "locked", 0o500)
    assert wipe(private) is True
    assert not private.exists()
    assert wipe(private) is True  # already gone


def test_killing_a_group_that_is_gone_is_not_an_error():
    kill_group(2**22 + 12345)  # no such process group
