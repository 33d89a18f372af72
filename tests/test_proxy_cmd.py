"""`proxy -s kms`: vsock-proxy started detached with the allow list, tracked by a pid file."""

from __future__ import annotations

import json
import os
import time

import pytest

from client.cli import main
from client.errors import ExitStatus
from client.simstate import pid_alive
from tests.fake_tools import calls, install_tool, on_path

SLEEPER = "time.sleep(60)\n"


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("SEALED_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    on_path(monkeypatch, tmp_path / "bin")
    config = tmp_path / "vsock-proxy.yaml"
    config.write_text("allowlist:\n- {address: kms.eu-west-1.amazonaws.com, port: 443}\n"
                      "- {address: kms.us-east-1.amazonaws.com, port: 443}\n")
    yield tmp_path, config
    record = tmp_path / "state" / "proxy-kms.json"
    if record.exists():  # never leave a fake proxy running
        pid = json.loads(record.read_text())["pid"]
        if pid_alive(pid):
            os.kill(pid, 9)


def proxy(config, *extra):
    return main(["proxy", "-s", "kms", "--config", str(config), *extra])


def test_start_runs_vsock_proxy_for_the_regional_kms_endpoint(env, monkeypatch):
    tmp_path, config = env
    install_tool(tmp_path / "bin", "vsock-proxy", SLEEPER)
    monkeypatch.chdir(tmp_path)
    assert proxy(config) == 0
    call = calls(tmp_path / "bin", "vsock-proxy")[0]
    assert call["argv"] == ["8000", "kms.eu-west-1.amazonaws.com", "443", "--config",
                            str(config)]
    assert call["cwd"] == "/"  # not tied to where the command was typed
    record = json.loads((tmp_path / "state" / "proxy-kms.json").read_text())
    assert pid_alive(record["pid"])


def test_region_option_selects_the_endpoint(env):
    tmp_path, config = env
    install_tool(tmp_path / "bin", "vsock-proxy", SLEEPER)
    assert main(["--region", "us-east-1", "proxy", "-s", "kms", "--config", str(config)]) == 0
    assert calls(tmp_path / "bin", "vsock-proxy")[0]["argv"][1] == "kms.us-east-1.amazonaws.com"


def test_second_start_reports_the_running_proxy(env, capsys):
    tmp_path, config = env
    install_tool(tmp_path / "bin", "vsock-proxy", SLEEPER)
    assert proxy(config) == 0
    assert proxy(config) == 0
    assert len(calls(tmp_path / "bin", "vsock-proxy")) == 1
    assert "already running" in capsys.readouterr().out


def test_status_and_stop(env, capsys):
    tmp_path, config = env
    install_tool(tmp_path / "bin", "vsock-proxy", SLEEPER)
    proxy(config)
    pid = json.loads((tmp_path / "state" / "proxy-kms.json").read_text())["pid"]
    capsys.readouterr()
    assert proxy(config, "--status", "--json") == 0
    assert json.loads(capsys.readouterr().out)["running"] is True
    assert proxy(config, "--stop") == 0
    deadline = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid)
    assert proxy(config, "--status") == ExitStatus.NOT_FOUND


def test_endpoint_missing_from_allow_list_is_refused(env):
    tmp_path, config = env
    install_tool(tmp_path / "bin", "vsock-proxy", SLEEPER)
    assert main(["--region", "ap-south-1", "proxy", "-s", "kms", "--config", str(config)]) == \
        ExitStatus.USAGE
    assert calls(tmp_path / "bin", "vsock-proxy") == []


def test_missing_vsock_proxy_is_not_found(env, capsys):
    _, config = env
    assert proxy(config) == ExitStatus.NOT_FOUND
    assert "aws-nitro-enclaves-cli" in capsys.readouterr().err


def test_proxy_that_dies_at_once_is_reported_with_its_message(env, capsys):
    tmp_path, config = env
    install_tool(tmp_path / "bin", "vsock-proxy",
                 "print('Error: address already in use', file=sys.stderr)\nsys.exit(1)\n")
    assert proxy(config) == ExitStatus.ERROR
    assert "address already in use" in capsys.readouterr().err


def test_stop_never_signals_a_process_that_is_not_vsock_proxy(env):
    tmp_path, config = env
    state = tmp_path / "state"
    state.mkdir()
    (state / "proxy-kms.json").write_text(json.dumps({"pid": os.getpid()}))
    assert proxy(config, "--stop") == 0  # our own pid: must survive
    assert pid_alive(os.getpid())


def test_unknown_service_is_usage_error(env):
    _, config = env
    assert main(["proxy", "-s", "s3", "--config", str(config)]) == ExitStatus.USAGE
