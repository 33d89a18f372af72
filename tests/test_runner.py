"""Runs through the real API: only what the sealed manifest allows, and no plaintext left behind.

Bundles are sealed with the project's sealing code under a raw test key (standing in for attested
KMS); the runtime unseals them with the same key, as the enclave would after attestation.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from runtime_harness import Runtime, start_runtime, stop_runtime

from enclave.app_process import WITHHELD_LINE
from enclave.sealing import seal_directory

SECRET_SOURCE_LINE = 'raise ValueError("proprietary threshold " + str(0.8731))'

APP = f'''\
import os, subprocess, sys, time

mode = sys.argv[1]
if mode == "copy":
    source, target = sys.argv[2], sys.argv[3]
    with open(source, "rb") as f:
        data = f.read()
    with open(target, "wb") as f:
        f.write(data.upper())
    print("copied", len(data), "bytes")
elif mode == "noisy":
    sys.stdout.write("o" * 10000)
    sys.stderr.write("e" * 10000)
elif mode == "crash":
    {SECRET_SOURCE_LINE}
elif mode == "exit3":
    print("about to fail")
    sys.exit(3)
elif mode == "sleep":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with open(sys.argv[2], "w") as f:
        f.write(str(child.pid))
    time.sleep(60)
elif mode == "leak":
    os.symlink(os.path.abspath("app.py"), sys.argv[2])
    with open(sys.argv[2] + ".where", "w") as f:
        f.write(os.getcwd())
    time.sleep(60)
elif mode == "slowcopy":
    time.sleep(1.5)
    with open(sys.argv[2], "rb") as f:
        data = f.read()
    with open(sys.argv[3], "wb") as f:
        f.write(data.upper())
elif mode == "escape":
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            with open(sys.argv[2], "w") as f:
                f.write(str(os.getpid()))
            time.sleep(60)
        os._exit(0)
    time.sleep(0.5)
elif mode == "peek":
    results = dict(uid=os.getuid())
    for target in open(sys.argv[2]).read().split():
        try:
            if os.path.isdir(target):
                results[target] = sorted(os.listdir(target))
            else:
                results[target] = open(target, "rb").read(64).decode("latin-1")
        except OSError as exc:
            results[target] = "denied: " + type(exc).__name__
    import json
    with open(sys.argv[3], "w") as f:
        json.dump(results, f)
elif mode == "readonly":
    os.makedirs("locked/inner")
    open("locked/inner/f", "w").write("x")
    os.chmod("locked/inner", 0o500)
    os.chmod("locked", 0o000)
'''


def manifest(**overrides: Any) -> dict:
    m = {
        "format": 1,
        "app_id": "test-app",
        "app_version": "1.0.0",
        "entrypoints": {
            "copy": {"command": ["python3", "app.py", "copy"],
                     "args": [{"name": "input", "kind": "input"},
                              {"name": "output", "kind": "output"}]},
            "noisy": {"command": ["python3", "app.py", "noisy"], "args": []},
            "crash": {"command": ["python3", "app.py", "crash"], "args": []},
            "exit3": {"command": ["python3", "app.py", "exit3"], "args": []},
            "sleep": {"command": ["python3", "app.py", "sleep"],
                      "args": [{"name": "pidfile", "kind": "output"}]},
            "leak": {"command": ["python3", "app.py", "leak"],
                     "args": [{"name": "link", "kind": "output"}]},
            "readonly": {"command": ["python3", "app.py", "readonly"], "args": []},
            "slowcopy": {"command": ["python3", "app.py", "slowcopy"],
                         "args": [{"name": "input", "kind": "input"},
                                  {"name": "output", "kind": "output"}]},
            "escape": {"command": ["python3", "app.py", "escape"],
                       "args": [{"name": "pidfile", "kind": "output"}]},
            "peek": {"command": ["python3", "app.py", "peek"],
                     "args": [{"name": "targets", "kind": "input"},
                              {"name": "report", "kind": "output"}]},
            "echo": {"command": ["python3", "app.py", "echo"],
                     "args": [{"name": "word", "kind": "value", "optional": True}]},
            # Values the owner's pattern lets through whatever they are: only the runtime's own
            # rule (no value starts with '-') stands between the host and the interpreter.
            "lenient": {"command": ["python3", "app.py", "echo"],
                        "args": [{"name": f"v{i}", "kind": "value", "pattern": "^.{1,200}$",
                                  "optional": True} for i in range(6)]},
        },
        "output": {"stdout": True, "stderr": True, "max_bytes": 4096},
        "time_limit_seconds": 30,
        "concurrent_runs": 1,
    }
    m.update(overrides)
    return m


def seal_app(rt: Runtime, tmp_path: Path, name: str = "app.sealed", **overrides: Any) -> str:
    source = tmp_path / f"src-{name}"
    source.mkdir()
    (source / "manifest.json").write_text(json.dumps(manifest(**overrides)))
    (source / "app.py").write_text(APP)
    with open(rt.inbox / name, "wb") as out:
        seal_directory(source, out, key_provider=rt.key_provider)
    return name


def start(rt: Runtime, entrypoint: str, args: list[str] | None = None,
          bundle: str = "app.sealed", **extra: Any) -> tuple[int, dict]:
    status, body, _ = rt.request("POST", "/v1/runs", {
        "bundle": bundle, "entrypoint": entrypoint, "args": args or [],
        "credentials": {"access_key_id": "AKIDEXAMPLE",
                        "secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                        "session_token": "TOKEN-VALUE-1234"},
        **extra})
    return status, body


def run(rt: Runtime, entrypoint: str, args: list[str] | None = None, **extra: Any) -> dict:
    status, body = start(rt, entrypoint, args, **extra)
    assert status == 202, body
    return rt.wait_run(body["id"])


def private_entries(rt: Runtime) -> list[str]:
    return os.listdir(rt.config.private_root)


def written_by_running_app(rt: Runtime, name: str) -> Path | None:
    """A file a running app wrote (not only created) at an output path: private until the run
    ends."""
    for found in rt.config.private_root.glob(f"run-*/out/{name}"):
        try:
            if found.stat().st_size > 0:
                return found
        except FileNotFoundError:
            continue
    return None


def wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def rt(tmp_path: Path):
    runtime = start_runtime(tmp_path)
    yield runtime
    stop_runtime(runtime)


@pytest.fixture
def bundle(rt: Runtime, tmp_path: Path) -> str:
    return seal_app(rt, tmp_path)


# -- what a run does ---------------------------------------------------------------------------

def test_run_maps_paths_returns_stdout_and_output_digest(rt: Runtime, bundle: str) -> None:
    (rt.inbox / "in.txt").write_bytes(b"hello")
    view = run(rt, "copy", ["in.txt", "results/out.txt"])
    assert view["state"] == "succeeded" and view["exit_code"] == 0
    assert view["stdout"] == "copied 5 bytes\n"
    assert (rt.outbox / "results" / "out.txt").read_bytes() == b"HELLO"
    assert view["output_digests"] == {"results/out.txt": hashlib.sha256(b"HELLO").hexdigest()}


def test_private_dir_is_wiped_after_success(rt: Runtime, bundle: str) -> None:
    (rt.inbox / "in.txt").write_bytes(b"x")
    run(rt, "copy", ["in.txt", "out.txt"])
    assert private_entries(rt) == []


def test_nonzero_exit_fails_and_wipes(rt: Runtime, bundle: str) -> None:
    view = run(rt, "exit3")
    assert (view["state"], view["exit_code"]) == ("failed", 3)
    assert "status 3" in view["error"]
    assert private_entries(rt) == []


def test_files_the_app_made_unremovable_are_still_wiped(rt: Runtime, bundle: str) -> None:
    view = run(rt, "readonly")
    assert view["state"] == "succeeded"
    assert private_entries(rt) == []


def test_bad_bundle_fails_cleanly_and_wipes(rt: Runtime) -> None:
    (rt.inbox / "junk.sealed").write_bytes(b"not an encrypted message" * 100)
    view = run(rt, "copy", ["a", "b"], bundle="junk.sealed")
    assert view["state"] == "failed" and "unsealing" in view["error"]
    assert private_entries(rt) == []


def test_bundle_under_a_hosts_own_key_is_refused_before_any_key_request(
        rt: Runtime, tmp_path: Path) -> None:
    from runtime_harness import StaticKeyProvider

    source = tmp_path / "other"
    source.mkdir()
    (source / "manifest.json").write_text(json.dumps(manifest()))
    (source / "app.py").write_text(APP)
    with open(rt.inbox / "other.sealed", "wb") as out:
        seal_directory(source, out, key_provider=StaticKeyProvider())
    view = run(rt, "noisy", bundle="other.sealed")
    assert view["state"] == "failed" and view["stdout"] is None
    assert "this image trusts only aws-kms keys" in view["error"]
    assert rt.key_provider.decrypts == []
    assert private_entries(rt) == []


def test_run_request_cannot_name_the_app_id_it_trusts(rt: Runtime, bundle: str) -> None:
    status, body = start(rt, "noisy", expected_app_id="test-app")
    assert (status, body["error"]["code"]) == (400, "unknown_field")


# -- what the host may not do ------------------------------------------------------------------

def test_entrypoint_not_in_manifest_is_refused(rt: Runtime, bundle: str) -> None:
    view = run(rt, "shell")
    assert view["state"] == "failed"
    assert "unknown entrypoint 'shell'" in view["error"]
    assert view["exit_code"] is None
    assert private_entries(rt) == []


@pytest.mark.parametrize("args", [
    ["-c", "print(open('app.py').read())"],
    ["-m", "zipfile"],
    ["-s", "-m", "zipfile", "-c", "/tmp/x.zip", "."],
    ["--help"],
    ["-c"],
    ["-sm"],
])
def test_interpreter_flags_as_args_are_refused(rt: Runtime, bundle: str, args: list[str]) -> None:
    view = run(rt, "lenient", args)
    assert view["state"] == "failed" and view["exit_code"] is None
    assert view["stdout"] is None
    assert "may not start with '-'" in view["error"], view["error"]


@pytest.mark.parametrize("bundle_name", ["../sealed/x", "/etc/passwd", "a/../../x", "x\x00y"])
def test_traversal_in_bundle_name_is_refused(rt: Runtime, bundle_name: str) -> None:
    status, body = start(rt, "copy", ["a", "b"], bundle=bundle_name)
    assert (status, body["error"]["code"]) == (400, "bad_path")


@pytest.mark.parametrize("args", [
    ["../../etc/passwd", "out.txt"],
    ["/etc/passwd", "out.txt"],
    ["in.txt", "../escape.txt"],
    ["in.txt", "/tmp/escape.txt"],
])
def test_traversal_in_args_is_refused(rt: Runtime, bundle: str, args: list[str]) -> None:
    (rt.inbox / "in.txt").write_bytes(b"x")
    view = run(rt, "copy", args)
    assert view["state"] == "failed" and view["exit_code"] is None
    assert not (rt.config.exchange_root / "escape.txt").exists()


def test_input_symlink_planted_in_inbox_is_refused(rt: Runtime, bundle: str,
                                                   tmp_path: Path) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text("secret")
    os.symlink(secret, rt.inbox / "in.txt")
    view = run(rt, "copy", ["in.txt", "out.txt"])
    assert view["state"] == "failed" and "symbolic link" in view["error"]
    assert not (rt.outbox / "out.txt").exists()


def test_missing_bundle_is_404(rt: Runtime) -> None:
    status, body = start(rt, "copy", ["a", "b"], bundle="nothing.sealed")
    assert (status, body["error"]["code"]) == (404, "not_found")


# -- output policy -----------------------------------------------------------------------------

def test_output_is_capped_at_manifest_max_bytes(rt: Runtime, tmp_path: Path) -> None:
    seal_app(rt, tmp_path, output={"stdout": True, "stderr": True, "max_bytes": 100})
    view = run(rt, "noisy")
    assert view["stdout"] == "o" * 100 and view["stderr"] == "e" * 100


def test_stdout_and_stderr_suppressed_when_not_allowed(rt: Runtime, tmp_path: Path) -> None:
    seal_app(rt, tmp_path, output={"stdout": False, "stderr": False, "max_bytes": 100})
    view = run(rt, "crash")
    assert view["state"] == "failed"
    assert view["stdout"] is None and view["stderr"] is None
    assert "proprietary" not in json.dumps(rt.request("GET", "/v1/logs?since=0")[1])


def test_stderr_never_carries_source_lines_back(rt: Runtime, bundle: str) -> None:
    view = run(rt, "crash")
    assert view["state"] == "failed"
    assert "Traceback" in view["stderr"]
    assert SECRET_SOURCE_LINE not in view["stderr"]
    assert WITHHELD_LINE in view["stderr"]


# -- time limit, cancel, concurrency -----------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not yet reaped by its new parent) counts as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_time_limit_kills_the_whole_process_group(rt: Runtime, tmp_path: Path) -> None:
    seal_app(rt, tmp_path, time_limit_seconds=1)
    started = time.monotonic()
    view = run(rt, "sleep", ["child.pid"])
    assert view["state"] == "timed_out"
    assert time.monotonic() - started < 15
    child = int((rt.outbox / "child.pid").read_text())
    assert wait_for(lambda: not _pid_alive(child), 5)
    assert private_entries(rt) == []


def test_cancel_stops_a_running_app_and_wipes(rt: Runtime, bundle: str) -> None:
    status, body = start(rt, "sleep", ["child.pid"])
    run_id = body["id"]
    assert wait_for(lambda: written_by_running_app(rt, "child.pid"))
    status, _, _ = rt.request("DELETE", f"/v1/runs/{run_id}")
    assert status == 202
    view = rt.wait_run(run_id)
    assert view["state"] == "cancelled"
    assert private_entries(rt) == []
    status, body, _ = rt.request("DELETE", f"/v1/runs/{run_id}")
    assert (status, body["error"]["code"]) == (409, "run_finished")


def test_one_run_at_a_time_per_bundle(rt: Runtime, bundle: str) -> None:
    status, first = start(rt, "sleep", ["p1"])
    assert status == 202
    status, body = start(rt, "sleep", ["p2"])
    assert (status, body["error"]["code"]) == (409, "run_in_progress")
    rt.request("DELETE", f"/v1/runs/{first['id']}")
    rt.wait_run(first["id"])


def test_copying_the_bundle_does_not_bypass_the_limit(rt: Runtime, bundle: str) -> None:
    status, first = start(rt, "sleep", ["p1"])
    assert wait_for(lambda: written_by_running_app(rt, "p1"))
    shutil.copy(rt.inbox / bundle, rt.inbox / "copy.sealed")
    view = run(rt, "noisy", bundle="copy.sealed")
    assert view["state"] == "failed" and "already has 1 run" in view["error"]
    rt.request("DELETE", f"/v1/runs/{first['id']}")
    rt.wait_run(first["id"])


def test_manifest_may_allow_concurrent_runs(rt: Runtime, tmp_path: Path) -> None:
    seal_app(rt, tmp_path, concurrent_runs=2)
    first = run(rt, "noisy")  # the runtime learns the manifest's limit
    assert first["state"] == "succeeded"
    status, a = start(rt, "sleep", ["a.pid"])
    assert status == 202
    status, b = start(rt, "sleep", ["b.pid"])
    assert status == 202
    assert wait_for(lambda: written_by_running_app(rt, "a.pid")
                    and written_by_running_app(rt, "b.pid"))
    for job in (a, b):
        rt.request("DELETE", f"/v1/runs/{job['id']}")
        rt.wait_run(job["id"])


# -- the private directory is out of reach -----------------------------------------------------

def test_private_run_dir_cannot_be_read_through_the_api(rt: Runtime, bundle: str) -> None:
    status, body = start(rt, "leak", ["source.py"])
    assert wait_for(lambda: written_by_running_app(rt, "source.py.where"))
    where = written_by_running_app(rt, "source.py.where")
    assert where is not None
    private_dir = Path(where.read_text())
    assert rt.config.exchange_root not in private_dir.parents
    assert rt.config.private_root in private_dir.parents
    relative = os.path.relpath(private_dir / "app.py", rt.outbox)
    status, answer, _ = rt.request("GET", f"/v1/fs/outbox/{relative}")
    assert (status, answer["error"]["code"]) == (400, "bad_path")
    assert (private_dir / "app.py").exists()  # it was there to be taken, and was not
    rt.request("DELETE", f"/v1/runs/{body['id']}")
    view = rt.wait_run(body["id"])
    assert not private_dir.exists()
    # The link the app left at its output is not published: it would name its own plaintext.
    assert not os.path.lexists(rt.outbox / "source.py") and view["output_digests"] == {}


def test_credentials_are_never_shown_or_logged(rt: Runtime, bundle: str) -> None:
    view = run(rt, "noisy")
    everything = json.dumps([view, rt.request("GET", "/v1/runs")[1],
                             rt.request("GET", "/v1/logs?since=0")[1]])
    for secret in ("AKIDEXAMPLE", "wJalrXUtnFEMI", "TOKEN-VALUE-1234"):
        assert secret not in everything


# -- receipts ----------------------------------------------------------------------------------

def test_receipt_binds_bundle_inputs_and_outputs(rt: Runtime, bundle: str) -> None:
    (rt.inbox / "in.txt").write_bytes(b"data")
    view = run(rt, "copy", ["in.txt", "out.txt"])
    status, body, _ = rt.request("POST", f"/v1/runs/{view['id']}/receipt", {"nonce": "beef"})
    assert status == 200
    receipt = body["receipt"]
    assert receipt["bundle"] == {
        "path": bundle, "sha256": hashlib.sha256((rt.inbox / bundle).read_bytes()).hexdigest()}
    assert receipt["inputs"] == {"in.txt": hashlib.sha256(b"data").hexdigest()}
    assert receipt["outputs"] == {"out.txt": hashlib.sha256(b"DATA").hexdigest()}
    assert (receipt["app_id"], receipt["state"]) == ("test-app", "succeeded")
    call = rt.nsm.calls[-1]
    assert call["nonce"] == b"\xbe\xef"
    # Recomputed here from the documented rule (openapi.yaml), not by the function under test.
    canonical = json.dumps(receipt, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=True).encode()
    assert call["user_data"] == (b"sealed-enclave/run-receipt/v2\x00"
                                 + hashlib.sha384(canonical).digest())


def test_receipt_is_refused_while_the_run_is_in_progress(rt: Runtime, bundle: str) -> None:
    status, body = start(rt, "sleep", ["x.pid"])
    status, answer, _ = rt.request("POST", f"/v1/runs/{body['id']}/receipt", {"nonce": "00"})
    assert (status, answer["error"]["code"]) == (409, "run_in_progress")
    rt.request("DELETE", f"/v1/runs/{body['id']}")
    rt.wait_run(body["id"])


# -- the production key provider ---------------------------------------------------------------

@pytest.fixture
def kms_sealed_bundle(monkeypatch, tmp_path: Path):
    import boto3
    import botocore.session
    from moto import mock_aws

    from enclave.bundle_format import kms_key_provider

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "eu-west-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    source = tmp_path / "kms-src"
    source.mkdir()
    (source / "manifest.json").write_text(json.dumps(manifest()))
    (source / "app.py").write_text(APP)
    with mock_aws():
        arn = boto3.client("kms", region_name="eu-west-1").create_key()["KeyMetadata"]["Arn"]
        bundle = tmp_path / "kms.sealed"
        with open(bundle, "wb") as out:
            provider = kms_key_provider(arn, botocore_session=botocore.session.Session())
            seal_directory(source, out, key_provider=provider)
    return bundle, arn


def _factory(tmp_path: Path):
    from runtime_harness import FakeNsm

    from enclave.config import RuntimeConfig
    from enclave.kms_wiring import attested_kms_key_provider_factory

    config = RuntimeConfig(exchange_root=tmp_path / "x", private_root=tmp_path / "p",
                           kms_endpoint="https://kms.{region}.amazonaws.com")
    return attested_kms_key_provider_factory(config, FakeNsm())


def test_bundle_header_names_its_kms_key(kms_sealed_bundle) -> None:
    from enclave.runner import read_bundle_header

    bundle, arn = kms_sealed_bundle
    with open(bundle, "rb") as f:
        assert read_bundle_header(f, "kms.sealed").data_keys == (("aws-kms", arn),)


def _policy_for(arn: str):
    from enclave.policy import ImagePolicy

    return ImagePolicy(region=arn.split(":")[3], kms_key_arns=(arn,), app_ids=("test-app",))


def test_production_provider_uses_the_pinned_key_and_the_policys_region(
        kms_sealed_bundle, tmp_path: Path) -> None:
    from enclave.run_records import Credentials

    _bundle, arn = kms_sealed_bundle
    provider = _factory(tmp_path)(Credentials("AKID", "SECRET", "TOKEN"), arn, _policy_for(arn))
    assert provider.config.key_arn == arn
    assert provider.config.kms_client.meta.endpoint_url == "https://kms.eu-west-1.amazonaws.com"
    assert provider.config.kms_client.meta.region_name == "eu-west-1"


def test_production_provider_needs_credentials(kms_sealed_bundle, tmp_path: Path) -> None:
    from enclave.run_records import RunFailure

    _bundle, arn = kms_sealed_bundle
    with pytest.raises(RunFailure, match="no AWS credentials"):
        _factory(tmp_path)(None, arn, _policy_for(arn))


def test_production_provider_guards_the_context_before_kms(kms_sealed_bundle,
                                                           tmp_path: Path) -> None:
    """Defence in depth: even a header swapped after the runner's check never reaches KMS."""
    from aws_encryption_sdk.exceptions import DecryptKeyError
    from aws_encryption_sdk.identifiers import Algorithm
    from aws_encryption_sdk.structures import EncryptedDataKey, MasterKeyInfo

    from enclave.run_records import Credentials

    _bundle, arn = kms_sealed_bundle
    provider = _factory(tmp_path)(Credentials("a", "b"), arn, _policy_for(arn))
    kms_calls = []
    provider.config.kms_client.decrypt = lambda **kw: kms_calls.append(kw)
    edk = EncryptedDataKey(key_provider=MasterKeyInfo("aws-kms", arn.encode()),
                           encrypted_data_key=b"blob")
    master_key = provider._new_master_key(arn)
    with pytest.raises(DecryptKeyError, match="refused before KMS.*runs only test-app"):
        master_key.decrypt_data_key(edk, Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY,
                                  {"app_id": "someone-else", "app_version": "1.0.0",
                                   "bundle_format": "1"})
    assert kms_calls == []


