"""`python -m client service ...`: what it refuses before asking the runtime, what it makes of the
runtime's refusals, and the local forwarder's own limits. The runtime is the real server
(`exchange_runtime`); where a case needs a service in a given state the real runtime would take
seconds to reach (crashed, still starting), a recorded sequence of answers stands in for it.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.api import RuntimeClient, ServiceAnswer
from client.cli import main
from client.commands import service
from client.commands.service import answer_json, describe, make_forwarder, wait_until_ready
from client.errors import EnclaveError, ExitStatus, TimeoutExpired
from client.transport import UnixAddress


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEALED_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SEALED_SIM_DIR", str(tmp_path / "sim"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAHOSTTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "host-secret")
    monkeypatch.setenv("AWS_REGION", "us-east-1")


@pytest.fixture
def cli(exchange_runtime, capsys):
    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["--socket", exchange_runtime.socket_path, *argv])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def test_a_bundle_outside_the_inbox_is_refused_before_the_runtime_is_asked(cli):
    code, _, err = cli("service", "start", "-f", "outbox/app.sealed", "-s", "serve")
    assert code == ExitStatus.USAGE
    assert "the bundle must be in the inbox, not outbox/; push it first: " \
           "python -m client push app.sealed" in err


def test_a_missing_bundle_is_the_runtimes_not_found(cli):
    code, _, err = cli("service", "start", "-f", "absent.sealed", "-s", "serve")
    assert code == ExitStatus.NOT_FOUND
    assert "absent.sealed" in err and "HTTP 404" in err


@pytest.mark.parametrize("argv", [("status", "0123456789abcdef"), ("stop", "0123456789abcdef"),
                                  ("call", "0123456789abcdef", "--path", "/predict"),
                                  ("forward", "0123456789abcdef", "--port", "0")])
def test_an_unknown_service_is_not_found_for_every_command(cli, argv):
    code, out, err = cli("service", *argv)
    assert code == ExitStatus.NOT_FOUND, err
    assert "0123456789abcdef" in err and out == ""


def test_list_with_no_services_says_so(cli):
    code, out, _ = cli("service", "list")
    assert (code, out.strip()) == (0, "no services")


@pytest.mark.parametrize(("extra", "message"), [
    (("--data", "x", "--json", "{}"), "give the body either with --data or with --json"),
    (("--json", "{not json"), "--json is not valid JSON"),
    (("--data", "@/nonexistent/body.bin"), "--data @/nonexistent/body.bin: cannot read"),
])
def test_a_body_that_cannot_be_sent_is_a_usage_error(cli, extra, message):
    code, _, err = cli("service", "call", "0123456789abcdef", *extra)
    assert code == ExitStatus.USAGE and message in err


class Recorded:
    """A runtime's answers about one service, in order (the last one repeats)."""

    def __init__(self, *records: dict) -> None:
        self.records = list(records)
        self.asked = 0

    def get_service(self, service_id: str) -> dict:
        self.asked += 1
        return self.records.pop(0) if len(self.records) > 1 else self.records[0]


def test_waiting_for_a_service_that_crashes_names_its_reason():
    client = Recorded({"id": "s1", "state": "starting"},
                      {"id": "s1", "state": "crashed", "error": "exited with status 3"})
    with pytest.raises(EnclaveError, match="service s1 crashed: exited with status 3"):
        wait_until_ready(client, "s1", 10)  # type: ignore[arg-type]
    assert client.asked == 2


def test_waiting_for_a_service_that_never_gets_ready_times_out_and_says_it_goes_on():
    client = Recorded({"id": "s1", "state": "starting"})
    with pytest.raises(TimeoutExpired) as caught:
        wait_until_ready(client, "s1", 0.05)  # type: ignore[arg-type]
    assert "service s1 still starting after 0.05s; it goes on" in str(caught.value)
    assert caught.value.status == ExitStatus.TIMEOUT


def test_status_describes_the_app_the_last_request_error_and_the_end():
    text = describe({"id": "s1", "state": "crashed", "bundle": "app.sealed",
                     "entrypoint": "serve", "app_id": "risk", "app_version": "1.2",
                     "requests_served": 4, "errors": 1, "restarts": 2,
                     "last_error": "the service took longer than 5s", "error": "no restart left"})
    assert text.splitlines() == [
        "service s1: crashed",
        "  bundle app.sealed, entrypoint serve, app risk 1.2",
        "  requests served 4, errors 1, restarts 2",
        "  last request error: the service took longer than 5s",
        "  ended: no restart left"]


def test_a_binary_answer_is_given_as_base64_in_json():
    assert answer_json(ServiceAnswer(200, "application/octet-stream", b"\xff\x00")) == {
        "status": 200, "content_type": "application/octet-stream", "body_base64": "/wA="}
    assert answer_json(ServiceAnswer(200, "text/plain", b"ok"))["body"] == "ok"


@pytest.fixture
def forwarder(exchange_runtime) -> Iterator[int]:
    """A real local forwarder to a service id the real runtime does not know."""
    client = RuntimeClient(UnixAddress(exchange_runtime.socket_path), timeout=5)
    server = make_forwarder(client, "0123456789abcdef")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_port
    server.shutdown()
    server.server_close()
    client.close()


def ask(port: int, method: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.putrequest(method, "/predict")
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.endheaders()
    if body:
        conn.send(body)
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    return response.status, answer["error"]


def test_the_forwarder_refuses_chunked_bodies(forwarder):
    status, error = ask(forwarder, "POST", {"Transfer-Encoding": "chunked"}, b"0\r\n\r\n")
    assert (status, error["code"]) == (411, "length_required")


@pytest.mark.parametrize("length", [str(service.MAX_FORWARD_BODY + 1), "-1", "1e3"])
def test_the_forwarder_refuses_a_length_over_the_limit_or_not_a_number(forwarder, length):
    status, error = ask(forwarder, "PUT", {"Content-Length": length})
    assert (status, error["code"]) == (413, "request_too_large")


def test_the_forwarder_passes_on_the_runtimes_refusal_with_its_status_and_code(forwarder):
    status, error = ask(forwarder, "DELETE", {"Content-Length": "0"})
    assert (status, error["code"]) == (404, "not_found")
    assert "0123456789abcdef" in error["message"]
