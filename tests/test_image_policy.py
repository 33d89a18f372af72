"""The image policy (enclave/policy.py): its file, and the decision it makes on a bundle header."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enclave.policy import (
    BundleRefused,
    ImagePolicy,
    PolicyError,
    load_policy,
    main,
    version_key,
)

ARN = "arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab"
OTHER = "arn:aws:kms:us-east-1:111111111111:key/ffffffff-12ab-34cd-56ef-1234567890ab"
CONTEXT = {"app_id": "sample-inference", "app_version": "1.2.0", "bundle_format": "1"}


def policy(**overrides) -> ImagePolicy:
    fields = {"region": "us-east-1", "kms_key_arns": (ARN,), "app_ids": ("sample-inference",),
              "minimum_app_version": None}
    fields.update(overrides)
    return ImagePolicy(**fields)


def test_header_under_the_pinned_key_of_a_pinned_app_is_accepted_with_that_key() -> None:
    assert policy().check_header([("aws-kms", ARN)], CONTEXT) == ARN


@pytest.mark.parametrize("keys", [
    [],
    [("aws-kms", OTHER)],
    [("raw", ARN)],
    [("aws-kms", ARN), ("test-static", "host-key")],
    [("aws-kms", ARN), ("aws-kms", OTHER)],
    [("aws-kms", ARN.replace("us-east-1", "eu-west-1"))],
])
def test_any_data_key_the_image_does_not_pin_refuses_the_bundle(keys) -> None:
    with pytest.raises(BundleRefused):
        policy().check_header(keys, CONTEXT)


@pytest.mark.parametrize("context", [
    {**CONTEXT, "app_id": "other"},
    {"app_version": "1.2.0"},
    {},
])
def test_an_app_the_image_does_not_pin_is_refused(context) -> None:
    with pytest.raises(BundleRefused, match="runs only sample-inference"):
        policy().check_header([("aws-kms", ARN)], context)


@pytest.mark.parametrize(("version", "allowed"), [
    ("1.1.9", False), ("1.2", True), ("1.2.0", True), ("1.2.0.0", True), ("1.10", True),
    ("2", True), ("0.9.99", False), ("1.2.0-beta", False), ("latest", False), (None, False),
])
def test_minimum_version_compares_numerically(version, allowed) -> None:
    context = {**CONTEXT, "app_version": version} if version else {"app_id": "sample-inference"}
    check = policy(minimum_app_version="1.2").check_context
    if allowed:
        check(context)
    else:
        with pytest.raises(BundleRefused):
            check(context)


def test_version_key_ignores_trailing_zeros_only() -> None:
    assert version_key("1.2.0") == version_key("1.2") < version_key("1.10") < version_key("2")
    assert version_key("10") > version_key("9.9.9")


@pytest.mark.parametrize("overrides", [
    {"region": "us-east"},
    {"kms_key_arns": ()},
    {"kms_key_arns": ("alias/enclavekey",)},
    {"kms_key_arns": (ARN.replace("us-east-1", "eu-west-1"),)},  # another region than the policy
    {"kms_key_arns": (ARN, ARN)},
    {"app_ids": ()},
    {"app_ids": ("Not_An_Id",)},
    {"minimum_app_version": "v1"},
])
def test_a_malformed_policy_is_refused(overrides) -> None:
    with pytest.raises(PolicyError):
        policy(**overrides)


def test_written_policy_is_canonical_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    code = main(["write", "-o", str(path), "--region", "us-east-1", "--key-arn", ARN,
                 "--app-id", "sample-inference", "--minimum-app-version", "1.2.0"])
    assert code == 0
    first = path.read_bytes()
    assert load_policy(path) == policy(minimum_app_version="1.2.0")
    assert load_policy(path).canonical_bytes() == first  # the same policy, the same bytes
    assert json.loads(first)["format"] == 1


@pytest.mark.parametrize("content", [None, b"{", b"[]", b'{"format": 2}',
                                     json.dumps({"format": 1, "region": "us-east-1",
                                                 "kms_key_arns": [ARN], "app_ids": ["a"],
                                                 "minimum_app_version": None,
                                                 "extra": True}).encode()])
def test_load_refuses_a_missing_or_malformed_file(tmp_path: Path, content) -> None:
    path = tmp_path / "policy.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PolicyError):
        load_policy(path)


def test_write_with_a_bad_value_exits_2_naming_it(tmp_path: Path, capsys) -> None:
    code = main(["write", "-o", str(tmp_path / "p.json"), "--region", "us-east-1",
                 "--key-arn", "alias/enclavekey", "--app-id", "sample-inference"])
    assert code == 2
    assert "not a KMS key ARN" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()


def test_restrict_device_leaves_the_nsm_to_root(tmp_path: Path) -> None:
    import os
    import socket

    from enclave.isolation import restrict_device

    if os.geteuid() != 0:
        pytest.skip("needs root: chown to root")
    path = tmp_path / "nsm.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        os.chmod(path, 0o777)
        restrict_device(str(path))
        st = os.stat(path)
        assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600)


@pytest.mark.parametrize("hardened", [False, True])
def test_a_hardened_runtime_hides_its_environment_from_processes_of_its_own_user(
        hardened: bool) -> None:
    """Positive control first: without PR_SET_DUMPABLE off, a same-user process reads it."""
    import inspect
    import os
    import subprocess

    from enclave import isolation

    if os.geteuid() != 0:
        pytest.skip("needs root: runs both processes as an unprivileged user")
    # The runtime's own function, run in a process of an ordinary user.
    source = ("import ctypes, os, sys, time\n"
              f"PR_SET_DUMPABLE = {isolation.PR_SET_DUMPABLE}\n"
              + inspect.getsource(isolation._prctl) + inspect.getsource(isolation.harden_runtime)
              + ("harden_runtime()\n" if hardened else "")
        + "print('ready', flush=True)\ntime.sleep(30)\n")
    env = {"PATH": "/usr/bin:/bin", "SECRET_MARKER": "s3cr3t"}
    target = subprocess.Popen(["python3", "-I", "-S", "-c", source], user=65534, group=65534,
                              extra_groups=[], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout.readline().strip() == "ready"
        reader = subprocess.run(
            ["python3", "-I", "-S", "-c",
             f"import sys\ntry:\n print(open('/proc/{target.pid}/environ').read())\n"
             "except OSError as e:\n print('denied', type(e).__name__)"],
            user=65534, group=65534, extra_groups=[], env={"PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=30)
        if hardened:
            assert reader.stdout.startswith("denied PermissionError")
        else:
            assert "SECRET_MARKER=s3cr3t" in reader.stdout
    finally:
        target.kill()
        target.wait()


def test_each_runtime_draws_its_own_block_of_app_users() -> None:
    """Runtimes sharing a machine (simulations, tests) must not kill each other's apps."""
    from enclave.isolation import POOL_BLOCK, RANDOM_BASE_LOW, UserPool

    bases = {UserPool(None, 4).base for _ in range(50)}
    assert len(bases) > 45
    assert all(base >= RANDOM_BASE_LOW and base % POOL_BLOCK == 0 for base in bases)
