"""What the user reads when a command cannot do what was asked: exit codes and next steps.

Each message is checked at the command line, against the real runtime server where one is
involved, because that is where a misleading hint sends the user somewhere wrong.
"""

from __future__ import annotations

import pytest

from client.cli import main
from client.errors import ExitStatus
from tests.runtime_harness import start_runtime, stop_runtime
from tests.test_aws_imds import FakeImds


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SEALED_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SEALED_SIM_DIR", str(tmp_path / "sim"))
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))  # no nitro-cli, no vsock-proxy


@pytest.fixture
def real_runtime(tmp_path):
    runtime = start_runtime(tmp_path)
    yield runtime
    stop_runtime(runtime)


def test_status_of_unknown_run_names_a_command_not_an_api_route(real_runtime, capsys):
    code = main(["--socket", real_runtime.socket_path, "status", "deadbeef"])
    err = capsys.readouterr().err
    assert code == ExitStatus.NOT_FOUND
    assert "deadbeef" in err and "`python -m client status`" in err
    assert "/v1/" not in err


def test_status_cancel_without_run_id_is_a_usage_error(real_runtime, capsys):
    code = main(["--socket", real_runtime.socket_path, "status", "--cancel"])
    err = capsys.readouterr().err
    assert code == ExitStatus.USAGE
    assert "--cancel needs the id of the run" in err


def test_proxy_off_ec2_says_not_on_an_ec2_instance(tmp_path, monkeypatch, capsys):
    # Off EC2, whatever answers at the metadata address refuses the token (here with 403).
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_ACCESS_KEY_ID",
                 "AWS_EC2_METADATA_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    imds = FakeImds(v1_only=True)
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", imds.endpoint)
    try:
        code = main(["proxy", "-s", "kms", "--config", str(tmp_path / "vsock-proxy.yaml")])
    finally:
        imds.close()
    err = capsys.readouterr().err
    assert code == ExitStatus.AWS_ERROR
    assert err.startswith("error: not on an EC2 instance, or its metadata service is unreachable")
    assert "--region" in err


@pytest.mark.parametrize("option", ["--host-role-arn", "--third-party-arn"])
def test_simulate_up_refuses_a_principal_that_is_not_an_arn(option, tmp_path, capsys):
    code = main(["simulate", "up", option, "notanarn"])
    if code == 0:  # accepted: stop what it started before failing
        main(["simulate", "down"])
    assert code == ExitStatus.USAGE
    assert "'notanarn' is not an IAM principal ARN" in capsys.readouterr().err
    assert not (tmp_path / "sim").exists()  # refused before anything started


@pytest.mark.parametrize("arn", [
    "arn:aws:iam::222222222222:role/sealed-enclave-host-example",
    "arn:aws:sts::222222222222:assumed-role/EnclaveHostRole/i-0123456789abcdef0",
    "arn:aws:iam::111111111111:root",
])
def test_principal_arns_a_key_policy_names_are_accepted(arn):
    from client.sim.principals import principal_arn

    assert principal_arn(arn) == arn


@pytest.mark.parametrize("listening", [False, True], ids=["no-socket-file", "nobody-listening"])
def test_unreachable_socket_is_not_found_and_hints_another_command(listening, tmp_path, capsys):
    import socket

    path = tmp_path / "rt.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if listening:
        stale.bind(str(path))  # bound, never listening: connect() is refused
    try:
        code = main(["--socket", str(path), "status"])
    finally:
        stale.close()
    err = capsys.readouterr().err
    assert code == ExitStatus.NOT_FOUND  # the README's "no enclave or simulation"
    assert f"no enclave runtime answers at unix:{path}" in err
    assert "`python -m client simulate up`" in err
    assert "`python -m client status`" not in err  # the command that just failed


@pytest.fixture
def host_credentials(monkeypatch):
    """`run` sends the host's credentials; explicit ones keep IMDS out of the test."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAHOSTTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "host-secret")
    monkeypatch.setenv("AWS_REGION", "us-east-1")


def _sealed_bundle_in_inbox(runtime) -> None:
    runtime.inbox.mkdir(parents=True, exist_ok=True)
    (runtime.inbox / "app.sealed").write_bytes(b"not really sealed: the run fails later")


def test_no_wait_quiet_prints_the_run_id_alone(real_runtime, host_credentials, capsys):
    _sealed_bundle_in_inbox(real_runtime)
    code = main(["--socket", real_runtime.socket_path, "run", "-f", "app.sealed", "-s", "predict",
                 "--no-wait", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    run_id = out.strip()
    assert out == run_id + "\n" and " " not in run_id
    assert main(["--socket", real_runtime.socket_path, "status", run_id]) == 0


def test_no_wait_json_carries_the_run_id(real_runtime, host_credentials, capsys):
    import json

    _sealed_bundle_in_inbox(real_runtime)
    code = main(["--socket", real_runtime.socket_path, "--json", "run", "-f", "app.sealed", "-s",
                 "predict", "--no-wait"])
    assert code == 0
    started = json.loads(capsys.readouterr().out)
    assert set(started) == {"id", "state"} and started["id"]
