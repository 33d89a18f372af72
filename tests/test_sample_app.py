"""The sample sealed application: it runs on the host's demo data and predicts sensibly."""

import csv
import importlib.util
import json
import subprocess
import sys

import pytest

from enclave.manifest import load_manifest
from tests.conftest import PROJECT_ROOT

APP = PROJECT_ROOT / "src" / "sample-inference"
HOST_DATA = PROJECT_ROOT / "samples" / "host-data" / "patients.csv"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"sample_{name}", APP / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    # No __pycache__ inside the application directory: it would be sealed with the app.
    before, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = before
    return module


@pytest.fixture(scope="module")
def train():
    return _module("train")


@pytest.fixture(scope="module")
def inference():
    return _module("ml_inference")


def run_app(*args, cwd=APP):
    return subprocess.run(
        [sys.executable, str(APP / "ml_inference.py"), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_app_scores_every_host_row(tmp_path):
    out = tmp_path / "predictions.csv"
    done = run_app(HOST_DATA, out)
    assert done.returncode == 0, done.stderr
    predictions = read_rows(out)
    inputs = read_rows(HOST_DATA)
    assert [p["patient_id"] for p in predictions] == [r["patient_id"] for r in inputs]
    assert all(0.0 < float(p["risk_probability"]) < 1.0 for p in predictions)
    assert done.stdout.startswith(f"scored {len(inputs)} patients: ")


def test_app_runs_as_the_manifest_declares(tmp_path):
    """The runner's view: fixed command + resolved host arguments, from the app directory."""
    manifest = load_manifest(APP)
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    outbox.mkdir()
    (inbox / "patients.csv").write_bytes(HOST_DATA.read_bytes())
    argv = manifest.resolve_arguments(
        "predict", ["patients.csv", "scores.csv", "0.3"], inbox, outbox
    )
    command = list(manifest.entrypoint("predict").command)
    command[0] = sys.executable  # "python3" on the enclave's PATH
    done = subprocess.run([*command, *argv], cwd=APP, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (outbox / "scores.csv").is_file()


def test_model_ranks_held_out_patients_well(train, inference):
    patients = train.generate_patients(2000, seed=4242)
    model = inference.load_model()
    probabilities = [
        inference.risk(model, [float(p[f]) for f in model["features"]]) for p in patients
    ]
    labels = [p["developed_diabetes"] for p in patients]
    assert train.auc(probabilities, labels) > 0.75
    base_rate = max(sum(labels), len(labels) - sum(labels)) / len(labels)
    assert train.accuracy(probabilities, labels, 0.5) > base_rate


def test_risk_rises_with_fasting_glucose(inference):
    model = inference.load_model()
    typical = {"age": 50, "bmi": 27, "fasting_glucose": 95, "systolic_bp": 125,
               "hdl_cholesterol": 50, "smoker": 0, "family_history": 0}  # fmt: skip
    low = inference.risk(model, [typical[f] for f in model["features"]])
    typical["fasting_glucose"] = 160
    high = inference.risk(model, [typical[f] for f in model["features"]])
    assert high > low + 0.3


def test_committed_model_is_what_train_py_produces(train, tmp_path):
    out = tmp_path / "model.json"
    assert train.main(["-o", str(out)]) == 0
    rebuilt = json.loads(out.read_text())
    committed = json.loads((APP / "model.json").read_text())
    assert rebuilt["features"] == committed["features"]
    assert rebuilt["coefficients"] == pytest.approx(committed["coefficients"], abs=1e-6)
    assert rebuilt["intercept"] == pytest.approx(committed["intercept"], abs=1e-6)


def test_committed_host_sample_is_what_train_py_produces(train, tmp_path):
    out = tmp_path / "patients.csv"
    train.write_host_sample(out)
    assert out.read_text() == HOST_DATA.read_text()


def test_host_sample_carries_no_outcome_column():
    assert "developed_diabetes" not in read_rows(HOST_DATA)[0]


def test_lower_threshold_flags_more_patients(tmp_path):
    strict = run_app(HOST_DATA, tmp_path / "a.csv", "0.7")
    loose = run_app(HOST_DATA, tmp_path / "b.csv", "0.2")
    flagged = [
        sum(int(r["high_risk"]) for r in read_rows(tmp_path / n)) for n in ("a.csv", "b.csv")
    ]
    assert strict.returncode == loose.returncode == 0
    assert flagged[0] < flagged[1]


def test_missing_column_fails_without_output(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,age\nP1,40\n")
    out = tmp_path / "out.csv"
    done = run_app(bad, out)
    assert done.returncode == 2
    assert "lacks column(s) bmi" in done.stderr
    assert list(tmp_path.iterdir()) == [bad]


def test_non_numeric_feature_names_the_line(tmp_path):
    rows = HOST_DATA.read_text().splitlines()
    rows[3] = rows[3].replace(rows[3].split(",")[1], "old", 1)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(rows) + "\n")
    done = run_app(bad, tmp_path / "out.csv")
    assert done.returncode == 2
    assert "line 4" in done.stderr
    assert not (tmp_path / "out.csv").exists()


def test_wrong_argument_count_prints_usage():
    done = run_app("only-one")
    assert done.returncode == 2 and "usage" in done.stderr


def test_serve_answers_predict_with_the_same_numbers_as_the_batch_app(tmp_path):
    import http.client
    import os
    import socket
    import time

    out = tmp_path / "predictions.csv"
    assert run_app(HOST_DATA, out).returncode == 0
    batch = read_rows(out)[:3]
    rows = read_rows(HOST_DATA)[:3]
    patients = [{k: (v if k == "patient_id" else float(v)) for k, v in r.items()} for r in rows]
    path = f"/tmp/sample-serve-{os.getpid()}.sock"
    server = subprocess.Popen([sys.executable, str(APP / "serve.py")], cwd=tmp_path,
                              env={**os.environ, "SEALED_SERVICE_SOCKET": path,
                                   "PYTHONDONTWRITEBYTECODE": "1"})
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(path):
            assert time.monotonic() < deadline and server.poll() is None, "serve.py did not listen"
            time.sleep(0.05)
        conn = http.client.HTTPConnection("localhost")
        conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.sock.connect(path)
        conn.request("POST", "/predict", body=json.dumps({"patients": patients}),
                     headers={"Content-Type": "application/json"})
        answer = json.loads(conn.getresponse().read())
        conn.request("POST", "/predict", body=b'{"patients": [{"age": "old"}]}')
        refused = conn.getresponse()
        assert refused.status == 400 and b"lacks" in refused.read()
    finally:
        server.kill()
        server.wait()
        if os.path.exists(path):
            os.unlink(path)
    served = [(p["patient_id"], f"{p['risk_probability']:.4f}", str(p["high_risk"]))
              for p in answer["predictions"]]
    assert served == [(b["patient_id"], b["risk_probability"], b["high_risk"]) for b in batch]
