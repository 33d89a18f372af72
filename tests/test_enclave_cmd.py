"""`enclave start|describe|terminate` with a fake nitro-cli on PATH and S3 from moto."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from client.cli import main
from client.commands.enclave import Allocator, check_resources, minimum_memory_mib, read_allocator
from client.errors import ExitStatus, UsageError
from tests.fake_tools import calls, install_tool, on_path

MIB = 1024 * 1024
STARTED = {"EnclaveName": "image", "EnclaveID": "i-0abc-enc-1", "ProcessID": 4242,
           "EnclaveCID": 16, "NumberOfCPUs": 2, "CPUIDs": [1, 3], "MemoryMiB": 1024}
RUNNING = {**STARTED, "State": "RUNNING", "Flags": "NONE"}

NITRO_CLI = f"""
if argv[0] == "run-enclave":
    print("Start allocating memory...")
    print(json.dumps({json.dumps(STARTED)}))
elif argv[0] == "describe-enclaves":
    print(open(os.environ["FAKE_ENCLAVES"]).read())
elif argv[0] == "terminate-enclave":
    print(json.dumps({{"EnclaveID": argv[-1], "Terminated": True}}))
"""


@pytest.fixture
def host(tmp_path, monkeypatch):
    monkeypatch.setenv("SEALED_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("FAKE_ENCLAVES", str(tmp_path / "enclaves.json"))
    (tmp_path / "enclaves.json").write_text("[]")
    on_path(monkeypatch, tmp_path / "bin")
    install_tool(tmp_path / "bin", "nitro-cli", NITRO_CLI)
    allocator = tmp_path / "allocator.yaml"
    allocator.write_text("---\n# reserved for enclaves\nmemory_mib: 2048\ncpu_count: 2\n")
    eif = tmp_path / "image.eif"
    eif.write_bytes(b"\0" * (100 * 1024))
    return tmp_path, allocator, eif


def start(allocator, eif, *extra):
    return main(["enclave", "start", "--eif", str(eif), "--allocator-config", str(allocator),
                 *extra])


def test_start_calls_run_enclave_with_allocator_defaults(host, capsys):
    tmp_path, allocator, eif = host
    assert start(allocator, eif, "--json") == 0
    argv = calls(tmp_path / "bin", "nitro-cli")[0]["argv"]
    assert argv == ["run-enclave", "--eif-path", str(eif), "--cpu-count", "2", "--memory", "2048"]
    assert json.loads(capsys.readouterr().out)["EnclaveCID"] == 16


def test_memory_below_four_times_the_eif_is_refused_before_nitro_cli(host, capsys):
    tmp_path, allocator, eif = host
    eif.write_bytes(b"\0" * (300 * MIB // 1024 * 1024))  # 300 MiB -> needs 1200 MiB
    assert start(allocator, eif, "--memory", "1024") == ExitStatus.USAGE
    assert "--memory 1200" in capsys.readouterr().err
    assert calls(tmp_path / "bin", "nitro-cli") == []


def test_memory_beyond_the_allocator_is_refused_before_nitro_cli(host, capsys):
    tmp_path, allocator, eif = host
    assert start(allocator, eif, "--memory", "4096") == ExitStatus.USAGE
    assert "allocator reserved" in capsys.readouterr().err
    assert calls(tmp_path / "bin", "nitro-cli") == []


def test_cpus_beyond_the_allocator_are_refused(host):
    tmp_path, allocator, eif = host
    assert start(allocator, eif, "--cpu-count", "4") == ExitStatus.USAGE
    assert calls(tmp_path / "bin", "nitro-cli") == []


def test_debug_mode_is_passed_and_warned_about(host, capsys):
    tmp_path, allocator, eif = host
    assert start(allocator, eif, "--debug-mode", "--memory", "1024") == 0
    assert calls(tmp_path / "bin", "nitro-cli")[0]["argv"][-1] == "--debug-mode"
    assert "zeroes every PCR" in capsys.readouterr().err


def test_start_records_measurements_next_to_the_eif(host):
    tmp_path, allocator, eif = host
    (tmp_path / "image.json").write_text(json.dumps({"Measurements": {"PCR0": "aa" * 48}}))
    assert start(allocator, eif) == 0
    record = json.loads((tmp_path / "state" / "enclave.json").read_text())
    assert record["measurements"]["Measurements"]["PCR0"] == "aa" * 48


def test_missing_eif_is_not_found(host):
    _, allocator, _ = host
    assert start(allocator, "/nonexistent.eif") == ExitStatus.NOT_FOUND


def test_missing_allocator_config_is_not_found(host, tmp_path):
    _, _, eif = host
    assert start(tmp_path / "none.yaml", eif) == ExitStatus.NOT_FOUND


def test_allocator_with_cpu_pool(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("memory_mib: 4096\ncpu_pool: 2,3,6-7\n")
    assert read_allocator(path) == Allocator(4096, 4)


def test_minimum_memory_rounds_up():
    assert minimum_memory_mib(100 * MIB + 1) == 401


def test_zero_cpus_refused():
    with pytest.raises(UsageError):
        check_resources(MIB, 512, 0, Allocator(1024, 2))


@mock_aws
def test_start_from_s3_downloads_eif_and_measurements(host):
    tmp_path, allocator, eif = host
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="host-bucket")
    s3.put_object(Bucket="host-bucket", Key="enclave-images/app.eif", Body=eif.read_bytes())
    s3.put_object(Bucket="host-bucket", Key="enclave-images/app.json",
                  Body=json.dumps({"Measurements": {"PCR0": "bb" * 48}}).encode())
    assert start(allocator, "s3://host-bucket/enclave-images/app.eif",
                 "--download-dir", str(tmp_path / "dl")) == 0
    assert (tmp_path / "dl" / "app.eif").read_bytes() == eif.read_bytes()
    argv = calls(tmp_path / "bin", "nitro-cli")[0]["argv"]
    assert argv[2] == str(tmp_path / "dl" / "app.eif")
    record = json.loads((tmp_path / "state" / "enclave.json").read_text())
    assert record["measurements"]["Measurements"]["PCR0"] == "bb" * 48


@mock_aws
def test_missing_s3_object_is_not_found(host):
    _, allocator, _ = host
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="host-bucket")
    assert start(allocator, "s3://host-bucket/nope.eif") == ExitStatus.NOT_FOUND


def test_malformed_s3_url_is_usage_error(host):
    _, allocator, _ = host
    assert start(allocator, "s3://bucket-only") == ExitStatus.USAGE


def test_describe_lists_enclaves(host, capsys):
    tmp_path, _, _ = host
    (tmp_path / "enclaves.json").write_text(json.dumps([RUNNING]))
    assert main(["--json", "enclave", "describe"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["EnclaveID"] == "i-0abc-enc-1"


def test_terminate_the_one_running_enclave(host):
    tmp_path, _, _ = host
    (tmp_path / "enclaves.json").write_text(json.dumps([RUNNING]))
    assert main(["enclave", "terminate"]) == 0
    assert calls(tmp_path / "bin", "nitro-cli")[-1]["argv"] == \
        ["terminate-enclave", "--enclave-id", "i-0abc-enc-1"]


def test_terminate_with_several_running_asks_which(host, capsys):
    tmp_path, _, _ = host
    (tmp_path / "enclaves.json").write_text(json.dumps([RUNNING, {**RUNNING, "EnclaveID": "e2"}]))
    assert main(["enclave", "terminate"]) == ExitStatus.USAGE
    assert "--enclave-id" in capsys.readouterr().err


def test_terminate_with_none_running_is_not_found(host):
    assert main(["enclave", "terminate"]) == ExitStatus.NOT_FOUND


def test_nitro_cli_failure_is_one_line_with_its_message(host, capsys):
    tmp_path, allocator, eif = host
    install_tool(tmp_path / "bin", "nitro-cli",
                 "print('[ E26 ] Insufficient memory requested.', file=sys.stderr)\n"
                 "sys.exit(26)\n")
    assert start(allocator, eif) == ExitStatus.ERROR
    err = capsys.readouterr().err
    assert "E26" in err and err.count("\n") == 1