# -- runtime start and stop --------------------------------------------------------------------

def test_plaintext_left_by_a_dead_runtime_is_wiped_at_start(tmp_path: Path) -> None:
    from runtime_harness import traversable_dir

    base = traversable_dir(tmp_path)
    leftover = base / "sealed" / "run-deadbeef" / "app"
    leftover.mkdir(parents=True)
    (leftover / "model.bin").write_bytes(b"weights")
    runtime = start_runtime(tmp_path, exchange_root=base / "exchange",
                            private_root=base / "sealed")
    try:
        assert private_entries(runtime) == []
    finally:
        stop_runtime(runtime)


def test_runtime_shutdown_cancels_runs_and_wipes(rt: Runtime, bundle: str) -> None:
    status, body = start(rt, "sleep", ["s.pid"])
    assert wait_for(lambda: written_by_running_app(rt, "s.pid"))
    rt.server.runner.shutdown(timeout=15)
    assert rt.server.runner.get(body["id"]).state == "cancelled"
    assert private_entries(rt) == []


# -- the image policy: what the host may not make the enclave unseal ---------------------------

def _seal_with(rt: Runtime, tmp_path: Path, name: str, key_provider: Any, **overrides: Any) -> str:
    source = tmp_path / f"src-{name}"
    source.mkdir()
    (source / "manifest.json").write_text(json.dumps(manifest(**overrides)))
    (source / "app.py").write_text(APP)
    with open(rt.inbox / name, "wb") as out:
        seal_directory(source, out, key_provider=key_provider)
    return name


