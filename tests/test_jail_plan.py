"""The emulated enclave's pure parts: the image definition it reads, the plan it mounts, the
vsock-proxy stand-in's allow list, the test CA, and the one table of differences (no root)."""

from __future__ import annotations

import re
import socket
import ssl
import threading
from pathlib import Path

import pytest

from client.sim import jail
from client.sim.tls import ensure_kms_certificate
from client.sim.vsock_proxy import ProxyRefused, allowed_remotes, check_remote
from enclave import emulation
from tests.conftest import PROJECT_ROOT
from tests.test_containers import image_command

DOCKERFILE = (PROJECT_ROOT / "containers" / "Dockerfile").read_text()


def paths(tmp_path: Path) -> jail.JailPaths:
    return jail.JailPaths(root=tmp_path / "root", site=tmp_path / "site",
                          ca_bundle=tmp_path / "ca.pem", hosts=tmp_path / "hosts",
                          resolv_conf=tmp_path / "resolv.conf", usr_layer=tmp_path / "usr",
                          vsock_dir=tmp_path / "vsock", nsm_socket=tmp_path / "nsm.sock")


def test_image_spec_reads_the_cmd_and_env_as_docker_build_would():
    spec = jail.image_spec(DOCKERFILE, {"AWS_REGION": "eu-west-3", "ENCLAVE_PORT": "5123"})
    assert spec.argv == image_command()
    assert spec.env["ENCLAVE_REGION"] == "eu-west-3"
    assert spec.env["ENCLAVE_PORT"] == "5123"
    assert spec.env["ENCLAVE_KMS_PROXY_PORT"] == "8000"  # the ARG default
    assert spec.env["PATH"] == jail.BASE_IMAGE_ENV["PATH"]


def test_image_spec_follows_stages_and_the_last_cmd():
    text = ("FROM x@sha256:1 AS base\nENV A=1\nCMD [\"a\"]\nFROM base AS other\nENV B=2\n"
            "FROM base\nARG C=3\nENV D=${C}-$A\n")
    spec = jail.image_spec(text, {})
    assert spec.argv == ["a"]
    assert spec.env == {**jail.BASE_IMAGE_ENV, "A": "1", "D": "3-1"}


def test_jail_argv_maps_only_the_interpreter_the_socket_family_and_the_nsm_transport():
    argv = jail.jail_argv(image_command())
    assert argv[0] == emulation.IMAGE_INTERPRETERS[image_command()[0]]
    removed = [a for a in argv if a not in image_command()]
    assert removed == ["--emulate-vsock-dir", emulation.VSOCK_DIR_IN_JAIL,
                       "--nsm-transport", emulation.NSM_TRANSPORT]


def test_plan_mounts_the_enclaves_tmpfs_noexec_and_linuxkits_files(tmp_path):
    plan = jail.jail_plan(paths(tmp_path), jail.image_spec(DOCKERFILE, {}))
    steps = {step["target"]: step for step in plan["steps"] if step["op"] != "symlink"}
    for target in ("/run", "/tmp", "/dev/shm"):
        assert steps[target]["op"] == "tmpfs"
        assert {"noexec", "nosuid", "nodev"} <= set(steps[target]["flags"])
    assert steps["/etc/hosts"]["source"] == str(tmp_path / "hosts")
    assert steps["/etc/resolv.conf"]["source"] == str(tmp_path / "resolv.conf")
    assert steps["/dev/nsm"]["source"] == str(tmp_path / "nsm.sock")
    assert steps["/opt/enclave/site"]["source"] == str(tmp_path / "site")
    assert steps[emulation.IMAGE_SYSTEM_PYTHON3]["op"] == "file"
    assert plan["lookup_path"] == "/sbin:/usr/sbin:/bin:/usr/bin"
    assert plan["cwd"] == "/"
    assert plan["env"] == jail.image_spec(DOCKERFILE, {}).env  # nothing of this process's


def test_linuxkit_leaves_only_localhost_and_no_dns():
    names = {n for line in emulation.LINUXKIT_HOSTS.splitlines() for n in line.split()[1:]}
    assert "kms.us-east-1.amazonaws.com" not in names and "localhost" in names
    assert emulation.LINUXKIT_RESOLV_CONF == ""


def test_pip_installs_as_the_dockerfile_does(tmp_path):
    for command in jail.pip_commands(tmp_path / "site"):
        assert {"--require-hashes", "--only-binary=:all:", "--no-deps"} <= set(command)
        assert command[command.index("--target") + 1] == str(tmp_path / "site")
    installs = re.findall(r"--target /opt/enclave/site -r /tmp/(requirements-\w+\.txt)",
                          DOCKERFILE)
    assert [f"containers/{name}" for name in installs] == list(jail.REQUIREMENT_FILES)


