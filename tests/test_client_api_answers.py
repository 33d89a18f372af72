"""`RuntimeClient` against answers the real runtime never gives: something else listening on the
socket (`--socket` pointing at the wrong program), a truncated or range-less file, a non-object
JSON. A canned server stands in for the runtime here because the real one cannot be made to send
these; what the client does with the real runtime's answers is in test_client_api.py.
"""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.api import RuntimeClient, _fs_url
from client.errors import EnclaveError, UsageError
from client.transport import UnixAddress


class Canned:
    """A Unix socket server that answers every request with the same raw bytes, then closes."""

    def __init__(self, path: Path, answer: bytes) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    head += chunk
                self.requests.append(head.split(b"\r\n", 1)[0])
                conn.sendall(self.answer)

    def close(self) -> None:
        self.sock.close()


def http_answer(status: str, body: bytes, *, length: int | None = None,
                content_type: str = "application/json") -> bytes:
    size = len(body) if length is None else length
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {size}\r\n"
            "Connection: close\r\n\r\n").encode() + body


@pytest.fixture
def canned(tmp_path: Path) -> Iterator:
    servers: list[Canned] = []

    def start(answer: bytes) -> RuntimeClient:
        path = tmp_path / f"canned{len(servers)}.sock"
        servers.append(Canned(path, answer))
        return RuntimeClient(UnixAddress(str(path)), timeout=5)

    yield start
    for server in servers:
        server.close()


def test_a_json_answer_that_is_not_an_object_is_refused(canned):
    client = canned(http_answer("200 OK", b"[1, 2]"))
    with pytest.raises(EnclaveError, match="answer to GET /v1/health is not a JSON object; "
                                           "is --socket/--cid pointing at the runtime"):
        client.health()


def test_an_answer_that_is_not_json_names_the_likely_mistake(canned):
    client = canned(http_answer("200 OK", b"<html>hello</html>", content_type="text/html"))
    with pytest.raises(EnclaveError, match="sent a response that is not JSON for GET "
                                           "/v1/health; is --socket/--cid pointing"):
        client.health()


def test_an_empty_json_answer_is_an_empty_object(canned):
    assert canned(http_answer("200 OK", b"")).health() == {}


def test_an_error_answer_that_is_not_the_runtimes_keeps_its_text(canned):
    client = canned(http_answer("502 Bad Gateway", b"upstream down", content_type="text/plain"))
    with pytest.raises(EnclaveError) as caught:
        client.health()
    assert str(caught.value) == "enclave runtime: upstream down (http_502, HTTP 502)"


def test_a_resumed_download_the_server_answers_whole_is_refused(canned):
    client = canned(http_answer("200 OK", b"whole file", content_type="application/octet-stream"))
    with pytest.raises(EnclaveError, match="ignored the range request for outbox/r.csv; pull "
                                           "the whole file again"):
        client.download("outbox", "r.csv", io.BytesIO(), offset=4)


def test_a_download_cut_short_says_how_much_is_missing(canned):
    client = canned(http_answer("200 OK", b"only part", length=100,
                                content_type="application/octet-stream"))
    sink = io.BytesIO()
    with pytest.raises(EnclaveError, match=r"download of outbox/r.csv ended early \(91 bytes "
                                           r"missing\); retry the pull"):
        client.download("outbox", "r.csv", sink)
    assert sink.getvalue() == b"only part"  # what did arrive was kept for a resume


def test_reading_past_the_end_is_empty(canned):
    client = canned(http_answer("416 Range Not Satisfiable", b""))
    assert client.read_range("outbox", "r.csv", 100, 10) == b""
    assert client.read_range("outbox", "r.csv", 0, 0) == b""


def test_a_whole_file_answer_to_a_range_read_is_cut_to_the_range(canned):
    client = canned(http_answer("200 OK", b"0123456789", content_type="application/octet-stream"))
    assert client.read_range("outbox", "r.csv", 3, 4) == b"3456"


def test_an_upload_answer_that_is_not_an_object_is_refused(canned):
    client = canned(http_answer("201 Created", b"[]"))
    with pytest.raises(EnclaveError, match=r"answer to PUT /v1/fs/inbox/a.bin is not a JSON "
                                           r"object"):
        client.upload("a.bin", io.BytesIO(b"abc"), 3)


def test_an_area_that_does_not_exist_is_a_usage_error_before_sending():
    with pytest.raises(UsageError, match="unknown exchange area 'private'; expected one of "
                                         "inbox, outbox"):
        _fs_url("private", "x")
