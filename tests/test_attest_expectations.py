"""`attest` refuses to verify against nothing, and says how to give the expected measurements:
each refusal through `python -m client attest` (client.cli.main), before the runtime is asked."""

from __future__ import annotations

import json

import pytest

from client.cli import main
from client.errors import ExitStatus

PCR0 = "ab" * 48


@pytest.fixture
def attest(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEALED_STATE_DIR", str(tmp_path / "state"))
    socket = str(tmp_path / "nobody.sock")  # never reached: every case fails before

    def run(*argv: str) -> tuple[int, str]:
        code = main(["--socket", socket, "attest", *argv])
        return code, capsys.readouterr().err
    return run


def test_without_any_expected_measurement_attest_refuses(attest):
    code, err = attest()
    assert code == ExitStatus.VERIFICATION_FAILED
    assert "no expected measurement: pass --expect-pcr0 HEX" in err
    assert "a document verified against nothing proves nothing" in err


@pytest.mark.parametrize(("argv", "message"), [
    (["--expect-pcr0", "zz"], "--expect-pcr0 'zz' is not hex; give the 96 hex digits of a PCR"),
    (["--expect-pcr0", "abcd"], "--expect-pcr0 'abcd' has 4 hex digits; a PCR (SHA-384) has 96"),
    (["--expect-pcr", "8"], "--expect-pcr '8' is not N=HEX"),
    (["--expect-pcr", "x=ab"], "--expect-pcr 'x=ab' is not N=HEX"),
    (["--expect-pcr0", f"0x{PCR0}", "--user-data", "abc"],
     "--user-data 'abc' is not hex; give an even number of hex digits"),
])
def test_a_malformed_expectation_is_a_usage_error(attest, argv, message):
    code, err = attest(*argv)
    assert code == ExitStatus.USAGE and message in err


def test_a_measurements_file_must_exist_be_json_and_hold_pcr0(attest, tmp_path):
    missing = tmp_path / "missing.json"
    code, err = attest("--measurements", str(missing))
    assert code == ExitStatus.NOT_FOUND and f"measurements file {missing} does not exist" in err
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    code, err = attest("--measurements", str(broken))
    assert code == ExitStatus.USAGE and "is not JSON" in err
    listed = tmp_path / "list.json"
    listed.write_text("[1]")
    code, err = attest("--measurements", str(listed))
    assert code == ExitStatus.USAGE and "is not a measurements object" in err
    no_pcr0 = tmp_path / "no-pcr0.json"
    no_pcr0.write_text(json.dumps({"Measurements": {"PCR1": PCR0}}))
    code, err = attest("--measurements", str(no_pcr0))
    assert code == ExitStatus.USAGE and "has no PCR0" in err


def test_an_eif_needs_its_measurements_json_beside_it(attest, tmp_path):
    eif = tmp_path / "enclave.eif"
    eif.write_bytes(b"eif")
    code, err = attest("--eif", str(eif))
    assert code == ExitStatus.USAGE and f"no measurements JSON next to {eif}" in err


def test_the_simulation_root_is_only_for_the_simulation(attest):
    code, err = attest("--expect-pcr0", PCR0, "--simulation")
    assert code == ExitStatus.USAGE
    assert "--simulation given, but the target is not the local simulation" in err


def test_an_unreadable_root_is_not_found_as_in_every_attestation_command(attest, tmp_path):
    code, err = attest("--expect-pcr0", PCR0, "--root", str(tmp_path / "none.pem"))
    assert code == ExitStatus.NOT_FOUND and "cannot read the root certificate" in err