def test_bundle_with_an_extra_raw_data_key_is_refused_before_any_key_request(
        rt: Runtime, tmp_path: Path) -> None:
    """A genuine key data key beside one of the host's: which one would be used is not the
    host's choice to make, so the bundle is refused whole."""
    from fake_kms_key import FakeKmsKeyProvider
    from runtime_harness import StaticKeyProvider

    both = FakeKmsKeyProvider(secret=rt.key_provider.config.secret)
    both.add_master_key_provider(StaticKeyProvider())
    name = _seal_with(rt, tmp_path, "two-keys.sealed", both)
    view = run(rt, "noisy", bundle=name)
    assert view["state"] == "failed" and "test-static" in view["error"]
    assert rt.key_provider.decrypts == []


def test_bundle_under_an_unpinned_kms_key_is_refused(rt: Runtime, tmp_path: Path) -> None:
    from fake_kms_key import OTHER_KEY_ARN, FakeKmsKeyProvider

    name = _seal_with(rt, tmp_path, "other-arn.sealed", FakeKmsKeyProvider(key_arn=OTHER_KEY_ARN))
    view = run(rt, "noisy", bundle=name)
    assert view["state"] == "failed" and OTHER_KEY_ARN in view["error"]
    assert rt.key_provider.decrypts == []


