"""Each error the runtime's exchange endpoints give, provoked by a real request to the real server,
as the client sees it: the `ApiError` (code, HTTP status), the errno the FUSE mount turns it into
(`client.fuse_errno.errno_for`), and, where a command can meet it, the exit code and the one line a
user reads.

Codes no request from this client can provoke are left out, each for its reason: `conflict`
(removing an area root: the client refuses an empty path first), `length_required` (every
upload has a Content-Length), `upload_incomplete` (the client is gone by then), and the
framing errors of a malformed request (tests/test_server.py sends those raw).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from client.api import RuntimeClient
from client.api_errors import ApiError
from client.cli import main
from client.errors import ExitStatus
from client.fuse_errno import errno_for
from client.transport import UnixAddress
from enclave.exchange import MAX_LIST_ENTRIES
from tests.runtime_harness import Runtime, small_tmpfs, start_runtime, stop_runtime


@dataclass(frozen=True)
class Case:
    provoke: Callable[[Runtime, RuntimeClient], object]  # makes the real runtime refuse
    code: str
    http_status: int
    errno: int


def _crowded(rt: Runtime, client: RuntimeClient) -> object:
    crowded = rt.inbox / "crowded"
    crowded.mkdir()
    for i in range(MAX_LIST_ENTRIES + 1):
        (crowded / str(i)).touch()
    return client.list("inbox", "crowded")


def _hard_linked(rt: Runtime, client: RuntimeClient) -> object:
    (rt.outbox / "r.txt").write_text("result")
    os.link(rt.outbox / "r.txt", rt.outbox / "again.txt")
    return client.download("outbox", "r.txt", io.BytesIO())


def _non_empty(rt: Runtime, client: RuntimeClient) -> object:
    (rt.inbox / "d").mkdir()
    (rt.inbox / "d" / "f").write_text("x")
    return client.delete("inbox", "d")


def _directory(rt: Runtime, client: RuntimeClient) -> object:
    (rt.inbox / "d").mkdir()
    return client.upload("d", io.BytesIO(b"x"), 1)


def _existing(rt: Runtime, client: RuntimeClient) -> object:
    (rt.inbox / "d").mkdir()
    return client.mkdir("d")


def _symlink(rt: Runtime, client: RuntimeClient) -> object:
    os.symlink("/etc", rt.inbox / "etc")
    return client.stat("inbox", "etc/passwd")


def _file_as_directory(rt: Runtime, client: RuntimeClient) -> object:
    (rt.inbox / "f").write_text("x")
    return client.stat("inbox", "f/x")


# What a modified client could send: the names the real one refuses before sending
# (client.api.check_remote_path, the runtime's own rule), percent-encoded so that they reach
# the runtime.
def _traversal(rt: Runtime, client: RuntimeClient) -> object:
    return client._json("GET", "/v1/fs/inbox/a/%2E%2E/%2E%2E/etc/passwd?stat")


def _outbox_mkdir(rt: Runtime, client: RuntimeClient) -> object:
    return client._json("POST", "/v1/fs/outbox/forged?mkdir")


CASES = {
    "missing file": Case(lambda rt, c: c.stat("inbox", "missing"), "not_found", 404,
                         errno.ENOENT),
    "path traversal": Case(_traversal, "bad_path", 400, errno.EINVAL),
    "backslash in a name": Case(lambda rt, c: c._json("GET", "/v1/fs/inbox/a%5Cb?stat"),
                                "bad_path", 400, errno.EINVAL),
    "reserved upload name": Case(lambda rt, c: c._json("POST", "/v1/fs/inbox/.partial-x?mkdir"),
                                 "bad_path", 400, errno.EINVAL),
    "symbolic link on the way": Case(_symlink, "bad_path", 400, errno.EINVAL),
    "file where a directory is expected": Case(_file_as_directory, "bad_path", 400,
                                               errno.EINVAL),
    "several hard links": Case(_hard_linked, "not_regular_file", 403, errno.EACCES),
    "write into the outbox": Case(_outbox_mkdir, "read_only", 403, errno.EROFS),
    "already exists": Case(_existing, "exists", 409, errno.EEXIST),
    "directory not empty": Case(_non_empty, "not_empty", 409, errno.ENOTEMPTY),
    "directory where a file is expected": Case(_directory, "is_a_directory", 409, errno.EISDIR),
    "too many files to list": Case(_crowded, "too_many_entries", 413, errno.EOVERFLOW),
}


@pytest.fixture
def client(exchange_runtime):
    with RuntimeClient(UnixAddress(exchange_runtime.socket_path), timeout=10) as c:
        yield c


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_runtime_error_code_and_its_errno(exchange_runtime, client, case):
    with pytest.raises(ApiError) as info:
        case.provoke(exchange_runtime, client)
    assert (info.value.code, info.value.http_status) == (case.code, case.http_status)
    got = errno_for(info.value)
    assert got == case.errno, f"expected {errno.errorcode[case.errno]}, got " \
                              f"{errno.errorcode.get(got)}"
    assert client.health()["status"] == "ok"  # and the runtime still serves


@contextlib.contextmanager
def runtime_with(tmp_path: Path, **overrides):
    runtime = start_runtime(tmp_path, **overrides)
    try:
        yield runtime
    finally:
        stop_runtime(runtime)


def test_upload_over_the_limit_is_payload_too_large_and_efbig(tmp_path):
    with runtime_with(tmp_path, max_upload_bytes=4096) as rt, \
            RuntimeClient(UnixAddress(rt.socket_path), timeout=10) as client:
        with pytest.raises(ApiError) as info:
            client.upload("big.bin", io.BytesIO(b"x" * 8192), 8192)
        assert (info.value.code, info.value.http_status) == ("payload_too_large", 413)
        assert errno_for(info.value) == errno.EFBIG
        assert os.listdir(rt.inbox) == []


def test_full_exchange_area_is_insufficient_storage_and_enospc(tmp_path):
    with small_tmpfs(tmp_path, "256k") as exchange, \
            runtime_with(tmp_path, exchange_root=exchange) as rt, \
            RuntimeClient(UnixAddress(rt.socket_path), timeout=10) as client:
        with pytest.raises(ApiError) as info:
            client.upload("big.bin", io.BytesIO(b"x" * (1 << 20)), 1 << 20)
        assert (info.value.code, info.value.http_status) == ("insufficient_storage", 507)
        assert errno_for(info.value) == errno.ENOSPC
        assert os.listdir(rt.inbox) == []  # the partial upload is gone


def test_runtime_at_its_connection_limit_is_busy_and_eio(tmp_path):
    with runtime_with(tmp_path, max_connections=1) as rt, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
        idle.connect(rt.socket_path)  # holds the one connection the runtime serves
        with RuntimeClient(UnixAddress(rt.socket_path), timeout=10) as client:
            with pytest.raises(ApiError) as info:
                client.health()
        assert (info.value.code, info.value.http_status) == ("busy", 503)
        assert errno_for(info.value) == errno.EIO


# -- at the command line: exit code and message ----------------------------------------------------


@pytest.fixture
def cli(exchange_runtime, tmp_path, monkeypatch, capsys):
    """Run `python -m client` against the runtime: (exit code, the one line on stderr)."""
    monkeypatch.setenv("SEALED_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local.txt").write_text("data")

    def run(*argv: str, socket_path: str = exchange_runtime.socket_path) -> tuple[int, str]:
        capsys.readouterr()
        code = main(["--socket", socket_path, *argv])
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: "), err
        return code, err.strip()

    return run


def test_pull_of_a_missing_file_is_exit_4(cli):
    code, err = cli("pull", "result.json")
    assert code == ExitStatus.NOT_FOUND
    assert err == "error: enclave runtime: 'result.json' does not exist (not_found, HTTP 404)"


def test_push_of_a_name_the_runtime_refuses_is_refused_with_its_reason(cli, exchange_runtime):
    # The client applies the runtime's own rule: the runtime's reason, before anything is sent.
    code, err = cli("push", "local.txt", "a\\b")
    assert code == ExitStatus.USAGE
    assert "remote path refused: path 'a\\\\b' contains a backslash; use '/' between names" in err
    assert os.listdir(exchange_runtime.inbox) == []


def test_push_traversal_is_refused_by_the_client_before_sending(cli, exchange_runtime):
    code, err = cli("push", "local.txt", "a/../../etc/passwd")
    assert code == ExitStatus.USAGE
    assert "'a/../../etc/passwd' has an empty, '.' or '..' component" in err


def test_push_onto_a_directory_is_exit_5_naming_it(cli, exchange_runtime):
    (exchange_runtime.inbox / "models").mkdir()
    code, err = cli("push", "local.txt", "models")
    assert code == ExitStatus.ENCLAVE_ERROR
    assert "'models' is a directory; choose a file name (is_a_directory, HTTP 409)" in err


def test_rm_of_a_non_empty_directory_is_exit_5_saying_what_to_do(cli, exchange_runtime):
    (exchange_runtime.inbox / "d").mkdir()
    (exchange_runtime.inbox / "d" / "f").write_text("x")
    code, err = cli("rm", "-d", "d")
    assert code == ExitStatus.ENCLAVE_ERROR
    assert "directory 'd' is not empty; remove its entries first (not_empty, HTTP 409)" in err
    assert (exchange_runtime.inbox / "d" / "f").exists()


def test_pull_of_a_hard_linked_file_is_exit_5(cli, exchange_runtime):
    (exchange_runtime.outbox / "r.txt").write_text("result")
    os.link(exchange_runtime.outbox / "r.txt", exchange_runtime.outbox / "again.txt")
    code, err = cli("pull", "r.txt")
    assert code == ExitStatus.ENCLAVE_ERROR
    assert "'r.txt' has 2 hard links; only files with a single link are served" in err
    assert not Path("r.txt").exists()


def test_push_over_the_upload_limit_is_exit_5_naming_the_limit(cli, tmp_path):
    with runtime_with(tmp_path, max_upload_bytes=3) as rt:
        code, err = cli("push", "--no-progress", "local.txt", socket_path=rt.socket_path)
    assert code == ExitStatus.ENCLAVE_ERROR
    assert "the upload is 4 bytes; the limit is 3 (payload_too_large, HTTP 413)" in err


def test_push_into_a_full_exchange_area_is_exit_5(cli, tmp_path):
    (tmp_path / "big.bin").write_bytes(b"x" * (1 << 20))
    with small_tmpfs(tmp_path, "256k") as exchange, \
            runtime_with(tmp_path, exchange_root=exchange) as rt:
        code, err = cli("push", "--no-progress", "big.bin", socket_path=rt.socket_path)
        assert os.listdir(rt.inbox) == []
    assert code == ExitStatus.ENCLAVE_ERROR
    assert "the enclave's exchange area is full; delete files and retry " \
           "(insufficient_storage, HTTP 507)" in err


def test_busy_runtime_is_exit_5_saying_retry(cli, tmp_path):
    with runtime_with(tmp_path, max_connections=1) as rt, \
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
        idle.connect(rt.socket_path)
        code, err = cli("pull", "r.txt", socket_path=rt.socket_path)
    assert code == ExitStatus.ENCLAVE_ERROR
    assert "the runtime already serves 1 connections; retry shortly (busy, HTTP 503)" in err
