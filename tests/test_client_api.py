"""client/api.py against the real runtime server on a real Unix socket.

Stand-in servers remain only for what the runtime never does: stay silent, drop a connection
on purpose, or answer with more than the client will read.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import threading

import pytest

from client.api import RuntimeClient, check_remote_path
from client.api_errors import ApiError, ApiNotFound, error_from_response
from client.errors import EnclaveError, ExitStatus, NotFoundError, TimeoutExpired, UsageError
from client.transport import UnixAddress
from tests.test_runner import seal_app


@pytest.fixture
def runtime(exchange_runtime):
    return exchange_runtime


@pytest.fixture
def client(runtime):
    with RuntimeClient(UnixAddress(runtime.socket_path), timeout=5) as c:
        yield c


def test_health_over_unix_socket(client):
    assert client.health()["status"] == "ok"


def test_upload_streams_file_and_returns_digest(client, runtime, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    local = tmp_path / "data.bin"
    local.write_bytes(data)
    seen = []
    with local.open("rb") as f:
        result = client.upload("data.bin", f, len(data), progress=seen.append)
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    assert (runtime.inbox / "data.bin").read_bytes() == data
    assert seen[-1] == len(data)


def test_upload_from_non_file_object(client, runtime):
    data = b"x" * 100_000
    client.upload("mem.bin", io.BytesIO(data), len(data))
    assert (runtime.inbox / "mem.bin").read_bytes() == data


def test_download_streams_into_sink(client, runtime):
    data = os.urandom(2 * 1024 * 1024 + 5)
    (runtime.outbox / "result.bin").write_bytes(data)
    sink = io.BytesIO()
    assert client.download("outbox", "result.bin", sink) == len(data)
    assert sink.getvalue() == data


def test_download_from_offset_uses_range(client, runtime):
    (runtime.outbox / "r.txt").write_bytes(b"0123456789")
    sink = io.BytesIO()
    client.download("outbox", "r.txt", sink, offset=4)
    assert sink.getvalue() == b"456789"


def test_read_range_returns_slice_and_empty_past_end(client, runtime):
    (runtime.outbox / "r.txt").write_bytes(b"0123456789")
    assert client.read_range("outbox", "r.txt", 2, 3) == b"234"
    assert client.read_range("outbox", "r.txt", 8, 100) == b"89"
    assert client.read_range("outbox", "r.txt", 10, 5) == b""


def test_missing_file_maps_to_not_found_with_server_message(client):
    with pytest.raises(ApiNotFound) as info:
        client.stat("outbox", "nothing.txt")
    assert info.value.status == ExitStatus.NOT_FOUND
    assert "'nothing.txt' does not exist" in str(info.value)
    assert info.value.code == "not_found"


def test_server_refusal_maps_to_enclave_error_with_code(client, runtime):
    # The client checks names by the runtime's own rule, so provoke a refusal only the runtime
    # can make: a file used as a directory.
    client.upload("a", io.BytesIO(b"x"), 1)
    with pytest.raises(ApiError) as info:
        client.upload("a/b", io.BytesIO(b"y"), 1)
    assert info.value.status == ExitStatus.ENCLAVE_ERROR
    assert info.value.code == "bad_path"
    assert info.value.http_status == 400
    assert os.listdir(runtime.inbox) == ["a"]


def test_connection_keeps_working_after_an_error(client):
    with pytest.raises(ApiNotFound):
        client.stat("inbox", "missing")
    assert client.health()["status"] == "ok"


def test_upload_refused_early_reports_server_error(client, runtime):
    (runtime.inbox / "d").mkdir()
    data = b"y" * (8 * 1024 * 1024)
    with pytest.raises(ApiError) as info:
        client.upload("d", io.BytesIO(data), len(data))
    assert info.value.code == "is_a_directory"
    assert client.health()["status"] == "ok"


def test_list_mkdir_delete(client, runtime):
    client.mkdir("sub")
    client.upload("sub/a.txt", io.BytesIO(b"a"), 1)
    assert [e["name"] for e in client.list("inbox", "sub")] == ["a.txt"]
    client.delete("inbox", "sub/a.txt")
    client.delete("inbox", "sub")
    assert not (runtime.inbox / "sub").exists()


def test_run_request_carries_credentials_and_args(client, runtime, tmp_path):
    seal_app(runtime, tmp_path)
    (runtime.inbox / "in.txt").write_text("abc")
    creds = {"access_key_id": "AKIA", "secret_access_key": "s", "session_token": "t"}
    # The runtime refuses any field it does not know (a key, a region, an app id): the host
    # names none, the image decides what it unseals.
    started = client.start_run(bundle="app.sealed", entrypoint="copy",
                               args=["in.txt", "out.txt"], credentials=creds)
    assert started["state"] in ("unsealing", "running")
    view = runtime.wait_run(started["id"])
    assert view["state"] == "succeeded", view
    assert (runtime.outbox / "out.txt").read_text() == "ABC"
    used = runtime.credentials[-1]
    assert (used.access_key_id, used.secret_access_key, used.session_token) == ("AKIA", "s", "t")
    assert client.get_run(started["id"])["state"] == "succeeded"


def test_attestation_sends_hex_nonce_and_decodes_document(client, runtime):
    nonce = bytes(range(32))
    assert client.attestation(nonce) == b"DOC|" + nonce + b"|"
    assert runtime.nsm.calls[-1]["nonce"] == nonce


def test_unreachable_socket_is_an_actionable_not_found_error(tmp_path):
    c = RuntimeClient(UnixAddress(str(tmp_path / "nobody.sock")), timeout=1)
    with pytest.raises(NotFoundError, match="no enclave runtime answers at"):
        c.health()


def test_silent_server_times_out(tmp_path):
    path = str(tmp_path / "silent.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    c = RuntimeClient(UnixAddress(path), timeout=0.3)
    with pytest.raises(TimeoutExpired):
        c.health()
    listener.close()


def test_non_json_error_body_still_gives_a_message():
    err = error_from_response(502, b"Bad gateway from somewhere")
    assert "Bad gateway" in str(err) and err.http_status == 502


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "/etc/passwd", "a\x00b", ""])
def test_remote_paths_that_could_escape_are_refused(bad):
    with pytest.raises(UsageError):
        check_remote_path(bad)


# Every shape the runtime's path rule refuses; the client must refuse each before sending.
RUNTIME_REFUSES = ["a//b", "a/b//", "/etc/passwd", "//x", "./a", "a/./b", "a/../b", "..",
                   "a\\b", "a\x00b", "a\x7fb", ".partial-x", "a/.partial-y", "n" * 256,
                   "a/" * 33, "x" * 1025]


@pytest.mark.parametrize("bad", RUNTIME_REFUSES, ids=repr)
def test_client_refuses_what_the_runtime_refuses(bad):
    from enclave.exchange_errors import PathRejected
    from enclave.paths import split_relative

    with pytest.raises(PathRejected):
        split_relative(bad)  # the runtime's rule: the shape is one it refuses
    with pytest.raises(UsageError, match="remote path refused"):
        check_remote_path(bad)


@pytest.mark.parametrize("bad", RUNTIME_REFUSES, ids=repr)
def test_client_sends_nothing_for_a_path_the_runtime_refuses(tmp_path, bad):
    path = str(tmp_path / "rt.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    listener.setblocking(False)
    try:
        client = RuntimeClient(UnixAddress(path), timeout=2)
        for call in (lambda: client.upload(bad, io.BytesIO(b"x"), 1),
                     lambda: client.stat("inbox", bad),
                     lambda: client.delete("inbox", bad),
                     lambda: client.start_run(bundle=bad, entrypoint="predict", args=[],
                                                  credentials=None)):
            with pytest.raises(UsageError):
                call()
        with pytest.raises(BlockingIOError):
            listener.accept()  # no connection was ever made
    finally:
        listener.close()


def test_remote_path_drops_only_a_trailing_slash():
    assert check_remote_path("a/b/") == "a/b"
    assert check_remote_path("", allow_empty=True) == ""


def test_split_area_recognises_prefixes():
    from enclave.paths import split_area

    assert split_area("outbox/r.json", default="inbox") == ("outbox", "r.json")
    assert split_area("r.json", default="outbox") == ("outbox", "r.json")


def _one_shot_server(path, replies):
    """Accept connections; answer each with the next canned reply (None: close at once)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    seen = []

    def serve():
        for reply in replies:
            conn, _ = listener.accept()
            seen.append(conn.recv(65536))
            if reply is not None:
                conn.sendall(reply)
            conn.close()
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return seen