def test_bundle_of_an_unpinned_app_is_refused_before_any_key_request(
        rt: Runtime, tmp_path: Path) -> None:
    name = _seal_with(rt, tmp_path, "other-app.sealed", rt.key_provider, app_id="other-app")
    view = run(rt, "noisy", bundle=name)
    assert view["state"] == "failed"
    assert "'other-app'; this image runs only test-app, sample-inference" in view["error"]
    assert rt.key_provider.decrypts == []


@pytest.fixture
def rt_minimum(tmp_path: Path):
    from dataclasses import replace

    from runtime_harness import TEST_POLICY

    runtime = start_runtime(tmp_path, image_policy=replace(TEST_POLICY, minimum_app_version="2.0"))
    yield runtime
    stop_runtime(runtime)


@pytest.mark.parametrize(("version", "runs"), [("1.9.9", False), ("1.10", False), ("2", True),
                                               ("2.0.1", True), ("10.0", True),
                                               ("2.0-rc1", False)])
def test_minimum_version_refuses_older_releases_before_any_key_request(
        rt_minimum: Runtime, tmp_path: Path, version: str, runs: bool) -> None:
    name = _seal_with(rt_minimum, tmp_path, "versioned.sealed", rt_minimum.key_provider,
                      app_version=version)
    view = run(rt_minimum, "noisy", bundle=name)
    assert (view["state"] == "succeeded") is runs, view["error"]
    if not runs:
        assert "minimum version 2.0" in view["error"] or "requires at least 2.0" in view["error"]
        assert rt_minimum.key_provider.decrypts == []


