"""`simulate up|status|down` and the runbook round trip against the real runtime, NSM and KMS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from client import simstate
from client.cli import main
from client.errors import ExitStatus

PROJECT_ROOT = Path(__file__).resolve().parent.parent
APP = PROJECT_ROOT / "src" / "sample-inference"
PATIENTS = PROJECT_ROOT / "samples" / "host-data" / "patients.csv"


@pytest.fixture(scope="module")
def simulation(tmp_path_factory, third_party_template_path):
    """One simulation for the module: starting three processes is the slow part.

    `simulate up` creates the enclave key with the synthesized ThirdPartyStack's key policy,
    pins it in the image policy and allows the simulated image's PCR0 on it.
    """
    state_dir = tmp_path_factory.mktemp("sim")
    old = {k: os.environ.get(k) for k in ("SEALED_SIM_DIR", "SEALED_STATE_DIR", "PATH")}
    os.environ["SEALED_SIM_DIR"] = str(state_dir)
    os.environ["SEALED_STATE_DIR"] = str(state_dir / "host")
    os.environ["PATH"] = "/usr/bin:/bin"  # no nitro-cli: the simulation is the target
    try:
        assert main(["simulate", "up", "--template", str(third_party_template_path)]) == 0
        yield simstate.load_state(state_dir)
    finally:
        main(["simulate", "down"])
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def kms_client(state, who):
    principal = state["principals"][who]
    return boto3.client("kms", region_name=state["region"], endpoint_url=state["kms"]["endpoint"],
                        aws_access_key_id=principal["access_key_id"],
                        aws_secret_access_key=principal["secret_access_key"],
                        aws_session_token=principal["session_token"])


def enclave_key(state):
    return state["enclave_key"]["arn"]


def create_other_key(state, image_sha384):
    """A key of the host's own making: its policy lets the host role do anything."""
    policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "Admin", "Effect": "Allow",
         "Principal": {"AWS": [state["principals"]["third_party"]["arn"],
                               state["principals"]["host"]["arn"]]},
         "Action": "kms:*", "Resource": "*"},
    ]}
    key = kms_client(state, "third_party").create_key(Policy=json.dumps(policy))
    return key["KeyMetadata"]["Arn"]


def kms_request_count(state) -> int:
    """Requests the local KMS answered, read from its own log."""
    log = Path(state["kms"]["log"]).read_text()
    return sum(1 for line in log.splitlines() if line.startswith("request "))


def seal(state, key_arn, out):
    seal_dir(state, key_arn, APP, out)


