"""`python -m client service ...` against the real runtime serving the sample app's `serve`.

The sample app is sealed as the pipeline seals it; the forwarder is a real local listener.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
from pathlib import Path

import numpy
import pytest
from runtime_harness import Runtime, start_runtime, stop_runtime

from client.api import RuntimeClient
from client.cli import main
from client.commands.service import make_forwarder
from client.errors import ExitStatus
from client.transport import UnixAddress
from enclave.sealing import seal_directory
from tests.conftest import PROJECT_ROOT

SAMPLE = PROJECT_ROOT / "src" / "sample-inference"
PATIENT = {"patient_id": "p1", "age": 61, "bmi": 33.0, "fasting_glucose": 131,
           "systolic_bp": 142, "hdl_cholesterol": 38, "smoker": 1, "family_history": 1}


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEALED_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SEALED_SIM_DIR", str(tmp_path / "sim"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAHOSTTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "host-secret")
    monkeypatch.setenv("AWS_REGION", "us-east-1")


@pytest.fixture
def rt(tmp_path: Path):
    # The image's numpy is this virtualenv's here (the app's user can read it).
    runtime = start_runtime(tmp_path, app_uid_base=200_000 + (os.getpid() % 100_000) * 8,
                            app_site=str(Path(numpy.__file__).parent.parent))
    with open(runtime.inbox / "app.sealed", "wb") as out:
        seal_directory(SAMPLE, out, key_provider=runtime.key_provider)
    yield runtime
    runtime.server.services.shutdown(timeout=15)
    stop_runtime(runtime)


def client_main(rt: Runtime, *argv: str) -> int:
    return main(["--socket", rt.socket_path, *argv])


def start(rt: Runtime, capsys: pytest.CaptureFixture) -> str:
    code = client_main(rt, "service", "start", "-f", "app.sealed", "-s", "serve")
    out, err = capsys.readouterr()
    assert code == 0, err
    return out.strip()


def test_start_prints_the_id_and_call_answers_predict(rt: Runtime,
                                                      capsys: pytest.CaptureFixture) -> None:
    service_id = start(rt, capsys)
    assert len(service_id) == 16
    code = client_main(rt, "service", "call", service_id, "--path", "/predict",
                       "--json", json.dumps(PATIENT))
    out, err = capsys.readouterr()
    assert code == 0, err
    prediction = json.loads(out)["predictions"][0]
    assert prediction["patient_id"] == "p1" and 0 < prediction["risk_probability"] < 1
    assert client_main(rt, "--json", "service", "status", service_id) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "ready" and status["requests_served"] == 1
    assert client_main(rt, "service", "list") == 0
    assert service_id in capsys.readouterr().out
    assert client_main(rt, "service", "stop", service_id) == 0
    assert capsys.readouterr().out.strip() == f"service {service_id}: stopped"
    assert list(rt.config.private_root.glob("svc-*")) == []


def test_call_with_data_from_a_file_and_json_output(rt: Runtime, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    service_id = start(rt, capsys)
    body = tmp_path / "patients.json"
    body.write_text(json.dumps({"patients": [PATIENT, {**PATIENT, "patient_id": "p2"}]}))
    code = client_main(rt, "service", "call", service_id, "--path", "/predict",
                       "--data", f"@{body}", "--json")
    answer = json.loads(capsys.readouterr().out)
    assert code == 0 and answer["status"] == 200
    assert [p["patient_id"] for p in json.loads(answer["body"])["predictions"]] == ["p1", "p2"]


def test_service_error_status_and_runtime_errors_map_to_exit_codes(
        rt: Runtime, capsys: pytest.CaptureFixture) -> None:
    service_id = start(rt, capsys)
    code = client_main(rt, "service", "call", service_id, "--path", "/predict", "--json", "[]")
    out, err = capsys.readouterr()
    assert code == ExitStatus.ENCLAVE_ERROR and "must be a JSON object" in out
    assert "answered HTTP 400" in err
    assert client_main(rt, "service", "status", "0123456789abcdef") == ExitStatus.NOT_FOUND
    too_big = json.dumps({"patients": [PATIENT] * 20000})
    code = client_main(rt, "service", "call", service_id, "--path", "/predict", "--json", too_big)
    assert code == ExitStatus.ENCLAVE_ERROR
    assert "request_too_large" in capsys.readouterr().err


def test_forward_serves_plain_http_clients_on_localhost(rt: Runtime,
                                                        capsys: pytest.CaptureFixture) -> None:
    service_id = start(rt, capsys)
    client = RuntimeClient(UnixAddress(rt.socket_path))
    forwarder = make_forwarder(client, service_id)
    thread = threading.Thread(target=forwarder.serve_forever, daemon=True)
    thread.start()
    try:
        assert forwarder.server_address[0] == "127.0.0.1"
        conn = http.client.HTTPConnection("127.0.0.1", forwarder.server_port, timeout=10)
        for _ in range(3):  # one keep-alive connection, several requests
            conn.request("POST", "/predict", body=json.dumps(PATIENT),
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            assert response.status == 200
            assert json.loads(response.read())["predictions"][0]["patient_id"] == "p1"
        conn.request("GET", "/health")
        assert json.loads(conn.getresponse().read()) == {"status": "ok"}
        conn.request("POST", "/predict", body=b"x" * (2 * 1024 * 1024))
        refused = conn.getresponse()
        assert refused.status == 413
        assert json.loads(refused.read())["error"]["code"] == "request_too_large"
    finally:
        forwarder.shutdown()
        forwarder.server_close()
        client.close()


def test_forward_port_is_the_local_listener_not_the_runtime_port() -> None:
    from client.cli import apply_global_defaults, build_parser

    args = apply_global_defaults(build_parser().parse_args(
        ["--port", "5006", "service", "forward", "0123456789abcdef", "--port", "8080"]))
    assert (args.port, args.listen_port, args.bind) == (5006, 8080, "127.0.0.1")