def test_a_runtime_without_an_image_policy_runs_nothing(tmp_path: Path) -> None:
    runtime = start_runtime(tmp_path, image_policy=None)
    try:
        name = seal_app(runtime, tmp_path)
        view = run(runtime, "noisy", bundle=name)
        assert view["state"] == "failed" and "without an image policy" in view["error"]
        assert runtime.key_provider.decrypts == []
    finally:
        stop_runtime(runtime)


# -- what a compromised app may not do (needs root: runs get their own users) ------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: per-run users for apps")


@needs_root
def test_app_runs_as_its_own_unprivileged_user(rt: Runtime, bundle: str) -> None:
    (rt.inbox / "targets.txt").write_text(str(rt.inbox))
    view = run(rt, "peek", ["targets.txt", "report.json"])
    assert view["state"] == "succeeded", view
    report = json.loads((rt.outbox / "report.json").read_text())
    assert report["uid"] not in (0, os.getuid())
    assert report[str(rt.inbox)] == "denied: PermissionError"  # the exchange is not the app's


@needs_root
def test_app_cannot_read_another_runs_private_directory(rt: Runtime, tmp_path: Path) -> None:
    seal_app(rt, tmp_path, concurrent_runs=2)
    status, victim = start(rt, "sleep", ["victim.pid"])
    assert status == 202 and wait_for(lambda: written_by_running_app(rt, "victim.pid"))
    victim_dir = written_by_running_app(rt, "victim.pid").parent.parent
    (rt.inbox / "targets.txt").write_text(f"{victim_dir} {victim_dir / 'app' / 'app.py'} "
                                          f"{rt.config.private_root}")
    view = run(rt, "peek", ["targets.txt", "report.json"])
    assert view["state"] == "succeeded", view
    report = json.loads((rt.outbox / "report.json").read_text())
    assert report[str(victim_dir)] == "denied: PermissionError"
    assert report[str(victim_dir / "app" / "app.py")] == "denied: PermissionError"
    assert report[str(rt.config.private_root)] == "denied: PermissionError"  # not listable
    rt.request("DELETE", f"/v1/runs/{victim['id']}")
    rt.wait_run(victim["id"])


