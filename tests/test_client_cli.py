"""`python -m client`: parsing, exit-code mapping, and each command against the real runtime.

The runtime server (tests/runtime_harness.py) runs in this process on a Unix socket; runs are
real sealed apps (APP below), attestation documents are signed by the development PKI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from client import cli
from client.commands.run import run_arguments
from client.errors import (
    AwsError,
    ClientError,
    EnclaveError,
    ExitStatus,
    NotFoundError,
    TimeoutExpired,
    UsageError,
    VerificationError,
)
from enclave.sealing import seal_directory
from tests.runtime_harness import Runtime, start_runtime, stop_runtime

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RUNBOOK_COMMANDS = {"proxy", "enclave", "sync", "push", "pull", "run", "attest", "status", "logs",
                    "simulate"}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SEALED_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("SEALED_SIM_DIR", str(tmp_path / "sim"))
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))  # no nitro-cli, no vsock-proxy
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAHOSTTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "host-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "host-token")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")


@pytest.fixture
def runtime(exchange_runtime):
    return exchange_runtime


def sock(runtime: Runtime) -> list[str]:
    return ["--socket", runtime.socket_path]


APP = """\
import os, signal, sys, time

mode = sys.argv[1]
if mode == "predict":
    with open(sys.argv[2]) as f, open(sys.argv[3], "w") as out:
        out.write(f.read() + sys.argv[4])
    print("prediction: 0.93")
elif mode == "fail":
    print("prediction: none", file=sys.stderr)
    sys.exit(3)
elif mode == "sleep":
    time.sleep(20)
elif mode == "killed":
    os.kill(os.getpid(), signal.SIGKILL)
