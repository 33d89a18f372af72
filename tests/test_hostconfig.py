"""The host settings file HostStack's user data writes, and the client defaults it provides.

Each default is checked twice: applied when the command line is silent, overridden when it is not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import boto3
import pytest
from host_app import REMOVE, build_host_stack, user_data_text
from moto import mock_aws

from client import aws, hostconfig
from client.cli import main
from client.errors import ExitStatus, UsageError
from client.hostconfig import HostConfig, load_host_config, parse_host_config
from client.simstate import pid_alive
from client.target import resolve_target
from client.transport import VsockAddress
from tests.fake_tools import calls, install_tool, on_path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {
    "region": "eu-west-1",
    "kms_endpoint": "kms.eu-west-1.amazonaws.com",
    "enclave_key_arn": "arn:aws:kms:eu-west-1:111111111111:key/"
                       "00000000-0000-4000-8000-000000000002",
    "vsock_proxy_port": 8123,
    "enclave_port": 6006,
    "enclave_cpu_count": 2,
    "enclave_memory_mib": 1024,
    "bucket": "host-sharing-bucket",
    "encrypted_app_prefix": "encrypted-apps/",
    "enclave_image_prefix": "enclave-images/",
    "app_id": "sample-app",
}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real /etc/sealed-enclave/host.json and no AWS settings from this machine leak in."""
    monkeypatch.setattr(hostconfig, "DEFAULT_PATH", tmp_path / "etc" / "host.json")
    for name in ("SEALED_HOST_CONFIG", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("SEALED_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SEALED_SIM_DIR", str(tmp_path / "sim"))


def write_settings(path: Path, **changes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**SETTINGS, **changes}))
    return path


@pytest.fixture
def host_json(tmp_path, monkeypatch) -> Path:
    """A host settings file named by SEALED_HOST_CONFIG, as the sealed-client wrapper does."""
    path = write_settings(tmp_path / "host.json")
    monkeypatch.setenv("SEALED_HOST_CONFIG", str(path))
    return path


# ---- reading the file -----------------------------------------------------------------------

def test_no_file_at_the_default_path_means_no_host_settings():
    assert load_host_config() is None


def test_default_path_is_read_when_present():
    write_settings(hostconfig.DEFAULT_PATH)
    assert load_host_config() == HostConfig(**SETTINGS)


def test_file_named_by_the_environment_wins_over_the_default_path(host_json):
    write_settings(hostconfig.DEFAULT_PATH, region="us-east-1")
    assert load_host_config().region == "eu-west-1"


def test_environment_naming_a_missing_file_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SEALED_HOST_CONFIG", str(tmp_path / "typo.json"))
    with pytest.raises(UsageError, match=r"SEALED_HOST_CONFIG names .*typo\.json.*does not exist"):
        load_host_config()


def test_malformed_json_is_a_usage_error_naming_the_file(host_json):
    host_json.write_text('{"region": ')
    with pytest.raises(UsageError, match=rf"{re.escape(str(host_json))} is not valid JSON"):
        load_host_config()


def test_a_json_value_that_is_not_an_object_is_refused():
    with pytest.raises(UsageError, match="must be a JSON object, not list"):
        parse_host_config("[]")


def test_unknown_key_is_refused_by_name():
    with pytest.raises(UsageError, match=r"unknown keys \['enclave_cid'\]"):
        parse_host_config(json.dumps({**SETTINGS, "enclave_cid": 16}))


def test_missing_key_is_refused_by_name():
    settings = {k: v for k, v in SETTINGS.items() if k != "app_id"}
    with pytest.raises(UsageError, match=r"missing keys \['app_id'\]"):
        parse_host_config(json.dumps(settings))


@pytest.mark.parametrize(("name", "value"), [
    ("enclave_port", "5005"), ("vsock_proxy_port", True), ("enclave_cpu_count", 0),
    ("enclave_memory_mib", -1), ("region", ""), ("bucket", None), ("app_id", 7),
])
def test_a_value_of_the_wrong_type_is_refused_by_name(name, value):
    with pytest.raises(UsageError, match=rf": {name} is .*, expected"):
        parse_host_config(json.dumps({**SETTINGS, name: value}))


