"""The enclave host's user data: rendered content, shell syntax, and a sandboxed double run
(every absolute path moved under a temporary root, system commands replaced by stubs)."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from host_app import build_host_stack

from constructs.client_package import build_client_wheel
from constructs.enclave_host import (
    USER_DATA_TEMPLATE,
    render_template,
    render_user_data,
)

WHEEL_URL = "s3://assets-bucket/0123abcd.whl"
WHEEL_FILE = "sealed_enclave-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "ab" * 32
REQUIREMENTS_URL = "s3://assets-bucket/4567ef.txt"
HOST_CONFIG = {
    "region": "eu-west-1",
    "bucket": "sharing-bucket",
    "enclave_key_arn": "arn:aws:kms:eu-west-1:111111111111:key/"
                       "00000000-0000-4000-8000-000000000002",
    "vsock_proxy_port": 8000,
    "enclave_port": 5005,
}


def render(**overrides) -> str:
    values: dict[str, Any] = dict(region="eu-west-1", enclave_cpu_count=4, enclave_memory_mib=6144,
                                  host_config=HOST_CONFIG, client_wheel_url=WHEEL_URL,
                                  client_wheel_file=WHEEL_FILE, client_wheel_sha256=WHEEL_SHA256,
                                  host_requirements_url=REQUIREMENTS_URL)
    values.update(overrides)
    return render_user_data(**values)


def heredoc(script: str, path: str) -> str:
    """The body of `cat > PATH <<'TAG' ... TAG` in the script."""
    match = re.search(rf"^cat > {re.escape(path)} <<'(\w+)'\n(.*?)^\1$", script, re.M | re.S)
    assert match, f"no quoted heredoc writes {path}"
    return match.group(2)


# ---- rendering ------------------------------------------------------------------------------

def test_every_placeholder_is_filled():
    assert "{{" not in render() and "}}" not in render()


def test_template_without_a_value_is_refused():
    with pytest.raises(ValueError, match=r"placeholders without a value \['missing'\]"):
        render_template("a {{missing}} b", {})


def test_value_without_a_placeholder_is_refused():
    with pytest.raises(ValueError, match=r"values without a placeholder \['extra'\]"):
        render_template("no placeholders", {"extra": "x"})


def test_values_are_not_rescanned_for_placeholders():
    assert render_template("{{a}}", {"a": "{{b}}"}) == "{{b}}"


def test_script_is_bash_with_strict_mode_before_any_command():
    lines = render().splitlines()
    assert lines[0] == "#!/bin/bash"
    first_command = next(line for line in lines[1:] if line and not line.startswith("#"))
    assert first_command == "set -euo pipefail"


def test_rendered_script_parses_as_bash():
    result = subprocess.run(["bash", "-n"], input=render(), text=True, capture_output=True)
    assert result.returncode == 0, result.stderr


def test_installs_the_nitro_enclaves_cli_and_its_devel_package():
    install = next(line for line in render().splitlines() if line.startswith("dnf install"))
    assert "-y" in install.split()
    assert {"aws-nitro-enclaves-cli", "aws-nitro-enclaves-cli-devel"} <= set(install.split())


def test_installs_fuse_3_for_sync():
    installs = [line.split() for line in render().splitlines() if line.startswith("dnf install")]
    # fuse3: fusermount3 (mount and unmount as ec2-user); fuse3-libs: the libfuse3 mfusepy loads
    assert any({"-y", "fuse3", "fuse3-libs"} <= set(words) for words in installs)


def test_allocator_memory_and_cpus_come_from_config():
    allocator = yaml.safe_load(heredoc(render(), "/etc/nitro_enclaves/allocator.yaml"))
    assert allocator == {"memory_mib": 6144, "cpu_count": 4}


def test_allocator_service_is_enabled_and_started_after_its_config_is_written():
    script = render()
    enable = script.index("systemctl enable --now nitro-enclaves-allocator.service")
    assert script.index("/etc/nitro_enclaves/allocator.yaml") < enable


def test_vsock_proxy_allows_only_the_regions_kms_endpoint_on_443():
    allow = yaml.safe_load(heredoc(render(), "/etc/nitro_enclaves/vsock-proxy.yaml"))
    assert allow == {"allowlist": [{"address": "kms.eu-west-1.amazonaws.com", "port": 443}]}


def test_vsock_proxy_allow_list_follows_the_region():
    allow = yaml.safe_load(heredoc(render(region="ap-south-1"),
                                   "/etc/nitro_enclaves/vsock-proxy.yaml"))
    assert allow["allowlist"] == [{"address": "kms.ap-south-1.amazonaws.com", "port": 443}]


def test_ec2_user_joins_the_ne_group():
    assert "usermod -aG ne ec2-user" in render().splitlines()


def test_session_manager_user_exists_and_joins_the_ne_group():
    lines = render().splitlines()
    # Created before the agent would, so that it can join the group at boot.
    create = lines.index("getent passwd ssm-user >/dev/null || "
                         "useradd --create-home --shell /bin/bash ssm-user")
    assert lines.index("usermod -aG ne ssm-user") > create


def test_host_settings_file_is_the_given_json_at_a_fixed_path():
    assert json.loads(heredoc(render(), "/etc/sealed-enclave/host.json")) == HOST_CONFIG


def pip_installs(script: str) -> list[str]:
    """Each `pip install` command of the script, continuation lines joined."""
    joined = script.replace("\\\n", " ")
    return [" ".join(line.split()) for line in joined.splitlines() if "-m pip install" in line]


def test_client_package_and_dependencies_install_only_with_hashes():
    (pip,) = pip_installs(render())
    assert "--require-hashes" in pip.split() and "--only-binary :all:" in pip
    assert '-r "$APP_HOME/dist/requirements-host.txt"' in pip
    assert '-r "$APP_HOME/dist/requirements-client.txt"' in pip


def test_the_wheel_is_pinned_by_the_hash_computed_at_synth():
    line = heredoc(render(), "/opt/sealed-enclave/dist/requirements-client.txt").strip()
    assert line == (f"sealed-enclave @ file:///opt/sealed-enclave/dist/{WHEEL_FILE} "
                    f"--hash=sha256:{WHEEL_SHA256}")


def test_wheel_and_requirements_come_from_their_assets():
    script = render()
    assert f"'{WHEEL_URL}' \"$APP_HOME/dist/{WHEEL_FILE}\"" in script
    assert f"'{REQUIREMENTS_URL}' \"$APP_HOME/dist/requirements-host.txt\"" in script


def test_no_zip_no_path_file_no_unhashed_install():
    script = render()
    assert "unzip" not in script and ".pth" not in script and "PYTHONPATH" not in script
    assert all("--require-hashes" in pip for pip in pip_installs(script))


def test_wrapper_runs_the_installed_console_script():
    wrapper = heredoc(render(), "/usr/local/bin/sealed-client")
    assert 'exec /opt/sealed-enclave/venv/bin/sealed-client "$@"' in wrapper


def test_template_file_is_the_one_shipped_with_the_construct():
    assert USER_DATA_TEMPLATE.parent.name == "templates"
    assert USER_DATA_TEMPLATE.read_text().startswith("#!/bin/bash\n")


# ---- in the synthesized launch template -----------------------------------------------------

def test_launch_template_carries_the_rendered_script_with_config_values():
    _, stack = build_host_stack(EnclaveMemoryMiB=6144, Region="eu-west-1",
                                HostEncryptionKeyArn="arn:aws:kms:eu-west-1:222222222222:key/"
                                                     "00000000-0000-4000-8000-000000000001",
                                EnclaveKeyArn="arn:aws:kms:eu-west-1:111111111111:key/"
                                              "00000000-0000-4000-8000-000000000002")
    resolved = stack.resolve(stack.host.user_data_script)
    # Asset locations resolve to plain strings; the job queue's URL (twice) is the only
    # reference left for CloudFormation.
    parts = resolved["Fn::Join"][1]
    queue = stack.resolve(stack.jobs.queue.queue_url)
    assert [part for part in parts if not isinstance(part, str)] == [queue, queue]
    script = "".join(part if isinstance(part, str) else "QUEUE_URL" for part in parts)
    assert "--queue-url 'QUEUE_URL' --bucket 'example-host-sharing-bucket-222222222222'" in script
    assert "memory_mib: 6144" in script
    assert "- {address: kms.eu-west-1.amazonaws.com, port: 443}" in script
    settings = json.loads(heredoc(script, "/etc/sealed-enclave/host.json"))
    assert settings["bucket"] == "example-host-sharing-bucket-222222222222"
    assert settings["region"] == "eu-west-1"
    assert settings["enclave_key_arn"].startswith("arn:aws:kms:eu-west-1:111111111111:key/")
    assert (settings["vsock_proxy_port"], settings["enclave_port"]) == (8000, 5005)
    assert "s3://cdk-hnb659fds-assets-222222222222-eu-west-1/" in script
    wheel = build_client_wheel()
    client = heredoc(script, "/opt/sealed-enclave/dist/requirements-client.txt").strip()
    assert client == (f"sealed-enclave @ file:///opt/sealed-enclave/dist/{wheel.file_name} "
                      f"--hash=sha256:{wheel.sha256}")


# ---- sandboxed run --------------------------------------------------------------------------

STUB = """#!/bin/bash
echo "$(basename "$0") $*" >> "$SANDBOX/calls.log"
"""
AWS_STUB = STUB + 'echo "$5" > "${@: -1}"\n'  # the object's URL as its content
PYTHON_STUB = STUB + """if [ "$1" = -m ] && [ "$2" = venv ]; then
  mkdir -p "$3/bin"
  cp "$0" "$3/bin/python"
