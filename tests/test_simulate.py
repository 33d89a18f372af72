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
def simulation(tmp_path_factory):
    """One simulation for the module: starting three processes is the slow part."""
    state_dir = tmp_path_factory.mktemp("sim")
    old = {k: os.environ.get(k) for k in ("SEALED_SIM_DIR", "SEALED_STATE_DIR", "PATH")}
    os.environ["SEALED_SIM_DIR"] = str(state_dir)
    os.environ["SEALED_STATE_DIR"] = str(state_dir / "host")
    os.environ["PATH"] = "/usr/bin:/bin"  # no nitro-cli: the simulation is the target
    try:
        assert main(["simulate", "up"]) == 0
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


def create_enclave_key(state, image_sha384):
    """The third party's key: the host may Decrypt only for an attested image."""
    policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "Admin", "Effect": "Allow",
         "Principal": {"AWS": state["principals"]["third_party"]["arn"]},
         "Action": "kms:*", "Resource": "*"},
        {"Sid": "HostDecryptAttestedOnly", "Effect": "Allow",
         "Principal": {"AWS": state["principals"]["host"]["arn"]},
         "Action": "kms:Decrypt", "Resource": "*",
         "Condition": {"StringEqualsIgnoreCase": {
             "kms:RecipientAttestation:ImageSha384": image_sha384}}},
    ]}
    key = kms_client(state, "third_party").create_key(Policy=json.dumps(policy))
    return key["KeyMetadata"]["Arn"]


def seal(state, key_arn, out):
    principal = state["principals"]["third_party"]
    env = dict(os.environ, AWS_ENDPOINT_URL=state["kms"]["endpoint"],
               AWS_ACCESS_KEY_ID=principal["access_key_id"],
               AWS_SECRET_ACCESS_KEY=principal["secret_access_key"],
               AWS_SESSION_TOKEN=principal["session_token"], AWS_REGION=state["region"])
    subprocess.run([sys.executable, "envelope_encryptor.py", "encrypt", "-d", str(APP),
                    "-k", key_arn, "-o", str(out)], cwd=PROJECT_ROOT, env=env, check=True,
                   capture_output=True, timeout=120)


def test_status_reports_running_components(simulation, capsys):
    assert main(["--json", "simulate", "status"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["running"] and all(data["components"].values())
    assert "secret_access_key" not in json.dumps(data)  # never printed


def test_second_up_is_harmless(simulation):
    assert main(["simulate", "up"]) == 0
    assert simstate.load_state()["runtime"]["pid"] == simulation["runtime"]["pid"]


def test_attest_verifies_the_simulated_enclave(simulation):
    assert main(["attest"]) == 0


def test_attest_with_another_measurement_fails(simulation):
    assert main(["attest", "--expect-pcr0", "00" * 47 + "01"]) == ExitStatus.VERIFICATION_FAILED


def test_push_run_pull_round_trip(simulation, tmp_path, capsys):
    key_arn = create_enclave_key(simulation, simulation["measurements"]["PCR0"])
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
    key_arn = create_enclave_key(simulation, simulation["measurements"]["PCR0"])
    bundle = tmp_path / "app.sealed"
    seal(simulation, key_arn, bundle)
    (tmp_path / "bad.csv").write_text("not,a,patient,file\n1,2,3,4\n")
    assert main(["push", str(bundle), "app2.sealed"]) == 0
    assert main(["push", str(tmp_path / "bad.csv")]) == 0
    code = main(["run", "-f", "app2.sealed", "-s", "predict", "-a", "bad.csv bad-out.csv"])
    assert code == 2  # ml_inference.py's own status for bad input
    assert "exited with status 2" in capsys.readouterr().err


def test_entrypoint_not_in_manifest_is_refused(simulation, tmp_path):
    key_arn = create_enclave_key(simulation, simulation["measurements"]["PCR0"])
    bundle = tmp_path / "app.sealed"
    seal(simulation, key_arn, bundle)
    assert main(["push", str(bundle), "app3.sealed"]) == 0
    code = main(["run", "-f", "app3.sealed", "-s", "train", "-a", "x"])
    assert code == ExitStatus.ENCLAVE_ERROR


def test_run_of_bundle_for_another_image_is_refused_by_kms(simulation, tmp_path, capsys):
    key_arn = create_enclave_key(simulation, "ab" * 48)
    bundle = tmp_path / "other.sealed"
    seal(simulation, key_arn, bundle)
    assert main(["push", str(bundle)]) == 0
    code = main(["run", "-f", "other.sealed", "-s", "predict", "-a", "patients.csv s2.csv"])
    assert code == ExitStatus.ENCLAVE_ERROR
    assert main(["pull", "s2.csv", str(tmp_path / "s2.csv")]) == ExitStatus.NOT_FOUND


def test_host_cannot_decrypt_directly(simulation):
    """The host role's own KMS Decrypt, without an attested Recipient, is denied."""
    from botocore.exceptions import ClientError

    key_arn = create_enclave_key(simulation, simulation["measurements"]["PCR0"])
    blob = kms_client(simulation, "third_party").encrypt(KeyId=key_arn, Plaintext=b"secret")
    with pytest.raises(ClientError):
        kms_client(simulation, "host").decrypt(CiphertextBlob=blob["CiphertextBlob"])


def test_down_stops_everything_and_status_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("SEALED_SIM_DIR", str(tmp_path / "sim2"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert main(["simulate", "up"]) == 0
    state = simstate.load_state()
    assert main(["simulate", "down"]) == 0
    for name in ("runtime", "nsm", "kms"):
        assert not simstate.pid_alive(state[name]["pid"])
    assert not Path(state["runtime"]["socket"]).exists()
    assert main(["simulate", "status"]) == ExitStatus.NOT_FOUND
    assert main(["status"]) == ExitStatus.NOT_FOUND


def test_stop_component_leaves_a_record_without_a_numeric_pid_alone():
    from client.commands.simulate import stop_component

    # A hand-edited or corrupt state file must not crash `simulate down` or signal anything.
    assert stop_component({"pid": str(os.getpid())}, "enclave") is False
    assert stop_component({}, "enclave") is False
