"""The runtime's HTTP API over a real Unix socket: routes, limits, abuse, and recovery from it."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml
from runtime_harness import Runtime, start_runtime, stop_runtime, write_test_policy

from enclave.routes import ROUTES, MethodNotAllowed, match_route

OPENAPI = Path(__file__).resolve().parent.parent / "enclave" / "openapi.yaml"


@pytest.fixture
def rt(tmp_path: Path):
    runtime = start_runtime(tmp_path, max_upload_bytes=8 * 1024 * 1024)
    yield runtime
    stop_runtime(runtime)


def still_serves(rt: Runtime) -> bool:
    status, body, _ = rt.request("GET", "/v1/health")
    return status == 200 and body["status"] == "ok"


def error_code(body: object) -> str:
    assert isinstance(body, dict), body
    return body["error"]["code"]


# -- routes ------------------------------------------------------------------------------------

def test_health_reports_ok_and_version(rt: Runtime) -> None:
    status, body, _ = rt.request("GET", "/v1/health")
    assert (status, body["status"], body["version"]) == (200, "ok", rt.config.version)


def test_upload_then_download_round_trips_bytes_and_digest(rt: Runtime) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    status, body, _ = rt.request("PUT", "/v1/fs/inbox/data.bin", data)
    assert status == 201
    assert body == {"path": "data.bin", "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest()}
    status, got, _ = rt.request("GET", "/v1/fs/inbox/data.bin")
    assert status == 200 and got == data


def test_stat_and_list_describe_files_and_directories(rt: Runtime) -> None:
    assert rt.request("POST", "/v1/fs/inbox/d?mkdir")[0] == 201
    rt.request("PUT", "/v1/fs/inbox/d/f.txt", b"abc")
    status, body, _ = rt.request("GET", "/v1/fs/inbox/d/f.txt?stat")
    assert status == 200 and (body["path"], body["type"], body["size"]) == ("d/f.txt", "file", 3)
    status, body, _ = rt.request("GET", "/v1/fs/inbox?list")
    assert [(e["name"], e["type"]) for e in body["entries"]] == [("d", "dir")]
    status, body, _ = rt.request("GET", "/v1/fs/inbox/d?list")
    assert [(e["name"], e["size"]) for e in body["entries"]] == [("f.txt", 3)]


def test_delete_removes_a_file(rt: Runtime) -> None:
    rt.request("PUT", "/v1/fs/inbox/x", b"1")
    assert rt.request("DELETE", "/v1/fs/inbox/x")[0] == 200
    assert rt.request("GET", "/v1/fs/inbox/x?stat")[0] == 404


def test_outbox_is_read_only_for_the_host(rt: Runtime) -> None:
    status, body, _ = rt.request("PUT", "/v1/fs/outbox/x", b"1")
    assert (status, error_code(body)) == (403, "read_only")
    assert not (rt.outbox / "x").exists()
    assert still_serves(rt)


def test_range_read_returns_partial_content(rt: Runtime) -> None:
    rt.request("PUT", "/v1/fs/inbox/r", b"0123456789")
    status, got, headers = rt.request("GET", "/v1/fs/inbox/r", headers={"Range": "bytes=2-4"})
    assert (status, got, headers["Content-Range"]) == (206, b"234", "bytes 2-4/10")
    status, got, _ = rt.request("GET", "/v1/fs/inbox/r", headers={"Range": "bytes=7-"})
    assert (status, got) == (206, b"789")
    status, got, _ = rt.request("GET", "/v1/fs/inbox/r", headers={"Range": "bytes=-3"})
    assert (status, got) == (206, b"789")


def test_range_past_end_is_not_satisfiable(rt: Runtime) -> None:
    rt.request("PUT", "/v1/fs/inbox/r", b"0123")
    status, body, headers = rt.request("GET", "/v1/fs/inbox/r", headers={"Range": "bytes=4-"})
    assert (status, error_code(body), headers["Content-Range"]) == (
        416, "range_not_satisfiable", "bytes */4")


def test_unknown_endpoint_is_404_and_wrong_method_405(rt: Runtime) -> None:
    status, body, _ = rt.request("GET", "/v1/nothing")
    assert (status, error_code(body)) == (404, "not_found")
    status, body, headers = rt.request("PUT", "/v1/health", b"")
    assert (status, error_code(body), headers["Allow"]) == (405, "method_not_allowed", "GET")


def test_wrong_method_gets_405_with_every_allowed_method_in_allow(rt: Runtime) -> None:
    status, body, headers = rt.request("PUT", "/v1/runs/0123456789abcdef", b"")
    assert (status, error_code(body), headers["Allow"]) == (405, "method_not_allowed",
                                                            "GET, DELETE")
    assert still_serves(rt)


def test_route_table_carries_the_allowed_methods_as_data() -> None:
    with pytest.raises(MethodNotAllowed) as refused:
        match_route("PUT", "/v1/services/0123456789abcdef")
    assert refused.value.allowed == ("GET", "DELETE")
    assert refused.value.headers() == {"Allow": "GET, DELETE"}


def test_keep_alive_serves_several_requests_on_one_connection(rt: Runtime) -> None:
    conn = rt.connection()
    try:
        for _ in range(3):
            conn.request("GET", "/v1/health")
            response = conn.getresponse()
            assert response.status == 200
            response.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    "url",
    [
        "/v1/fs/inbox/../secret",
        "/v1/fs/inbox/%2e%2e/secret",
        "/v1/fs/inbox/%2E%2E%2Fsecret",
        "/v1/fs/inbox//etc/passwd",
        "/v1/fs/inbox/%2Fetc%2Fpasswd",
        "/v1/fs/inbox/a/%00b",
        "/v1/fs/inbox/%ff%fe",
        "/v1/fs/outbox/../../sealed",
    ],
)
def test_traversal_in_urls_is_refused(rt: Runtime, url: str) -> None:
    # A file wherever a traversal would land (the exchange root, its parent, the private root),
    # so that only the refusal, not a missing file, can explain the answer.
    for place in (rt.config.exchange_root, rt.config.exchange_root.parent,
                  rt.config.private_root):
        (place / "secret").write_text("nope")
    (rt.config.exchange_root / "inbox" / "a").mkdir()
    status, body, _ = rt.request("GET", url)
    assert (status, error_code(body)) == (400, "bad_path"), body
    assert b"nope" not in json.dumps(body).encode()


def test_private_root_is_not_an_area(rt: Runtime) -> None:
    status, body, _ = rt.request("GET", "/v1/fs/sealed?list")
    assert status == 404


# -- several clients at once -------------------------------------------------------------------

def test_several_clients_are_served_at_once(rt: Runtime) -> None:
    count = 6
    barrier = threading.Barrier(count)
    results: list[bool] = []

    def client(i: int) -> None:
        data = os.urandom(512 * 1024) + bytes([i])
        conn = rt.connection()
        conn.connect()
        barrier.wait()  # all connected before anyone is answered
        conn.request("PUT", f"/v1/fs/inbox/c{i}", body=data)
        response = conn.getresponse()
        response.read()
        conn.request("GET", f"/v1/fs/inbox/c{i}")
        got = conn.getresponse()
        results.append(response.status == 201 and got.status == 200 and got.read() == data)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert results == [True] * count


def test_idle_slowloris_does_not_block_other_clients(rt: Runtime) -> None:
    with socket.socket(socket.AF_UNIX) as slow:
        slow.connect(rt.socket_path)
        slow.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n")
        assert still_serves(rt)


def test_connections_beyond_the_limit_get_503_at_once(tmp_path: Path) -> None:
    rt = start_runtime(tmp_path, max_connections=2, header_timeout=5.0)
    idle = [socket.socket(socket.AF_UNIX) for _ in range(2)]
    try:
        for s in idle:
            s.connect(rt.socket_path)
        time.sleep(0.3)  # let the server accept both
        answer = rt.raw(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503")
        assert b'"busy"' in answer
    finally:
        for s in idle:
            s.close()
        time.sleep(0.3)
        assert still_serves(rt)
        stop_runtime(rt)


# -- malformed and oversized requests ----------------------------------------------------------

def test_slowloris_head_is_cut_off_at_the_deadline(tmp_path: Path) -> None:
    rt = start_runtime(tmp_path, header_timeout=1.0)
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(rt.socket_path)
            s.settimeout(5)
            started = time.monotonic()
            closed = False
            # One header byte every 0.2 s: each read is quick, the head never completes.
            for byte in b"GET /v1/health HTTP/1.1\r\nX-Slow: " + b"a" * 100:
                try:
                    s.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                if time.monotonic() - started > 3:
                    break
                time.sleep(0.2)
            if not closed:
                try:
                    closed = s.recv(1) == b""
                except (ConnectionResetError, TimeoutError):
                    closed = True
            assert closed and time.monotonic() - started < 3.5
        assert still_serves(rt)
    finally:
        stop_runtime(rt)


def test_malformed_request_line_gets_json_error(rt: Runtime) -> None:
    answer = rt.raw(b"GARBAGE\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "bad_request"
    assert still_serves(rt)


def test_unsupported_http_version_is_refused(rt: Runtime) -> None:
    answer = rt.raw(b"GET /v1/health HTTP/3.7\r\n\r\n")
    assert answer.split(b" ", 2)[1] in (b"400", b"505")
    assert still_serves(rt)


def test_oversized_request_line_gets_414(rt: Runtime) -> None:
    answer = rt.raw(b"GET /v1/fs/inbox/" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 414")
    assert b'"uri_too_long"' in answer
    assert still_serves(rt)


def test_oversized_headers_get_431(rt: Runtime) -> None:
    headers = b"".join(b"X-Fill-%d: %s\r\n" % (i, b"v" * 1000) for i in range(30))
    answer = rt.raw(b"GET /v1/health HTTP/1.1\r\n" + headers + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431")
    assert b'"header_too_large"' in answer
    assert still_serves(rt)


def test_upload_larger_than_the_limit_gets_413_and_nothing_is_written(rt: Runtime) -> None:
    head = (b"PUT /v1/fs/inbox/big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
            % (rt.config.max_upload_bytes + 1))
    answer = rt.raw(head + b"x" * 1000)
    assert answer.startswith(b"HTTP/1.1 413")
    assert os.listdir(rt.inbox) == []
    assert still_serves(rt)


def test_expect_continue_upload_over_limit_is_refused_before_the_body(rt: Runtime) -> None:
    head = (b"PUT /v1/fs/inbox/big HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % (rt.config.max_upload_bytes + 1))
    answer = rt.raw(head)
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"100 Continue" not in answer


def test_upload_without_content_length_gets_411(rt: Runtime) -> None:
    answer = rt.raw(b"PUT /v1/fs/inbox/x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 411")
    answer = rt.raw(b"PUT /v1/fs/inbox/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                    b"\r\n5\r\nhello\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 411")
    assert os.listdir(rt.inbox) == []
    assert still_serves(rt)


def test_duplicate_content_length_is_refused(rt: Runtime) -> None:
    answer = rt.raw(b"PUT /v1/fs/inbox/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                    b"Content-Length: 5\r\n\r\nhello")
    assert answer.startswith(b"HTTP/1.1 400")
    assert os.listdir(rt.inbox) == []
    assert still_serves(rt)


def test_oversized_json_body_gets_413(rt: Runtime) -> None:
    big = {"nonce": "00" * 40000}
    status, body, _ = rt.request("POST", "/v1/attestation", big)
    assert (status, error_code(body)) == (413, "payload_too_large")
    assert still_serves(rt)


def test_unknown_json_fields_are_rejected(rt: Runtime) -> None:
    status, body, _ = rt.request("POST", "/v1/attestation", {"nonce": "00", "extra": True})
    assert (status, error_code(body)) == (400, "unknown_field")
    status, body, _ = rt.request("POST", "/v1/runs", {
        "bundle": "b", "entrypoint": "predict", "args": [], "credentials": {
            "access_key_id": "a", "secret_access_key": "s", "role": "admin"}})
    assert (status, error_code(body)) == (400, "unknown_field")


@pytest.mark.parametrize("raw", [b"{", b"[1,2]", b'{"nonce": NaN}', b"\xff\xfe", b'"x"'])
def test_invalid_json_is_rejected(rt: Runtime, raw: bytes) -> None:
    status, body, _ = rt.request("POST", "/v1/attestation", raw)
    assert (status, error_code(body)) == (400, "invalid_json")
    assert still_serves(rt)


def test_client_disconnecting_mid_upload_leaves_nothing(rt: Runtime) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(rt.socket_path)
        s.sendall(b"PUT /v1/fs/inbox/half.bin HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 4000000\r\n\r\n" + b"z" * 1_000_000)
    deadline = time.monotonic() + 5
    while os.listdir(rt.inbox) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.listdir(rt.inbox) == []
    assert still_serves(rt)
    assert rt.request("GET", "/v1/fs/inbox/half.bin?stat")[0] == 404


def test_body_of_a_refused_request_is_never_parsed_as_a_request(rt: Runtime) -> None:
    # The body of a refused request must not be taken for the next request on the connection.
    smuggled = b"GET /v1/fs/inbox?list HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = rt.raw(b"POST /v1/nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                    % len(smuggled) + smuggled)
    assert answer.count(b"HTTP/1.1 ") == 1


def test_connection_stays_usable_after_a_refused_small_request(rt: Runtime) -> None:
    conn = rt.connection()
    try:
        conn.request("POST", "/v1/attestation", body=b'{"nonce": "00", "bogus": 1}')
        first = conn.getresponse()
        first.read()
        conn.request("GET", "/v1/health")
        second = conn.getresponse()
        assert (first.status, second.status) == (400, 200)
        second.read()
    finally:
        conn.close()


# -- attestation and logs ----------------------------------------------------------------------

def test_attestation_passes_the_hosts_nonce_to_the_nsm(rt: Runtime) -> None:
    status, body, _ = rt.request("POST", "/v1/attestation",
                                 {"nonce": "a1b2", "user_data": "0102"})
    assert status == 200
    # The host's bytes go in behind their domain tag (enclave/receipt.py): never a receipt's.
    tag = b"sealed-enclave/host-data/v1\x00"
    assert base64.b64decode(body["document"]) == b"DOC|\xa1\xb2|" + tag + b"\x01\x02"
    assert rt.nsm.calls[-1]["nonce"] == b"\xa1\xb2"


@pytest.mark.parametrize("nonce", [None, "", "zz", "00" * 513, 5])
def test_attestation_refuses_a_bad_nonce(rt: Runtime, nonce: object) -> None:
    payload = {} if nonce is None else {"nonce": nonce}
    status, body, _ = rt.request("POST", "/v1/attestation", payload)
    assert status == 400
    assert rt.nsm.calls == []


def test_logs_are_numbered_and_resumable(rt: Runtime) -> None:
    rt.request("POST", "/v1/attestation", {"nonce": "00"})
    status, first, _ = rt.request("GET", "/v1/logs?since=0")
    assert status == 200 and first["lines"]
    status, later, _ = rt.request("GET", f"/v1/logs?since={first['next']}")
    assert later["lines"] == []


# -- schema --------------------------------------------------------------------------------------

def _schema_routes() -> set[tuple[str, str]]:
    spec = yaml.safe_load(OPENAPI.read_text())
    methods = {"get", "put", "post", "delete", "patch", "head", "options"}
    return {(method.upper(), path) for path, item in spec["paths"].items()
            for method in item if method in methods}


def test_openapi_schema_lists_exactly_the_served_routes() -> None:
    assert _schema_routes() == {(route.method, route.template) for route in ROUTES}


def test_openapi_schema_is_version_3_1() -> None:
    assert str(yaml.safe_load(OPENAPI.read_text())["openapi"]).startswith("3.1")


def test_route_table_matches_area_paths_with_slashes() -> None:
    route, params = match_route("GET", "/v1/fs/inbox/a/b%20c.txt")
    assert route.template == "/v1/fs/{area}/{path}"
    assert params == {"area": "inbox", "path": "a/b c.txt"}


# -- the command line ------------------------------------------------------------------------------

def test_enclave_serve_command_serves_and_stops_cleanly(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    from enclave.__main__ import simulation_argv

    sock = f"/tmp/serve-{os.getpid()}.sock"
    argv = simulation_argv(socket_path=sock, exchange=tmp_path / "exchange",
                           private=tmp_path / "private", nsm_device=tmp_path / "no-nsm.sock",
                           kms_endpoint="http://127.0.0.1:9",
                           policy=write_test_policy(tmp_path / "policy.json"),
                           python=sys.executable)
    process = subprocess.Popen(argv, cwd=Path(__file__).resolve().parent.parent,
                               stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(20)
            s.connect(sock)
            s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
        assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
        # Run users pass through the private root to their own 0700 directories (root only).
        expected = "0o711" if os.geteuid() == 0 else "0o700"
        assert oct(os.stat(tmp_path / "private").st_mode & 0o777) == expected
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=20)
        process.stderr.close()
    assert code == 0 and not os.path.exists(sock)


def test_enclave_serve_refuses_a_private_root_inside_the_exchange(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "enclave", "serve", "--unix", str(tmp_path / "s.sock"),
         "--exchange", str(tmp_path / "ex"), "--private", str(tmp_path / "ex" / "inbox" / "p"),
         "--policy", str(write_test_policy(tmp_path / "policy.json"))],
        cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "overlap" in result.stderr


@pytest.mark.parametrize("policy", [None, "not json", '{"format": 1}'])
def test_enclave_serve_refuses_to_start_without_a_valid_image_policy(tmp_path: Path,
                                                                     policy: str | None) -> None:
    import subprocess
    import sys

    path = tmp_path / "policy.json"
    if policy is not None:
        path.write_text(policy)
    result = subprocess.run(
        [sys.executable, "-m", "enclave", "serve", "--unix", str(tmp_path / "s.sock"),
         "--exchange", str(tmp_path / "ex"), "--private", str(tmp_path / "p"),
         "--policy", str(path)],
        cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "image policy" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "s.sock").exists()