def test_status_reports_running_components(simulation, capsys):
    assert main(["--json", "simulate", "status"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["running"] and all(data["components"].values())
    assert "secret_access_key" not in json.dumps(data)  # never printed


def test_second_up_is_harmless(simulation):
    assert main(["simulate", "up"]) == 0
    assert simstate.load_state()["runtime"]["pid"] == simulation["runtime"]["pid"]


def test_attest_verifies_the_simulated_enclave_when_told_it_is_the_simulation(simulation):
    assert main(["attest", "--simulation"]) == 0


def test_attest_never_falls_back_to_the_development_root(simulation, capsys):
    """No enclave found, so the simulation is the target: its root is still not trusted unasked."""
    assert main(["attest"]) == ExitStatus.VERIFICATION_FAILED
    assert "--simulation" in capsys.readouterr().err


def test_attest_with_another_measurement_fails(simulation):
    assert main(["attest", "--simulation", "--expect-pcr0", "00" * 47 + "01"]) == \
        ExitStatus.VERIFICATION_FAILED


def test_push_run_pull_round_trip(simulation, tmp_path, capsys):
    key_arn = enclave_key(simulation)
    bundle = tmp_path / "app.sealed"
    seal(simulation, key_arn, bundle)
    assert main(["push", str(bundle)]) == 0
    assert main(["push", str(PATIENTS), "patients.csv"]) == 0
    capsys.readouterr()
    code = main(["run", "-f", "app.sealed", "-s", "predict", "-a", "patients.csv scores.csv 0.3"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out.strip()  # the manifest allows stdout: the one-line summary
    assert main(["pull", "scores.csv", str(tmp_path / "scores.csv")]) == 0
    lines = (tmp_path / "scores.csv").read_text().splitlines()
    assert len(lines) > 1


def test_app_failure_exits_with_the_apps_own_code(simulation, tmp_path, capsys):
    key_arn = enclave_key(simulation)
    bundle = tmp_path / "app.sealed"
    seal(simulation, key_arn, bundle)
    (tmp_path / "bad.csv").write_text("not,a,patient,file\n1,2,3,4\n")
    assert main(["push", str(bundle), "app2.sealed"]) == 0
    assert main(["push", str(tmp_path / "bad.csv")]) == 0
    code = main(["run", "-f", "app2.sealed", "-s", "predict", "-a", "bad.csv bad-out.csv"])
    assert code == 2  # ml_inference.py's own status for bad input
    assert "exited with status 2" in capsys.readouterr().err


def test_entrypoint_not_in_manifest_is_refused(simulation, tmp_path):
    key_arn = enclave_key(simulation)
    bundle = tmp_path / "app.sealed"
    seal(simulation, key_arn, bundle)
    assert main(["push", str(bundle), "app3.sealed"]) == 0
    code = main(["run", "-f", "app3.sealed", "-s", "train", "-a", "x"])
    assert code == ExitStatus.ENCLAVE_ERROR


def test_host_cannot_decrypt_directly(simulation):
    """The host role's own KMS Decrypt, without an attested Recipient, is denied."""
    from botocore.exceptions import ClientError

    key_arn = enclave_key(simulation)
    blob = kms_client(simulation, "third_party").encrypt(KeyId=key_arn, Plaintext=b"secret")
    with pytest.raises(ClientError):
        kms_client(simulation, "host").decrypt(CiphertextBlob=blob["CiphertextBlob"])


def test_down_stops_everything_and_status_says_so(tmp_path, monkeypatch,
                                                  third_party_template_path):
    monkeypatch.setenv("SEALED_SIM_DIR", str(tmp_path / "sim2"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert main(["simulate", "up", "--template", str(third_party_template_path)]) == 0
    state = simstate.load_state()
    assert main(["simulate", "down"]) == 0
    for name in ("runtime", "nsm", "kms"):
        assert not simstate.pid_alive(state[name]["pid"])
    assert not Path(state["runtime"]["socket"]).exists()
    assert main(["simulate", "status"]) == ExitStatus.NOT_FOUND
    assert main(["status"]) == ExitStatus.NOT_FOUND


def test_stop_component_leaves_a_record_without_a_numeric_pid_alone():
    from client.sim.processes import stop_component

    # A hand-edited or corrupt state file must not crash `simulate down` or signal anything.
    assert stop_component({"pid": str(os.getpid())}, "enclave") is False
    assert stop_component({}, "enclave") is False


# -- a hostile host, a compromised app and forged receipts, end to end --------------------------

HOSTILE_APP = '''\
import json, os, socket, sys

results = {"uid": os.getuid()}
for target in open(sys.argv[1]).read().split():
    try:
        if target.endswith(".sock"):
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(target)
            results[target] = "connected"
        elif os.path.isdir(target):
            results[target] = sorted(os.listdir(target))
        else:
            with open(target, "rb") as f:
                results[target] = f.read(64).decode("latin-1")
    except OSError as exc:
        results[target] = "denied: " + type(exc).__name__
with open(sys.argv[2], "w") as f:
    json.dump(results, f)
'''


def seal_dir(state, key_arn, source, out, principal="third_party"):
    who = state["principals"][principal]
    env = dict(os.environ, AWS_ENDPOINT_URL=state["kms"]["endpoint"],
               AWS_ACCESS_KEY_ID=who["access_key_id"],
               AWS_SECRET_ACCESS_KEY=who["secret_access_key"],
               AWS_SESSION_TOKEN=who["session_token"], AWS_REGION=state["region"])
    subprocess.run([sys.executable, "envelope_encryptor.py", "encrypt", "-d", str(source),
                    "-k", key_arn, "-o", str(out)], cwd=PROJECT_ROOT, env=env, check=True,
                   capture_output=True, timeout=120)


def hostile_source(tmp_path, app_id="sample-inference"):
    source = tmp_path / "hostile-src"
    source.mkdir()
    (source / "app.py").write_text(HOSTILE_APP)
    (source / "manifest.json").write_text(json.dumps({
        "format": 1, "app_id": app_id, "app_version": "1.0.0",
        "entrypoints": {"predict": {"command": ["python3", "app.py"], "args": [
            {"name": "targets", "kind": "input"}, {"name": "report", "kind": "output"}]}},
        "output": {"stdout": False, "stderr": False, "max_bytes": 1024},
        "time_limit_seconds": 30, "concurrent_runs": 1}))
    return source


def test_host_sealed_bundle_is_refused_with_no_request_reaching_kms(simulation, tmp_path,
                                                                    capsys):
    """The attack that gave the plaintext away: the host seals an app of its own under a key of
    its own and runs it in the third party's enclave. The image refuses it from the header."""
    own_key = create_other_key(simulation, "ab" * 48)
    bundle = tmp_path / "host.sealed"
    seal_dir(simulation, own_key, hostile_source(tmp_path), bundle, principal="host")
    (tmp_path / "targets.txt").write_text("/etc/hostname")
    assert main(["push", str(bundle), "host.sealed"]) == 0
    assert main(["push", str(tmp_path / "targets.txt"), "targets.txt"]) == 0
    before = kms_request_count(simulation)
    capsys.readouterr()
    code = main(["run", "-f", "host.sealed", "-s", "predict", "--", "targets.txt", "r.json"])
    assert code == ExitStatus.ENCLAVE_ERROR
    assert "this image trusts only aws-kms keys" in capsys.readouterr().err
    assert kms_request_count(simulation) == before
    assert main(["pull", "r.json", str(tmp_path / "r.json")]) == ExitStatus.NOT_FOUND


def test_bundle_of_an_app_the_image_does_not_pin_is_refused_before_kms(simulation, tmp_path,
                                                                       capsys):
    bundle = tmp_path / "other-app.sealed"
    seal_dir(simulation, enclave_key(simulation), hostile_source(tmp_path, "other-app"), bundle)
    assert main(["push", str(bundle), "other-app.sealed"]) == 0
    before = kms_request_count(simulation)
    capsys.readouterr()
    code = main(["run", "-f", "other-app.sealed", "-s", "predict", "--", "t.txt", "r.json"])
    assert code == ExitStatus.ENCLAVE_ERROR
    assert "this image runs only sample-inference" in capsys.readouterr().err
    assert kms_request_count(simulation) == before


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: per-run users for apps")
def test_compromised_app_cannot_reach_the_nsm_the_runtime_or_the_exchange(simulation, tmp_path):
    runtime_pid = simulation["runtime"]["pid"]
    state_dir = Path(simulation["state_dir"])
    targets = [simulation["nsm"]["socket"], f"/proc/{runtime_pid}/environ",
               f"/proc/{runtime_pid}/mem", str(state_dir), str(state_dir / "exchange" / "inbox"),
               simulation["runtime"]["private_root"]]
    (tmp_path / "targets.txt").write_text(" ".join(targets))
    bundle = tmp_path / "compromised.sealed"
    seal_dir(simulation, enclave_key(simulation), hostile_source(tmp_path), bundle)
    assert main(["push", str(bundle), "compromised.sealed"]) == 0
    assert main(["push", str(tmp_path / "targets.txt"), "targets.txt"]) == 0
    assert main(["run", "-f", "compromised.sealed", "-s", "predict", "--", "targets.txt",
                 "report.json"]) == 0
    assert main(["pull", "report.json", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report.pop("uid") != 0
    assert report == {target: "denied: PermissionError" for target in targets}


def _receipt_for_a_real_run(simulation, tmp_path):
    bundle = tmp_path / "app.sealed"
    seal(simulation, enclave_key(simulation), bundle)
    assert main(["push", str(bundle), "receipt-app.sealed"]) == 0
    assert main(["push", str(PATIENTS), "patients.csv"]) == 0
    assert main(["--json", "run", "-f", "receipt-app.sealed", "-s", "predict", "--",
                 "patients.csv", "scored.csv"]) == 0
    runs = [r for r in _runs() if r["bundle"] == "receipt-app.sealed"]
    receipt_file = tmp_path / "receipt.json"
    assert main(["receipt", runs[-1]["id"], "-o", str(receipt_file)]) == 0
    assert main(["pull", "scored.csv", str(tmp_path / "scored.csv")]) == 0
    return receipt_file


def _runs():
    from client.target import resolve_target

    class Args:
        cid = port = socket = None
        timeout = 10.0
    with resolve_target(Args()).client(timeout=10) as client:
        return client.list_runs()


def test_receipt_of_a_real_run_verifies_with_the_files(simulation, tmp_path):
    receipt_file = _receipt_for_a_real_run(simulation, tmp_path)
    pcr0 = simulation["measurements"]["PCR0"]
    assert main(["verify-receipt", str(receipt_file), "--expect-pcr", f"0={pcr0}",
                 "--root", simulation["dev_root"], "--input", f"patients.csv={PATIENTS}",
                 "--output", f"scored.csv={tmp_path / 'scored.csv'}"]) == 0
    # A file that is not what the run read does not match its receipt.
    (tmp_path / "fake.csv").write_text("id,age\n1,2\n")
    assert main(["verify-receipt", str(receipt_file), "--expect-pcr", f"0={pcr0}",
                 "--root", simulation["dev_root"], "--input",
                 f"patients.csv={tmp_path / 'fake.csv'}"]) == ExitStatus.VERIFICATION_FAILED


def test_altered_receipt_does_not_verify(simulation, tmp_path):
    receipt_file = _receipt_for_a_real_run(simulation, tmp_path)
    data = json.loads(receipt_file.read_text())
    data["receipt"]["outputs"]["scored.csv"] = "00" * 32
    receipt_file.write_text(json.dumps(data))
    assert main(["verify-receipt", str(receipt_file), "--expect-pcr",
                 f"0={simulation['measurements']['PCR0']}", "--root",
                 simulation["dev_root"]]) == ExitStatus.VERIFICATION_FAILED


def test_receipt_forged_through_a_host_attestation_request_does_not_verify(simulation, tmp_path):
    """The host invents a receipt and asks the enclave to sign its binding as host data."""
    import base64
    import secrets

    from client.target import resolve_target
    from enclave.receipt import receipt_user_data

    forged = {"format": 2, "run_id": "feedfacefeedface", "app_id": "sample-inference",
              "app_version": "1.0.0", "bundle": {"path": "x", "sha256": "00" * 32},
              "entrypoint": "predict", "args": [], "inputs": {}, "outputs": {"r.csv": "11" * 32},
              "state": "succeeded", "exit_code": 0}
    nonce = secrets.token_bytes(32)

    class Args:
        cid = port = socket = None
        timeout = 10.0
    for user_data in (receipt_user_data(forged), receipt_user_data(forged)[-48:]):
        with resolve_target(Args()).client(timeout=10) as client:
            document = client.attestation(nonce, user_data)
        path = tmp_path / "forged.json"
        path.write_text(json.dumps({"format": 1, "nonce": nonce.hex(), "receipt": forged,
                                    "document": base64.b64encode(document).decode()}))
        assert main(["verify-receipt", str(path), "--expect-pcr",
                     f"0={simulation['measurements']['PCR0']}", "--root",
                     simulation["dev_root"]]) == ExitStatus.VERIFICATION_FAILED


def test_verify_attestation_without_an_expectation_fails_closed(simulation, tmp_path, capsys):
    document = tmp_path / "doc.cbor"
    assert main(["attest", "--simulation", "--save", str(document)]) == 0
    capsys.readouterr()
    assert main(["verify-attestation", str(document), "--root",
                 simulation["dev_root"]]) == ExitStatus.VERIFICATION_FAILED
    assert "--expect-pcr" in capsys.readouterr().err
    assert main(["verify-attestation", str(document), "--root", simulation["dev_root"],
                 "--any-image"]) == 0