def test_vsock_socket_names_are_one_per_address():
    assert emulation.vsock_socket_name(3, 8000) == "cid3-port8000.sock"
    assert emulation.vsock_socket_path("/v", 16, 5005) == "/v/cid16-port5005.sock"
    with pytest.raises(ValueError):
        emulation.vsock_socket_name(3, 0)


ALLOWLIST = {"allowlist": [{"address": "kms.us-east-1.amazonaws.com", "port": 443}]}


def test_the_stand_in_reads_the_allow_list_the_enclave_host_writes(tmp_path):
    import yaml

    config = jail.allowlist_config(tmp_path / "vsock-proxy.yaml", "us-east-1")
    assert yaml.safe_load(config.read_text()) == ALLOWLIST
    with pytest.raises(Exception, match="no vsock-proxy allow list"):
        jail.host_allowlist("#!/bin/bash\n", "us-east-1")


def test_vsock_proxy_stand_in_starts_only_for_an_allowed_remote():
    allowed = allowed_remotes(ALLOWLIST)
    check_remote(("KMS.us-east-1.amazonaws.com", 443), allowed)
    for remote in (("kms.eu-west-1.amazonaws.com", 443), ("kms.us-east-1.amazonaws.com", 80),
                   ("s3.amazonaws.com", 443)):
        with pytest.raises(ProxyRefused, match="not on the allow list"):
            check_remote(remote, allowed)


@pytest.mark.parametrize("config", [{}, {"allowlist": "x"}, {"allowlist": [{"address": "a"}]},
                                    None])
def test_vsock_proxy_stand_in_refuses_a_malformed_allow_list(config):
    with pytest.raises(ProxyRefused):
        allowed_remotes(config)


def test_vsock_proxy_stand_in_process_refuses_a_remote_off_the_list(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "vsock-proxy.yaml"
    jail.allowlist_config(config, "us-east-1")
    done = subprocess.run([sys.executable, "-m", "client.sim.vsock_proxy", "--listen",
                           str(tmp_path / "p.sock"), "--config", str(config), "--remote",
                           "kms.eu-west-1.amazonaws.com:443", "--resolve",
                           "kms.eu-west-1.amazonaws.com=127.0.0.1:9"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "not on the allow list" in done.stderr
    assert not (tmp_path / "p.sock").exists()


def test_the_kms_certificate_verifies_for_its_name_only_with_the_test_ca(tmp_path):
    files = ensure_kms_certificate(tmp_path, "kms.us-east-1.amazonaws.com")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(files.certificate, files.key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        for _ in range(3):
            conn, _ = listener.accept()
            try:
                with server_context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

    threading.Thread(target=serve, daemon=True).start()

    def handshake(hostname: str, cafile: Path | None) -> None:
        context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname=hostname) as tls:
            tls.sendall(b"x")

    handshake("kms.us-east-1.amazonaws.com", files.ca)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake("kms.eu-west-1.amazonaws.com", files.ca)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake("kms.us-east-1.amazonaws.com", None)  # the system's CAs do not know it
    listener.close()


def test_every_difference_is_in_the_docs_table():
    text = (PROJECT_ROOT / "docs" / "emulation.md").read_text()
    table = text.split("| topic | real enclave | emulated enclave |\n|---|---|---|\n")[1]
    rows = table.split("\n\n")[0].splitlines()
    assert rows == [f"| {d.topic} | {d.real} | {d.emulated} |" for d in emulation.DIFFERENCES]


def test_without_root_the_emulated_enclave_says_it_needs_root(monkeypatch):
    monkeypatch.setattr(jail.os, "geteuid", lambda: 1000)
    assert "needs root" in jail.unavailable_reason()


def test_without_unshare_the_emulated_enclave_says_so(monkeypatch):
    monkeypatch.setattr(jail.os, "geteuid", lambda: 0)
    monkeypatch.setattr(jail.shutil, "which", lambda name: None)
    assert "unshare" in jail.unavailable_reason()


def test_in_ci_a_missing_prerequisite_fails_instead_of_skipping(monkeypatch):
    from tests import test_emulated_enclave

    monkeypatch.setattr(jail, "unavailable_reason", lambda: "needs root")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the emulated enclave"):
        test_emulated_enclave.require_jail()
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="needs root"):
        test_emulated_enclave.require_jail()