"""


def seal_client_app(rt: Runtime, tmp_path: Path, name: str = "app.sealed") -> str:
    """A real sealed app in the inbox: predict (input, output, value), fail, sleep, killed."""
    entry = {"command": ["python3", "app.py"], "args": []}
    entrypoints = {mode: {**entry, "command": ["python3", "app.py", mode]}
                   for mode in ("fail", "sleep", "killed")}
    entrypoints["predict"] = {"command": ["python3", "app.py", "predict"],
                              "args": [{"name": "data", "kind": "input"},
                                       {"name": "result", "kind": "output"},
                                       {"name": "threshold", "kind": "value"}]}
    source = tmp_path / f"src-{name}"
    source.mkdir()
    (source / "manifest.json").write_text(json.dumps({
        "format": 1, "app_id": "test-app", "app_version": "1.0.0", "entrypoints": entrypoints,
        "output": {"stdout": True, "stderr": True, "max_bytes": 4096},
        "time_limit_seconds": 30, "concurrent_runs": 4}))
    (source / "app.py").write_text(APP)
    with open(rt.inbox / name, "wb") as out:
        seal_directory(source, out, key_provider=rt.key_provider)
    return name


# -- parsing and exit codes ------------------------------------------------------------------------


def test_every_runbook_command_is_registered():
    parser = cli.build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices
    assert RUNBOOK_COMMANDS <= set(choices)


def test_unknown_command_is_usage_error(capsys):
    assert cli.main(["frobnicate"]) == ExitStatus.USAGE


def test_missing_required_option_is_usage_error(capsys):
    assert cli.main(["run", "-s", "predict"]) == ExitStatus.USAGE
    assert "-f/--file" in capsys.readouterr().err


def test_global_options_accepted_after_the_command():
    args = cli.apply_global_defaults(cli.build_parser().parse_args(
        ["status", "--json", "--socket", "/x.sock", "--timeout", "3"]))
    assert args.json is True and args.socket == "/x.sock" and args.timeout == 3.0


def test_global_defaults_when_not_given():
    args = cli.apply_global_defaults(cli.build_parser().parse_args(["status"]))
    assert (args.json, args.cid, args.socket, args.region, args.timeout) == \
        (False, None, None, None, 30.0)


@pytest.mark.parametrize(("error", "status"), [
    (UsageError("u"), 2), (VerificationError("v"), 3), (NotFoundError("n"), 4),
    (EnclaveError("e"), 5), (AwsError("a"), 6), (TimeoutExpired("t"), 7), (ClientError("c"), 1),
    (OSError(28, "No space left on device"), 1), (KeyboardInterrupt(), 130),
])
def test_exceptions_map_to_documented_exit_codes(monkeypatch, capsys, error, status):
    def fail(args):
        raise error

    monkeypatch.setattr("client.commands.status.status_command", fail)
    assert cli.main(["status"]) == status
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback


def test_error_message_is_one_prefixed_line(capsys):
    cli.main(["--socket", "/nonexistent/rt.sock", "status"])
    err = capsys.readouterr().err
    assert err.startswith("error: no enclave runtime answers at unix:/nonexistent/rt.sock")
    assert err.count("\n") == 1


def test_python_dash_m_client_exits_with_mapped_status(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path), SEALED_SIM_DIR=str(tmp_path / "sim"))
    done = subprocess.run([sys.executable, "-m", "client", "status"], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True)
    assert done.returncode == ExitStatus.NOT_FOUND
    assert "simulate up" in done.stderr


def test_run_arguments_split_like_a_shell_then_append_extras():
    assert run_arguments("input.csv 'out dir/r.json' 0.5", ["--", "x"]) == \
        ["input.csv", "out dir/r.json", "0.5", "--", "x"]


def test_run_arguments_with_unbalanced_quotes_is_usage_error():
    with pytest.raises(UsageError, match="shell-quoted"):
        run_arguments("'oops", [])


# -- push and pull ---------------------------------------------------------------------------------


def test_push_then_pull_round_trip(runtime, tmp_path, capsys):
    data = os.urandom(200_000)
    (tmp_path / "in.bin").write_bytes(data)
    assert cli.main([*sock(runtime), "--json", "push", str(tmp_path / "in.bin"), "d.bin"]) == 0
    pushed = json.loads(capsys.readouterr().out)
    assert pushed["remote"] == "inbox/d.bin" and pushed["size"] == len(data)
    (runtime.outbox / "r.bin").write_bytes(data[::-1])
    out = tmp_path / "out"
    out.mkdir()
    assert cli.main([*sock(runtime), "pull", "r.bin", str(out)]) == 0
    assert (out / "r.bin").read_bytes() == data[::-1]


def test_push_default_name_and_directory_destination(runtime, tmp_path):
    (tmp_path / "a.csv").write_text("x")
    (runtime.inbox / "sub").mkdir()
    assert cli.main([*sock(runtime), "push", str(tmp_path / "a.csv")]) == 0
    assert cli.main([*sock(runtime), "push", str(tmp_path / "a.csv"), "inbox/sub/"]) == 0
    assert (runtime.inbox / "a.csv").exists()
    assert (runtime.inbox / "sub" / "a.csv").exists()


def test_push_into_outbox_is_refused_before_sending(runtime, tmp_path, monkeypatch):
    def no_upload(*args, **kwargs):
        raise AssertionError("the upload was sent")

    monkeypatch.setattr("client.api.RuntimeClient.upload", no_upload)
    (tmp_path / "a").write_text("x")
    assert cli.main([*sock(runtime), "push", str(tmp_path / "a"), "outbox/a"]) == ExitStatus.USAGE
    assert os.listdir(runtime.outbox) == []


def test_push_traversal_name_is_refused(runtime, tmp_path):
    (tmp_path / "a").write_text("x")
    assert cli.main([*sock(runtime), "push", str(tmp_path / "a"), "../../etc/a"]) == \
        ExitStatus.USAGE


def test_push_missing_local_file_is_not_found(runtime, tmp_path):
    assert cli.main([*sock(runtime), "push", str(tmp_path / "nope")]) == ExitStatus.NOT_FOUND


def test_pull_missing_remote_is_not_found_and_leaves_no_file(runtime, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main([*sock(runtime), "pull", "missing.json"]) == ExitStatus.NOT_FOUND
    assert list(tmp_path.glob("*missing*")) == []


def test_pull_interrupted_leaves_no_partial_file(runtime, tmp_path, monkeypatch):
    (runtime.outbox / "big.bin").write_bytes(b"z" * 3_000_000)

    # The runtime does not break a download on request: the client's download fails midway.
    def broken_download(self, area, path, sink, **kwargs):
        sink.write(b"partial")
        raise EnclaveError("connection lost")

    monkeypatch.setattr("client.api.RuntimeClient.download", broken_download)
    assert cli.main([*sock(runtime), "pull", "big.bin", str(tmp_path / "big.bin")]) == \
        ExitStatus.ENCLAVE_ERROR
    assert not (tmp_path / "big.bin").exists()
    assert not list(tmp_path.glob(".big.bin.*"))


def test_pull_to_stdout(runtime, capsysbinary):
    (runtime.outbox / "r.txt").write_bytes(b"result\n")
    assert cli.main([*sock(runtime), "pull", "r.txt", "-"]) == 0
    assert capsysbinary.readouterr().out == b"result\n"


# -- run, status, logs -----------------------------------------------------------------------------


@pytest.fixture
def app(runtime, tmp_path):
    return seal_client_app(runtime, tmp_path)


def test_run_sends_host_credentials_and_exits_with_app_code(runtime, app, capsys):
    (runtime.inbox / "data.csv").write_text("rows;")
    code = cli.main([*sock(runtime), "run", "-f", app, "-s", "predict",
                     "-a", "data.csv 'r.json'", "--", "0.5"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert (runtime.outbox / "r.json").read_text() == "rows;0.5"
    used = runtime.credentials[-1]
    assert (used.access_key_id, used.secret_access_key, used.session_token) == \
        ("AKIAHOSTTEST", "host-secret", "host-token")
    assert "prediction: 0.93" in captured.out
    assert "succeeded" in captured.err


def test_failing_app_exits_with_its_own_code(runtime, app, capsys):
    assert cli.main([*sock(runtime), "run", "-f", "inbox/app.sealed", "-s", "fail"]) == 3
    assert "failed" in capsys.readouterr().err


def test_run_no_wait_prints_id(runtime, app, capsys):
    assert cli.main([*sock(runtime), "--json", "run", "-f", app, "-s", "fail",
                     "--no-wait"]) == 0
    run_id = json.loads(capsys.readouterr().out)["id"]
    assert runtime.wait_run(run_id)["exit_code"] == 3


def test_run_missing_bundle_is_not_found(runtime):
    assert cli.main([*sock(runtime), "run", "-f", "none.sealed", "-s", "p"]) == \
        ExitStatus.NOT_FOUND


def test_run_wait_timeout_is_exit_7(runtime, app, capsys):
    assert cli.main([*sock(runtime), "run", "-f", app, "-s", "sleep",
                     "--wait-timeout", "0.2"]) == ExitStatus.TIMEOUT
    capsys.readouterr()
    assert cli.main([*sock(runtime), "--json", "status"]) == 0
    (run,) = json.loads(capsys.readouterr().out)["runs"]
    assert cli.main([*sock(runtime), "status", run["id"], "--cancel"]) == 0
    assert runtime.wait_run(run["id"])["state"] == "cancelled"


def test_status_lists_runs_as_json(runtime, app, capsys):
    cli.main([*sock(runtime), "--json", "run", "-f", app, "-s", "fail", "--no-wait"])
    run_id = json.loads(capsys.readouterr().out)["id"]
    assert cli.main([*sock(runtime), "--json", "status"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["found_by"] == "--socket" and data["runs"][0]["id"] == run_id


def test_status_of_unknown_run_is_not_found(runtime):
    assert cli.main([*sock(runtime), "status", "r99"]) == ExitStatus.NOT_FOUND


def test_logs_prints_lines(runtime, capsys):
    assert cli.main([*sock(runtime), "logs"]) == 0
    assert any(line.endswith("serving") for line in capsys.readouterr().out.splitlines())


# -- attest ----------------------------------------------------------------------------------------


class SigningNsm:
    """An NSM answering with real-format documents from the development PKI; `replay_nonce`
    makes it answer with a document for another nonce, as a replaying runtime would."""

    def __init__(self, pki, pcrs):
        self.pki = pki
        self.pcrs = pcrs
        self.replay_nonce = None
        self.nonces = []

    def attestation(self, *, user_data=None, nonce=None, public_key=None):
        from client.sim.nsm import build_attestation_document

        self.nonces.append(nonce)
        return build_attestation_document(self.pki, pcrs=self.pcrs, module_id="i-sim",
                                          nonce=self.replay_nonce or nonce, user_data=user_data,
                                          public_key=public_key)


@pytest.fixture
def signing_runtime(tmp_path):
    """The real runtime whose NSM signs with the development PKI."""
    from client.sim import pki as sim_pki

    pki = sim_pki.load_or_create(tmp_path / "sim")
    nsm = SigningNsm(pki, {i: bytes([i + 1]) * 48 for i in range(3)})
    runtime = start_runtime(tmp_path, nsm=nsm)
    runtime.pcrs = nsm.pcrs
    runtime.root_pem = tmp_path / "sim" / "pki" / "root.pem"
    yield runtime
    stop_runtime(runtime)


def attest_args(rt, *extra):
    return [*sock(rt), "attest", "--root", str(rt.root_pem), *extra]


def test_attest_verifies_fresh_document_against_expected_pcr0(signing_runtime, capsys):
    rt = signing_runtime
    assert cli.main([*attest_args(rt, "--expect-pcr0", rt.pcrs[0].hex()), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["verified"] is True and result["pcrs_checked"] == [0]


def test_attest_wrong_pcr0_fails_with_exit_3(signing_runtime):
    assert cli.main(attest_args(signing_runtime, "--expect-pcr0", "ab" * 48)) == \
        ExitStatus.VERIFICATION_FAILED


def test_attest_replayed_document_fails(signing_runtime):
    rt = signing_runtime
    rt.nsm.replay_nonce = bytes(32)  # the runtime answers with a document for another nonce
    assert cli.main(attest_args(rt, "--expect-pcr0", rt.pcrs[0].hex())) == \
        ExitStatus.VERIFICATION_FAILED


def test_attest_without_any_expectation_fails_closed(signing_runtime):
    assert cli.main(attest_args(signing_runtime)) == ExitStatus.VERIFICATION_FAILED


def test_attest_against_pinned_aws_root_refuses_development_document(signing_runtime):
    rt = signing_runtime
    assert cli.main([*sock(rt), "attest", "--expect-pcr0", rt.pcrs[0].hex()]) == \
        ExitStatus.VERIFICATION_FAILED


def test_attest_measurements_file_in_nitro_cli_format(signing_runtime, tmp_path):
    rt = signing_runtime
    eif = tmp_path / "image.eif"
    eif.write_bytes(b"eif")
    (tmp_path / "image.json").write_text(json.dumps({"Measurements": {
        "HashAlgorithm": "Sha384 { ... }", **{f"PCR{i}": rt.pcrs[i].hex() for i in range(3)}}}))
    assert cli.main(attest_args(rt, "--eif", str(eif))) == 0
    (tmp_path / "image.json").write_text(json.dumps({"Measurements": {"PCR0": rt.pcrs[0].hex(),
                                                                      "PCR2": "cd" * 48}}))
    assert cli.main(attest_args(rt, "--eif", str(eif))) == ExitStatus.VERIFICATION_FAILED


def test_attest_sends_a_new_32_byte_nonce_each_time(signing_runtime):
    rt = signing_runtime
    for _ in range(2):
        cli.main(attest_args(rt, "--expect-pcr0", rt.pcrs[0].hex()))
    nonces = rt.nsm.nonces
    assert len(nonces) == 2 and nonces[0] != nonces[1]
    assert all(len(n) == 32 for n in nonces)


def test_terminal_escape_sequences_in_app_output_are_neutralised():
    import io

    from client.output import terminal_safe

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert terminal_safe("ok\x1b]0;pwned\x07\n", Tty()) == "ok\ufffd]0;pwned\ufffd\n"
    assert terminal_safe("ok\x1b[2J", io.StringIO()) == "ok\x1b[2J"  # files get the bytes


def test_progress_line_only_on_a_terminal():
    import io

    from client.output import ProgressBar

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = ProgressBar("push a", 2048, stream=stream)
        bar(1024)
        bar(2048)
        bar.finish()
    assert "100.0%" in tty.getvalue() and "2.0 KiB" in tty.getvalue()
    assert pipe.getvalue() == ""


def test_run_killed_by_a_signal_exits_like_a_shell(runtime, app):
    assert cli.main([*sock(runtime), "run", "-f", app, "-s", "killed"]) == 137


def test_run_failing_before_the_app_ran_is_an_enclave_error(runtime, capsys):
    (runtime.inbox / "app.sealed").write_bytes(b"not a sealed bundle")
    assert cli.main([*sock(runtime), "run", "-f", "app.sealed", "-s", "p"]) == \
        ExitStatus.ENCLAVE_ERROR


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_timeout_must_be_positive_seconds(value, capsys):
    assert cli.main(["--timeout", value, "status"]) == ExitStatus.USAGE
    assert "positive number of seconds" in capsys.readouterr().err
