"""`make demo`'s script end to end: the whole runbook in local simulation, as a new user runs it."""

import os
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_ROOT


@pytest.fixture(scope="module")
def third_party_template(third_party_template_path):
    return third_party_template_path


@pytest.fixture(scope="module")
def demo_run(third_party_template, tmp_path_factory):
    work = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["SEALED_SIM_DIR"] = str(tmp_path_factory.mktemp("sim"))
    result = subprocess.run([sys.executable, "demo.py", "--work", str(work), "--template",
                             str(third_party_template)], cwd=PROJECT_ROOT, env=env, text=True,
                            capture_output=True, timeout=300, check=False)
    return result, work


def test_demo_completes_every_step(demo_run):
    result, _ = demo_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "demo completed" in result.stdout


def test_demo_runs_the_sample_on_the_hosts_data_and_pulls_the_result(demo_run):
    _, work = demo_run
    lines = (work / "predictions.csv").read_text().splitlines()
    assert lines[0] == "patient_id,risk_probability,high_risk"
    data_rows = (PROJECT_ROOT / "samples" / "host-data" / "patients.csv").read_text().splitlines()
    assert len(lines) == len(data_rows)


def test_demo_calls_the_sample_as_a_service_and_stops_it(demo_run):
    result, _ = demo_run
    assert result.stdout.count('"risk_probability"') >= 2
    assert "requests served 3, errors 0" in result.stdout
    assert ": stopped" in result.stdout


def test_demo_shows_the_host_denied_by_the_key_policy(demo_run):
    result, work = demo_run
    assert "explicitly denied by DenyDecryptWithoutAttestation" in result.stdout
    assert not (work / "stolen").exists() or not any((work / "stolen").iterdir())


def test_demo_stops_the_simulation_it_started(demo_run):
    result, _ = demo_run
    assert "simulation stopped" in result.stdout.split("Enclave User: stop the simulation")[-1]


def test_demo_says_which_mode_it_used(demo_run):
    from client.sim.jail import unavailable_reason

    result, _ = demo_run
    expected = "jail" if unavailable_reason() is None else "plain"
    assert f"mode: {expected} (" in result.stdout
    assert "demo completed in" in result.stdout and f"in {expected} mode" in result.stdout


def test_demo_mode_choice():
    from demo import DemoFailed, choose_mode

    assert choose_mode("auto", None)[0] == "jail"
    assert choose_mode("auto", "needs root") == ("plain", "the runtime as a plain process: "
                                                          "needs root")
    assert choose_mode("plain", None)[0] == "plain"
    with pytest.raises(DemoFailed, match="needs root"):
        choose_mode("jail", "needs root")


def test_demo_runs_again_at_once_reusing_the_key(demo_run, third_party_template, capsys):
    """A second `make demo` right after the first: the key exists and is reused, not recreated
    (the first version failed here on CreateAlias)."""
    _, work = demo_run
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    again = subprocess.run([sys.executable, "demo.py", "--work", str(work), "--template",
                            str(third_party_template), "--mode", "plain"], cwd=PROJECT_ROOT,
                           env=env, text=True, capture_output=True, timeout=300, check=False)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "(reused as alias/enclavekey)" in again.stdout