def test_enclave_key_arn_may_be_null_before_the_third_party_key_exists():
    assert parse_host_config(json.dumps({**SETTINGS, "enclave_key_arn": None})) \
        .enclave_key_arn is None


def test_every_field_has_an_expected_type():
    assert hostconfig.KEYS == set(hostconfig._TYPES)


# ---- the user data and the client agree -----------------------------------------------------

def written_settings(script: str) -> str:
    """The body of the user data's `cat > /etc/sealed-enclave/host.json <<'TAG'` heredoc."""
    match = re.search(r"^cat > /etc/sealed-enclave/host\.json <<'(\w+)'\n(.*?)^\1$", script,
                      re.M | re.S)
    assert match, "the user data no longer writes /etc/sealed-enclave/host.json"
    return match.group(2)


@pytest.mark.cdk
@pytest.mark.parametrize("enclave_key", ["set", "not yet known"])
def test_keys_the_user_data_writes_are_exactly_the_keys_the_client_reads(enclave_key):
    overrides = {"EnclaveKeyArn": REMOVE} if enclave_key == "not yet known" else {}
    _, stack = build_host_stack(**overrides)
    text = written_settings(user_data_text(stack))
    assert set(json.loads(text)) == hostconfig.KEYS
    settings = parse_host_config(text)  # and every value has the type the client expects
    assert (settings.enclave_key_arn is None) == (enclave_key == "not yet known")


def test_default_image_is_where_the_image_builder_uploads_it():
    buildspec = (PROJECT_ROOT / "pipeline" / "buildspecs" / "nitro-image-builder.yml").read_text()
    assert '"s3://${HOST_BUCKET}/${ENCLAVE_IMAGE_PREFIX}${APP_ID}.eif"' in buildspec
    assert HostConfig(**SETTINGS).enclave_image_url == \
        "s3://host-sharing-bucket/enclave-images/sample-app.eif"


# ---- region ---------------------------------------------------------------------------------

class UnusedImds:
    def region(self) -> str:
        raise AssertionError("IMDS was asked although the host settings name the region")


def test_region_defaults_to_the_host_settings_before_imds(host_json):
    assert aws.get_region(imds=UnusedImds()) == "eu-west-1"  # type: ignore[arg-type]


def test_region_option_wins_over_the_host_settings(host_json):
    assert aws.get_region("us-west-2", imds=UnusedImds()) == "us-west-2"  # type: ignore[arg-type]


def test_region_environment_wins_over_the_host_settings(host_json, monkeypatch):
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    assert aws.get_region(imds=UnusedImds()) == "ap-south-1"  # type: ignore[arg-type]


# ---- enclave runtime port -------------------------------------------------------------------

def target_args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"socket": None, "cid": None, "port": None, **kw})


def test_runtime_port_defaults_to_the_host_settings(host_json):
    assert resolve_target(target_args(cid=16)).address == VsockAddress(16, 6006)


def test_runtime_port_of_the_enclave_nitro_cli_finds_defaults_to_the_host_settings(host_json):
    running = [{"EnclaveID": "i-1-enc-1", "EnclaveCID": 17, "State": "RUNNING"}]
    assert resolve_target(target_args(), describe=lambda: running).address == \
        VsockAddress(17, 6006)


def test_port_option_wins_over_the_host_settings(host_json):
    assert resolve_target(target_args(cid=16, port=5005)).address == VsockAddress(16, 5005)


def test_runtime_port_without_host_settings_is_5005():
    assert resolve_target(target_args(cid=16)).address == VsockAddress(16, 5005)


# ---- vsock-proxy listen port ----------------------------------------------------------------