OK_HEALTH = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n"
             b"Connection: keep-alive\r\n\r\n{\"status\":\"ok\"}")


def test_stale_keep_alive_connection_is_retried_once(tmp_path):
    path = str(tmp_path / "s.sock")
    seen = _one_shot_server(path, [OK_HEALTH, OK_HEALTH])
    c = RuntimeClient(UnixAddress(path), timeout=2)
    assert c.health()["status"] == "ok"  # the server then closes this connection
    assert c.health()["status"] == "ok"  # reconnects transparently
    assert len(seen) == 2


def test_request_on_fresh_connection_is_never_resent(tmp_path):
    path = str(tmp_path / "s.sock")
    seen = _one_shot_server(path, [None, OK_HEALTH])
    c = RuntimeClient(UnixAddress(path), timeout=2)
    with pytest.raises(EnclaveError):
        c.start_run(bundle="b", entrypoint="e", args=[], credentials=None)
    assert len(seen) == 1  # a run request that may have been acted on is not sent twice


def test_oversized_json_answer_is_refused(client, monkeypatch):
    # The runtime's answers are small; a lowered limit stands in for an answer larger than it.
    monkeypatch.setattr("client.api.MAX_JSON_RESPONSE", 64)
    with pytest.raises(EnclaveError, match="exceeds"):
        client.health()
