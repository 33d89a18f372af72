"""The whole attested flow inside the emulated enclave (`simulate up --jail`, docs/emulation.md).

The runtime is started by the image's own CMD (containers/Dockerfile) under an init stand-in in
mount, network and PID namespaces: tmpfs noexec /run and /tmp, linuxkit's /etc/hosts and an empty
resolv.conf, `lo` down, the image's environment only, the image's packages installed with pip
from containers/requirements-*.txt (not the virtualenv), vsock replaced by Unix sockets, and KMS
reached through the in-enclave bridge and a vsock-proxy stand-in over TLS. Needs root; skipped
with the reason elsewhere, and a failure when CI=true.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from client import simstate
from client.cli import main
from client.sim import jail
from tests.test_containers import image_command
from tests.test_simulate import PATIENTS, enclave_key, seal


def require_jail() -> None:
    reason = jail.unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the emulated enclave, but: {reason}")
    pytest.skip(f"emulated enclave unavailable: {reason}")


@pytest.fixture(scope="module")
def enclave(tmp_path_factory, third_party_template_path):
    require_jail()
    state_dir = tmp_path_factory.mktemp("jail")
    old = {k: os.environ.get(k) for k in ("SEALED_SIM_DIR", "SEALED_STATE_DIR", "PATH")}
    os.environ["SEALED_SIM_DIR"] = str(state_dir)
    os.environ["SEALED_STATE_DIR"] = str(state_dir / "host")
    os.environ["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"  # unshare, but no nitro-cli
    try:
        code = main(["simulate", "up", "--jail", "--template", str(third_party_template_path)])
        if code != 0:
            log = state_dir / "logs" / "runtime.log"
            pytest.fail(f"simulate up --jail failed ({code}):\n"
                        f"{log.read_text() if log.exists() else ''}")
        yield simstate.load_state(state_dir)
    finally:
        main(["simulate", "down"])
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_the_runtime_is_started_by_the_images_cmd(enclave, capsys):
    assert enclave["mode"] == "jail"
    assert main(["--json", "simulate", "status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["components"] == {"runtime": True, "vsock_proxy": True, "nsm": True,
                                    "kms_tls": True, "kms": True}
    assert enclave["runtime"]["image_command"] == image_command()
    # Real root in new mount, network and PID namespaces: no user namespace, which would map a
    # single uid and leave the runtime unable to run apps under uids of their own.
    command = enclave["runtime"]["command"]
    assert command[:5] == ["unshare", "--mount", "--net", "--pid", "--fork"]
    assert not [a for a in command if a in ("-r", "-U", "--user", "--map-root-user")]
    plan = json.loads((Path(enclave["state_dir"]) / "jail" / "plan.json").read_text())
    assert plan["argv"] == jail.jail_argv(image_command())


def test_attested_run_imports_numpy_from_the_image_and_reaches_kms_over_tls(
        enclave, tmp_path, capsys):
    # The attestation document verifies against the expected PCRs (and the development root).
    assert main(["attest", "--simulation"]) == 0
    key_arn = enclave_key(enclave)
    bundle = tmp_path / "app.sealed"
    seal(enclave, key_arn, bundle)
    assert main(["push", str(bundle)]) == 0
    assert main(["push", str(PATIENTS), "patients.csv"]) == 0
    capsys.readouterr()
    code = main(["run", "-f", "app.sealed", "-s", "predict", "-a", "patients.csv scores.csv 0.3"])
    captured = capsys.readouterr()
    logs = Path(enclave["state_dir"]) / "logs"
    assert code == 0, captured.err + (logs / "runtime.log").read_text()
    assert captured.out.startswith("scored 500 patients")
    assert main(["pull", "scores.csv", str(tmp_path / "scores.csv")]) == 0
    assert len((tmp_path / "scores.csv").read_text().splitlines()) == 501
    # The data key came through the bridge, the vsock-proxy stand-in and TLS to the local KMS.
    assert "forwarding a connection to kms." in (logs / "vsock-proxy.log").read_text()
    # ... after the runtime mapped the name in linuxkit's /etc/hosts, which it started without.
    hosts = (Path(enclave["state_dir"]) / "jail" / "hosts").read_text()
    assert f"127.0.0.1\tkms.{enclave['region']}.amazonaws.com" in hosts


def test_the_image_listens_and_connects_on_the_ports_the_host_settings_name(
        tmp_path, monkeypatch, third_party_template_path):
    """EnclavePort and VsockProxyPort reach both sides: the host's settings and the image built
    from the same context keys (tests/test_ports.py checks the stacks pass them along)."""
    require_jail()
    from client.commands import simulate

    context = {**simulate.cdk_context(), "EnclavePort": 5123, "VsockProxyPort": 8123}
    monkeypatch.setattr(simulate, "cdk_context", lambda: context)
    monkeypatch.setenv("SEALED_SIM_DIR", str(tmp_path / "sim"))
    monkeypatch.setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    try:
        assert main(["simulate", "up", "--jail", "--template",
                     str(third_party_template_path)]) == 0
        state = simstate.load_state()
        assert state["runtime"]["socket"].endswith("cid16-port5123.sock")
        assert state["vsock_proxy"]["socket"].endswith("cid3-port8123.sock")
        assert main(["attest", "--simulation"]) == 0
    finally:
        main(["simulate", "down"])
    runtime_log = (tmp_path / "sim" / "logs" / "runtime.log").read_text()
    assert "vsock 3:8123" in runtime_log  # the bridge's upstream: the host's vsock-proxy port


def runtime_pid(enclave) -> int:
    """The image's command: the only child of the init stand-in, itself unshare's child."""
    def children(pid: int) -> list[int]:
        found = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
        return found

    (init,) = children(enclave["runtime"]["pid"])
    (command,) = children(init)
    return command


def test_the_runtime_sees_the_enclaves_file_system_network_and_environment(enclave):
    pid = runtime_pid(enclave)
    mounts = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        mounts[fields[4]] = set(fields[5].split(","))
    for point in ("/run", "/tmp", "/dev/shm"):
        assert "noexec" in mounts[point], point
    assert {"/etc/hosts", "/etc/resolv.conf", "/dev/nsm", "/opt/enclave/site"} <= set(mounts)
    for point in ("/usr", "/opt/enclave/site", "/opt/enclave/app/enclave"):
        assert "ro" in mounts[point], point  # the image, not something a run can change
    assert not [m for m in mounts if m.startswith(("/work", "/root", "/home"))]  # no virtualenv
    interfaces = [line.split(":")[0].strip()
                  for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]]
    assert interfaces == ["lo"]
    environ = dict(item.split("=", 1) for item in
                   Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if item)
    plan = json.loads((Path(enclave["state_dir"]) / "jail" / "plan.json").read_text())
    assert environ == plan["env"]
    assert environ["PYTHONPATH"] == "/opt/enclave/site:/opt/enclave/app"
    assert os.readlink(f"/proc/{pid}/cwd") == "/"  # the init's, not the image's WORKDIR
    resolv = (Path(enclave["state_dir"]) / "jail" / "resolv.conf").read_text()
    assert resolv == ""  # linuxkit's: no DNS at all


def test_nothing_under_run_or_tmp_can_be_executed(enclave):
    """Where bundles are unsealed (/run) and apps write (/tmp): exec fails, as in the enclave."""
    import shutil
    import subprocess

    if shutil.which("nsenter") is None:
        message = "nsenter (util-linux) is needed to look inside the emulated enclave"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)

    pid = runtime_pid(enclave)
    for directory in ("/run", "/tmp"):
        done = subprocess.run(
            ["nsenter", "-t", str(pid), "-m", "-p", "--", "/bin/sh", "-c",
             f"cp /bin/true {directory}/probe && chmod 755 {directory}/probe && "
             f"{directory}/probe; echo status=$?; rm -f {directory}/probe"],
            capture_output=True, text=True, timeout=30, check=False)
        assert "status=126" in done.stdout, (directory, done.stdout, done.stderr)
        assert "Permission denied" in done.stderr