@pytest.fixture
def fake_proxy(tmp_path, monkeypatch):
    on_path(monkeypatch, tmp_path / "bin")
    install_tool(tmp_path / "bin", "vsock-proxy", "time.sleep(60)\n")
    allow_list = tmp_path / "vsock-proxy.yaml"
    allow_list.write_text("allowlist:\n- {address: kms.eu-west-1.amazonaws.com, port: 443}\n")
    yield tmp_path / "bin", allow_list
    record = tmp_path / "state" / "proxy-kms.json"
    if record.exists():  # never leave a fake proxy running
        pid = json.loads(record.read_text())["pid"]
        if pid_alive(pid):
            os.kill(pid, 9)


def test_proxy_listens_on_the_host_settings_port_for_the_host_region(host_json, fake_proxy):
    bin_dir, allow_list = fake_proxy
    assert main(["proxy", "-s", "kms", "--config", str(allow_list)]) == 0
    assert calls(bin_dir, "vsock-proxy")[0]["argv"][:2] == ["8123", "kms.eu-west-1.amazonaws.com"]


def test_listen_port_option_wins_over_the_host_settings(host_json, fake_proxy):
    bin_dir, allow_list = fake_proxy
    assert main(["proxy", "-s", "kms", "--config", str(allow_list), "--listen-port", "8000"]) == 0
    assert calls(bin_dir, "vsock-proxy")[0]["argv"][0] == "8000"


# ---- enclave start --------------------------------------------------------------------------

NITRO_CLI = """
print(json.dumps({"EnclaveID": "i-0abc-enc-1", "EnclaveCID": 16, "NumberOfCPUs": 2,
                  "MemoryMiB": 1024}))
"""


@pytest.fixture
def enclave_host(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    on_path(monkeypatch, tmp_path / "bin")
    install_tool(tmp_path / "bin", "nitro-cli", NITRO_CLI)
    allocator = tmp_path / "allocator.yaml"
    allocator.write_text("memory_mib: 2048\ncpu_count: 4\n")
    return tmp_path / "bin", allocator


def run_enclave_argv(bin_dir: Path) -> list[str]:
    (call,) = calls(bin_dir, "nitro-cli")
    return call["argv"]


def upload_image(key: str, body: bytes = b"\0" * 4096) -> None:
    s3 = boto3.client("s3", region_name="eu-west-1")
    s3.create_bucket(Bucket="host-sharing-bucket",
                     CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    s3.put_object(Bucket="host-sharing-bucket", Key=key, Body=body)


@mock_aws
def test_enclave_start_without_eif_runs_the_pipeline_image_at_the_host_size(
        host_json, enclave_host, tmp_path):
    bin_dir, allocator = enclave_host
    upload_image("enclave-images/sample-app.eif")
    assert main(["enclave", "start", "--allocator-config", str(allocator),
                 "--download-dir", str(tmp_path / "eif")]) == 0
    assert run_enclave_argv(bin_dir) == [
        "run-enclave", "--eif-path", str(tmp_path / "eif" / "sample-app.eif"),
        "--cpu-count", "2", "--memory", "1024"]


def test_enclave_start_options_win_over_the_host_settings(host_json, enclave_host, tmp_path):
    bin_dir, allocator = enclave_host
    eif = tmp_path / "local.eif"
    eif.write_bytes(b"\0" * 4096)
    assert main(["enclave", "start", "--allocator-config", str(allocator), "--eif", str(eif),
                 "--cpu-count", "4", "--memory", "2048"]) == 0
    assert run_enclave_argv(bin_dir) == [
        "run-enclave", "--eif-path", str(eif), "--cpu-count", "4", "--memory", "2048"]


def test_enclave_start_without_eif_or_host_settings_asks_for_eif(enclave_host, capsys):
    bin_dir, allocator = enclave_host
    assert main(["enclave", "start", "--allocator-config", str(allocator)]) == ExitStatus.USAGE
    assert "pass --eif" in capsys.readouterr().err
    assert calls(bin_dir, "nitro-cli") == []


def test_enclave_start_with_malformed_host_settings_names_the_file(host_json, enclave_host,
                                                                    capsys):
    _, allocator = enclave_host
    host_json.write_text("{}")
    assert main(["enclave", "start", "--allocator-config", str(allocator)]) == ExitStatus.USAGE
    assert str(host_json) in capsys.readouterr().err