@needs_root
def test_app_that_detaches_with_setsid_and_double_fork_does_not_outlive_its_run(
        rt: Runtime, bundle: str) -> None:
    view = run(rt, "escape", ["survivor.pid"])
    assert view["state"] == "succeeded", view
    survivor = int((rt.outbox / "survivor.pid").read_text())
    assert not _pid_alive(survivor)


def test_input_replaced_mid_run_receipt_names_what_the_app_read(rt: Runtime, bundle: str) -> None:
    (rt.inbox / "in.txt").write_bytes(b"original")
    status, body = start(rt, "slowcopy", ["in.txt", "out.txt"])
    assert status == 202
    assert wait_for(lambda: rt.server.runner.get(body["id"]).state == "running")
    with open(rt.inbox / "in.txt", "rb") as f:  # the host swaps the file under the run
        assert f.read() == b"original"
    status, _, _ = rt.request("PUT", "/v1/fs/inbox/in.txt", b"swapped!")
    assert status in (200, 201)
    view = rt.wait_run(body["id"])
    assert view["state"] == "succeeded", view
    assert (rt.outbox / "out.txt").read_bytes() == b"ORIGINAL"
    status, answer, _ = rt.request("POST", f"/v1/runs/{body['id']}/receipt", {"nonce": "01"})
    assert answer["receipt"]["inputs"] == {"in.txt": hashlib.sha256(b"original").hexdigest()}
    assert answer["receipt"]["outputs"] == {"out.txt": hashlib.sha256(b"ORIGINAL").hexdigest()}


def test_receipt_names_only_the_runs_own_outputs(rt: Runtime, bundle: str) -> None:
    """A file another party puts in the outbox during the run is not in the run's receipt."""
    (rt.inbox / "in.txt").write_bytes(b"abc")
    status, body = start(rt, "slowcopy", ["in.txt", "out.txt"])
    assert wait_for(lambda: rt.server.runner.get(body["id"]).state == "running")
    rt.request("PUT", "/v1/fs/outbox/planted.txt", b"not the app's")
    view = rt.wait_run(body["id"])
    assert view["output_digests"] == {"out.txt": hashlib.sha256(b"ABC").hexdigest()}
