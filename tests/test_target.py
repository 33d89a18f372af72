"""How a command finds its runtime: --socket, --cid, nitro-cli, then the simulation."""

from __future__ import annotations

import argparse
import json
import os
import socket

import pytest

from client import simstate
from client.errors import ClientError, NotFoundError, UsageError
from client.target import resolve_target
from client.transport import UnixAddress, VsockAddress
from tests.fake_tools import install_tool, on_path

ENCLAVE = {"EnclaveName": "app", "EnclaveID": "i-1-enc-1", "ProcessID": 10, "EnclaveCID": 16,
           "NumberOfCPUs": 2, "MemoryMiB": 4096, "State": "RUNNING", "Flags": "NONE"}


def args(**kw):
    return argparse.Namespace(**{"socket": None, "cid": None, "port": None, **kw})


@pytest.fixture(autouse=True)
def no_tools(tmp_path, monkeypatch):
    monkeypatch.setenv("SEALED_SIM_DIR", str(tmp_path / "sim"))
    on_path(monkeypatch, tmp_path / "bin")


def fake_nitro_cli(tmp_path, enclaves, exit_code=0):
    install_tool(tmp_path / "bin", "nitro-cli",
                 f"print({json.dumps(json.dumps(enclaves))})\nsys.exit({exit_code})\n")


def running_simulation(tmp_path):
    sim = tmp_path / "sim"
    sim.mkdir()
    path = sim / "runtime.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    state = {"runtime": {"socket": str(path), "pid": os.getpid()}, "region": "us-east-1"}
    simstate.save_state(state, sim)
    return listener, path


def test_socket_option_wins():
    target = resolve_target(args(socket="/tmp/x.sock"))
    assert target.address == UnixAddress("/tmp/x.sock") and target.source == "--socket"


def test_cid_with_default_port():
    assert resolve_target(args(cid=16)).address == VsockAddress(16, 5005)


def test_cid_with_explicit_port():
    assert resolve_target(args(cid=16, port=6000)).address == VsockAddress(16, 6000)


def test_socket_and_cid_together_is_a_usage_error():
    with pytest.raises(UsageError, match="not both"):
        resolve_target(args(socket="/x", cid=3))


def test_the_one_running_enclave_from_nitro_cli(tmp_path):
    fake_nitro_cli(tmp_path, [ENCLAVE, {**ENCLAVE, "EnclaveCID": 17, "State": "TERMINATING"}])
    target = resolve_target(args(port=7000))
    assert target.address == VsockAddress(16, 7000) and target.source == "nitro-cli"


def test_several_running_enclaves_is_an_error_naming_them(tmp_path):
    fake_nitro_cli(tmp_path, [ENCLAVE, {**ENCLAVE, "EnclaveName": "other", "EnclaveCID": 17}])
    with pytest.raises(UsageError, match=r"2 enclaves are running.*cid 17.*--cid"):
        resolve_target(args())


def test_no_enclave_and_no_simulation_is_not_found(tmp_path):
    fake_nitro_cli(tmp_path, [])
    with pytest.raises(NotFoundError, match="nitro-cli lists no running enclave.*simulate up"):
        resolve_target(args())


def test_without_nitro_cli_and_simulation_says_so():
    with pytest.raises(NotFoundError, match="nitro-cli is not installed"):
        resolve_target(args())


def test_failing_nitro_cli_is_reported(tmp_path):
    fake_nitro_cli(tmp_path, [], exit_code=3)
    with pytest.raises(ClientError, match="describe-enclaves.*failed"):
        resolve_target(args())


def test_running_simulation_is_found(tmp_path):
    listener, path = running_simulation(tmp_path)
    with listener:
        target = resolve_target(args())
    assert target.address == UnixAddress(str(path)) and target.source == "simulation"
    assert target.simulation["region"] == "us-east-1"


def test_real_enclave_is_preferred_over_simulation(tmp_path):
    listener, _ = running_simulation(tmp_path)
    fake_nitro_cli(tmp_path, [ENCLAVE])
    with listener:
        assert resolve_target(args()).source == "nitro-cli"


def test_dead_simulation_is_not_used(tmp_path):
    sim = tmp_path / "sim"
    sim.mkdir()
    simstate.save_state({"runtime": {"socket": str(sim / "runtime.sock"), "pid": 2**22 + 7}}, sim)
    with pytest.raises(NotFoundError):
        resolve_target(args())


def test_corrupt_simulation_state_is_a_usage_error(tmp_path):
    (tmp_path / "sim").mkdir()
    (tmp_path / "sim" / "state.json").write_text("{not json")
    with pytest.raises(UsageError, match="simulate down"):
        resolve_target(args())


def test_socket_of_the_recorded_simulation_keeps_its_state(tmp_path):
    listener, path = running_simulation(tmp_path)
    with listener:
        target = resolve_target(args(socket=str(path)))
    assert target.source == "--socket" and target.simulation["region"] == "us-east-1"


def test_other_socket_carries_no_simulation_state(tmp_path):
    listener, _ = running_simulation(tmp_path)
    with listener:
        assert resolve_target(args(socket=str(tmp_path / "other.sock"))).simulation is None