fi
"""


def _sandbox(tmp_path: Path, **overrides: Any) -> tuple[Path, Path, dict[str, str]]:
    root = tmp_path / "root"
    bin_dir = tmp_path / "bin"
    for directory in (root / "var" / "log", root / "usr" / "local" / "bin", bin_dir):
        directory.mkdir(parents=True)
    stubs = {"dnf": STUB, "systemctl": STUB, "usermod": STUB, "useradd": STUB,
             "getent": STUB + "exit 2\n", "aws": AWS_STUB, "python3.11": PYTHON_STUB}
    for name, body in stubs.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(stat.S_IRWXU)
    script = render(**overrides)
    for prefix in ("/etc/", "/opt/", "/usr/local/bin/", "/var/log/"):
        script = script.replace(prefix, f"{root}{prefix}")
    (tmp_path / "user_data.sh").write_text(script)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SANDBOX": str(root),
           "HOME": str(tmp_path)}
    return root, tmp_path / "user_data.sh", env


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in ("calls.log", "sealed-enclave-bootstrap.log")}


def test_script_runs_and_a_second_run_changes_nothing(tmp_path):
    root, script, env = _sandbox(tmp_path)
    first = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    after_first = _snapshot(root)
    assert "etc/nitro_enclaves/allocator.yaml" in after_first
    assert after_first[f"opt/sealed-enclave/dist/{WHEEL_FILE}"] == f"{WHEEL_URL}\n".encode()
    assert after_first["opt/sealed-enclave/dist/requirements-host.txt"] == \
        f"{REQUIREMENTS_URL}\n".encode()
    assert os.access(root / "usr/local/bin/sealed-client", os.X_OK)

    second = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stdout + second.stderr
    assert _snapshot(root) == after_first
    calls = (root / "calls.log").read_text().splitlines()
    assert sum(" -m venv " in f" {call} " for call in calls) == 1, "virtualenv made twice"
    assert calls.count("systemctl enable --now nitro-enclaves-allocator.service") == 2
    assert calls.count("useradd --create-home --shell /bin/bash ssm-user") == 2
    assert calls.count("usermod -aG ne ssm-user") == 2
    installs = [call for call in calls if " -m pip install " in f" {call} "]
    assert len(installs) == 2 and all("--require-hashes" in call for call in installs)
    assert "requirements-client.txt" in installs[0]


def test_an_existing_ssm_user_is_kept_and_joins_the_ne_group(tmp_path):
    root, script, env = _sandbox(tmp_path)
    (Path(env["PATH"].split(":")[0]) / "getent").write_text(
        STUB + 'echo "ssm-user:x:1001:1001::/home/ssm-user:/bin/bash"\n')
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = (root / "calls.log").read_text().splitlines()
    assert not [call for call in calls if call.startswith("useradd")]
    assert "usermod -aG ne ssm-user" in calls


def test_script_stops_at_the_first_failing_command(tmp_path):
    root, script, env = _sandbox(tmp_path)
    (Path(env["PATH"].split(":")[0]) / "dnf").write_text("#!/bin/bash\nexit 1\n")
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert not (root / "etc" / "nitro_enclaves").exists()


def test_rendered_script_fits_the_ec2_user_data_limit():
    # EC2 refuses user data over 16 KiB once base64-encoded.
    assert len(render().encode()) * 4 / 3 < 16 * 1024


# ---- the fleet agent ----------------------------------------------------------------------------

AGENT_UNIT = "/etc/systemd/system/sealed-enclave-agent.service"
QUEUE_URL = "https://sqs.eu-west-1.amazonaws.com/222222222222/jobs"


def test_agent_unit_runs_the_installed_agent_on_the_queue_and_bucket():
    unit = heredoc(render(job_queue_url=QUEUE_URL, bucket="sharing"), AGENT_UNIT)
    assert (f"ExecStart=/opt/sealed-enclave/venv/bin/sealed-client agent --queue-url "
            f"'{QUEUE_URL}' --bucket 'sharing' --region 'eu-west-1'") in unit
    assert "KillSignal=SIGTERM" in unit and "User=ec2-user" in unit  # never root


def test_agent_is_enabled_only_with_a_queue(tmp_path):
    for queue, enabled in ((QUEUE_URL, 1), ("", 0)):
        root, script, env = _sandbox(tmp_path / str(enabled), job_queue_url=queue,
                                     bucket="sharing")
        done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        calls = (root / "calls.log").read_text().splitlines()
        assert calls.count("systemctl enable --now sealed-enclave-agent.service") == enabled
