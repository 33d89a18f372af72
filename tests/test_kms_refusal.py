"""When KMS refuses the enclave's attested Decrypt, the host learns KMS's own reason.

The whole path runs for real: the runtime server with its production key provider (attested
KMS through the NSM), the simulated NSM and the local KMS in threads, a bundle sealed with the
Third Party's command, and the host's `run`, `status` and `logs` at the command line.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

import envelope_encryptor
from client.cli import main
from client.errors import ExitStatus
from enclave.config import RuntimeConfig
from enclave.kms_wiring import attested_kms_key_provider_factory
from enclave.policy import ImagePolicy
from enclave.server import make_server
from tests.runtime_harness import traversable_dir
from tests.sim_support import (
    HOST_KEY,
    HOST_SESSION_ARN,
    OWNER_KEY,
    kms_client,
    running_kms,
    running_nsm,
    short_socket_dir,
)

PCRS = {0: bytes.fromhex("11" * 48), 1: bytes(48), 2: bytes(48)}
OTHER_IMAGE = "22" * 48  # the key trusts this image, not the one the NSM attests


@pytest.fixture
def refusing_setup(tmp_path, monkeypatch):
    """A runtime whose KMS key trusts another image; yields (socket path, bundle path)."""
    state = tmp_path / "state"
    with short_socket_dir() as sockets, running_kms(state) as url, \
            running_nsm(sockets / "nsm.sock", state, PCRS) as nsm:
        policy = {"Version": "2012-10-17", "Statement": [
            {"Sid": "Owner", "Effect": "Allow", "Principal": {"AWS": "111111111111"},
             "Action": "kms:*", "Resource": "*"},
            {"Sid": "HostAttestedOnly", "Effect": "Allow", "Principal": {"AWS": HOST_SESSION_ARN},
             "Action": "kms:Decrypt", "Resource": "*",
             "Condition": {"StringEqualsIgnoreCase": {
                 "kms:RecipientAttestation:ImageSha384": OTHER_IMAGE}}},
        ]}
        key_arn = kms_client(url, OWNER_KEY).create_key(Policy=json.dumps(policy))[
            "KeyMetadata"]["Arn"]
        bundle = seal_sample(tmp_path, url, key_arn, monkeypatch)

        # The image pins this key and app: KMS, not the image policy, is what refuses here.
        image_policy = ImagePolicy(region="us-east-1", kms_key_arns=(key_arn,),
                                   app_ids=("demo-app",))
        base = traversable_dir(tmp_path)
        config = RuntimeConfig(exchange_root=base / "exchange", private_root=base / "priv",
                               kms_endpoint=url, image_policy=image_policy)
        runtime_socket = sockets / "rt.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(runtime_socket))
        server = make_server(sock, config=config, nsm=nsm,
                             key_provider_factory=attested_kms_key_provider_factory(config, nsm))
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True)
        thread.start()
        # The host's own credentials (the simulated host role), as `run` sends them.
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", HOST_KEY)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-checked")
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        monkeypatch.setenv("SEALED_STATE_DIR", str(tmp_path / "host-state"))
        monkeypatch.setenv("SEALED_SIM_DIR", str(tmp_path / "no-sim"))
        monkeypatch.setenv("PATH", str(tmp_path / "nobin"))
        try:
            yield str(runtime_socket), bundle
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


def seal_sample(tmp_path: Path, url: str, key_arn: str, monkeypatch) -> Path:
    app = tmp_path / "app"
    app.mkdir()
    (app / "manifest.json").write_text(json.dumps({
        "format": 1, "app_id": "demo-app", "app_version": "1.0.0",
        "entrypoints": {"run": {"command": ["python3", "main.py"]}}}))
    (app / "main.py").write_text("print('hi')\n")
    with monkeypatch.context() as m:
        for name, value in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": OWNER_KEY,
                            "AWS_SECRET_ACCESS_KEY": "not-checked",
                            "AWS_REGION": "us-east-1"}.items():
            m.setenv(name, value)
        bundle = tmp_path / "app.sealed"
        assert envelope_encryptor.main(["encrypt", "-d", str(app), "-k", key_arn,
                                        "-o", str(bundle)]) == 0
    return bundle


def test_kms_refusal_reaches_run_status_and_logs(refusing_setup, capsys):
    runtime_socket, bundle = refusing_setup
    target = ["--socket", runtime_socket]
    assert main([*target, "push", str(bundle)]) == 0
    capsys.readouterr()

    code = main([*target, "run", "-f", "app.sealed", "-s", "run"])
    err = capsys.readouterr().err
    assert code == ExitStatus.ENCLAVE_ERROR
    assert "AccessDeniedException: " in err and "kms:Decrypt" in err
    assert "Unable to decrypt" not in err

    assert main([*target, "--json", "status"]) == 0
    run = json.loads(capsys.readouterr().out)["runs"][0]
    assert run["error"].count("AccessDeniedException: ") == 1
    assert main([*target, "status", run["id"]]) == 0
    assert "AccessDeniedException: " in capsys.readouterr().out

    assert main([*target, "logs"]) == 0
    logs = capsys.readouterr().out
    assert f"run {run['id']}" in logs and "AccessDeniedException" in logs
