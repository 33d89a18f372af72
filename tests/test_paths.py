"""One path rule for every command: `inbox/` and `outbox/` prefixes mean the same in push, pull,
rm, `run -f` and in a run's own arguments. Against the real runtime server, at the command line.
"""

from __future__ import annotations

import pytest

from client.cli import main
from client.errors import ExitStatus
from tests.runtime_harness import start_runtime, stop_runtime
from tests.test_runner import seal_app


@pytest.fixture
def rt(tmp_path, monkeypatch):
    monkeypatch.setenv("SEALED_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAHOSTTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "host-secret")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    runtime = start_runtime(tmp_path)
    seal_app(runtime, tmp_path)
    (tmp_path / "in.txt").write_text("patients\n")
    yield runtime
    stop_runtime(runtime)


def cli(rt, *argv: str) -> int:
    return main(["--socket", rt.socket_path, *argv])


@pytest.mark.parametrize(("source", "target"), [
    ("inbox/in.txt", "outbox/out.txt"),
    ("in.txt", "out.txt"),
    ("inbox/in.txt", "out.txt"),
])
def test_run_arguments_read_area_prefixes_like_push_and_pull(rt, tmp_path, capsys, source,
                                                             target):
    assert cli(rt, "push", str(tmp_path / "in.txt"), "inbox/in.txt") == 0
    code = cli(rt, "run", "-f", "inbox/app.sealed", "-s", "copy", "-a", f"{source} {target}")
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in rt.outbox.iterdir()) == ["out.txt"]  # no outbox/outbox/
    assert cli(rt, "pull", "outbox/out.txt", str(tmp_path / "got.txt")) == 0
    assert (tmp_path / "got.txt").read_text() == "PATIENTS\n"


def test_input_in_the_outbox_is_refused_with_what_to_do(rt, tmp_path, capsys):
    (rt.outbox / "earlier.txt").write_text("x")
    code = cli(rt, "run", "-f", "app.sealed", "-s", "copy", "-a", "outbox/earlier.txt out.txt")
    err = capsys.readouterr().err
    assert code == ExitStatus.ENCLAVE_ERROR
    assert "'outbox/earlier.txt' is in the outbox, but input arguments are paths in the " \
        "inbox" in err
    assert not (rt.outbox / "out.txt").exists()


def test_output_in_the_inbox_is_refused(rt, tmp_path, capsys):
    assert cli(rt, "push", str(tmp_path / "in.txt")) == 0
    code = cli(rt, "run", "-f", "app.sealed", "-s", "copy", "-a", "in.txt inbox/out.txt")
    assert code == ExitStatus.ENCLAVE_ERROR
    assert "output arguments are paths in the outbox" in capsys.readouterr().err
    assert not (rt.inbox / "out.txt").exists()


def test_rm_removes_inbox_files_with_or_without_the_prefix(rt, tmp_path, capsys):
    assert cli(rt, "push", str(tmp_path / "in.txt"), "a.txt") == 0
    assert cli(rt, "push", str(tmp_path / "in.txt"), "b.txt") == 0
    capsys.readouterr()
    assert cli(rt, "rm", "inbox/a.txt", "b.txt") == 0
    assert capsys.readouterr().out.splitlines() == ["removed inbox/a.txt", "removed inbox/b.txt"]
    assert not (rt.inbox / "a.txt").exists() and not (rt.inbox / "b.txt").exists()
    assert (rt.inbox / "app.sealed").exists()


def test_rm_of_a_missing_file_is_not_found(rt):
    assert cli(rt, "rm", "nothing.txt") == ExitStatus.NOT_FOUND


def test_rm_in_the_outbox_is_refused_before_anything_is_removed(rt, tmp_path, capsys):
    (rt.outbox / "result.txt").write_text("r")
    assert cli(rt, "push", str(tmp_path / "in.txt")) == 0
    assert cli(rt, "rm", "in.txt", "outbox/result.txt") == ExitStatus.USAGE
    assert "the outbox is read-only for the host" in capsys.readouterr().err
    assert (rt.outbox / "result.txt").exists() and (rt.inbox / "in.txt").exists()


def test_rm_of_a_directory_needs_dir_and_an_empty_directory(rt):
    (rt.inbox / "d").mkdir()
    (rt.inbox / "d" / "in.txt").write_text("x")
    assert cli(rt, "rm", "d") == ExitStatus.USAGE
    assert cli(rt, "rm", "-d", "d") == ExitStatus.ENCLAVE_ERROR  # not empty: the runtime says so
    assert cli(rt, "rm", "d/in.txt") == 0
    assert cli(rt, "rm", "-d", "inbox/d") == 0
    assert not (rt.inbox / "d").exists()
