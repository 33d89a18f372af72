"""`python -m client verify-attestation` on the real documents and on simulated ones."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest

from client.cli import main
from client.errors import ExitStatus
from client.sim import pki as sim_pki
from client.sim.nsm import build_attestation_document

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ATT3_AT = "2023-01-18T13:07:20Z"
ATT3_PCR0 = ("d265a83faa7b4fa0d73b82b6d06253e894445922937d0ee5a74fe4891da9817611a71e71b98e5329"
             "232902de3cf419af")
ATT3_PCR8 = ("97c5395a83c0d6a04d53ff962663c714c178c24500bf97f78456ed3721d922cf3f940614da4bb901"
             "07c439bc4a1443ca")


@pytest.fixture
def att3(fixtures_dir: Path) -> Path:
    return fixtures_dir / "nitro" / "att_3.cbor"


def test_real_document_with_expected_pcrs_exits_0(att3: Path, capsys) -> None:
    status = main(["verify-attestation", str(att3), "--at", ATT3_AT,
                   "--expect-pcr", f"0={ATT3_PCR0}", "--expect-pcr", f"8={ATT3_PCR8}"])
    out, err = capsys.readouterr()
    assert status == 0
    assert "i-0ec0e572c8263d8ff-enc0185c4fd382eeb25" in out
    assert "2023-01-18T13:07:19.280Z" in out
    assert f"PCR0         {ATT3_PCR0}  (expected: match)" in out
    assert "public key:  absent" in out
    assert "warning" not in err


def test_output_lists_pcrs_0_1_2_8_and_the_non_zero_ones(att3: Path, capsys) -> None:
    main(["verify-attestation", str(att3), "--at", ATT3_AT, "--expect-pcr", f"0={ATT3_PCR0}"])
    shown = [line.split()[0] for line in capsys.readouterr().out.splitlines()
             if line.startswith("PCR") and not line.startswith("PCRs")]
    assert shown == ["PCR0", "PCR1", "PCR2", "PCR3", "PCR4", "PCR8"]


def test_no_expected_pcrs_fails_closed(att3: Path, capsys) -> None:
    """A genuine document from any enclave is no evidence of what ran."""
    assert main(["verify-attestation", str(att3), "--at", ATT3_AT]) == \
        ExitStatus.VERIFICATION_FAILED
    assert "no --expect-pcr" in capsys.readouterr().err


def test_any_image_verifies_without_expected_pcrs_and_says_so(att3: Path, capsys) -> None:
    assert main(["verify-attestation", str(att3), "--at", ATT3_AT, "--any-image"]) == 0
    assert "NOT CHECKED" in capsys.readouterr().out


def test_any_image_with_expected_pcrs_is_a_usage_error(att3: Path) -> None:
    assert main(["verify-attestation", str(att3), "--at", ATT3_AT, "--any-image",
                 "--expect-pcr", f"0={ATT3_PCR0}"]) == ExitStatus.USAGE


def test_json_output_is_one_document(att3: Path, capsys) -> None:
    assert main(["--json", "verify-attestation", str(att3), "--at", ATT3_AT,
                 "--expect-pcr", f"0={ATT3_PCR0}"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["verified"] is True and data["pcrs"]["0"] == ATT3_PCR0
    assert data["pcrs_checked"] == [0]


def test_wrong_pcr_exits_3(att3: Path, capsys) -> None:
    status = main(["verify-attestation", str(att3), "--at", ATT3_AT,
                   "--expect-pcr", f"0={'0' * 95}1"])
    assert status == ExitStatus.VERIFICATION_FAILED
    assert "PCR0" in capsys.readouterr().err


def test_today_exits_3_because_the_chain_expired(att3: Path, capsys) -> None:
    assert main(["verify-attestation", str(att3), "--expect-pcr", f"0={ATT3_PCR0}"]) == \
        ExitStatus.VERIFICATION_FAILED
    # The message names the document's own time, ready to pass back.
    assert "made at 2023-01-18T13:07:20Z: --at 2023-01-18T13:07:20Z" in capsys.readouterr().err


def test_wrong_nonce_exits_3(att3: Path) -> None:
    assert main(["verify-attestation", str(att3), "--at", ATT3_AT, "--nonce", "00ff",
                 "--expect-pcr", f"0={ATT3_PCR0}"]) == ExitStatus.VERIFICATION_FAILED


def test_right_nonce_passes(att3: Path, capsys) -> None:
    nonce = cbor2.loads(cbor2.loads(att3.read_bytes())[2])["nonce"]
    assert main(["verify-attestation", str(att3), "--at", ATT3_AT, "--nonce", nonce.hex(),
                 "--expect-pcr", f"0={ATT3_PCR0}"]) == 0
    assert "nonce:       matches" in capsys.readouterr().out


def test_debug_document_needs_allow_debug(fixtures_dir: Path, capsys) -> None:
    document = str(fixtures_dir / "nitro" / "att_1.cbor")
    at = "2021-10-28T17:02:03Z"
    assert main(["verify-attestation", document, "--at", at, "--any-image"]) == \
        ExitStatus.VERIFICATION_FAILED
    assert "debug mode" in capsys.readouterr().err
    assert main(["verify-attestation", document, "--at", at, "--any-image",
                 "--allow-debug"]) == 0
    assert "YES" in capsys.readouterr().out


def test_base64_file_is_accepted(att3: Path, tmp_path: Path) -> None:
    encoded = tmp_path / "doc.b64"
    encoded.write_text(base64.b64encode(att3.read_bytes()).decode() + "\n")
    assert main(["verify-attestation", str(encoded), "--at", ATT3_AT,
                 "--expect-pcr", f"0={ATT3_PCR0}"]) == 0


def test_missing_file_exits_4(tmp_path: Path, capsys) -> None:
    assert main(["verify-attestation", str(tmp_path / "nope"), "--any-image"]) == \
        ExitStatus.NOT_FOUND
    assert "no attestation document" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["0=abc", "32=" + "0" * 96, "x=" + "0" * 96, "0" * 96])
def test_malformed_expect_pcr_is_a_usage_error(att3: Path, bad: str) -> None:
    assert main(["verify-attestation", str(att3), "--expect-pcr", bad]) == ExitStatus.USAGE


def test_time_without_zone_is_a_usage_error(att3: Path) -> None:
    assert main(["verify-attestation", str(att3), "--at", "2023-01-18T13:07:20"]) == \
        ExitStatus.USAGE


def test_simulated_document_needs_the_development_root(tmp_path: Path, capsys) -> None:
    pki = sim_pki.load_or_create(tmp_path)
    pcrs = {i: bytes([i + 1]) * 48 for i in range(16)}
    document = tmp_path / "sim.cbor"
    document.write_bytes(build_attestation_document(pki, pcrs=pcrs, module_id="i-sim-enc1"))
    expect = ["--expect-pcr", f"0={pcrs[0].hex()}"]
    assert main(["verify-attestation", str(document), *expect]) == \
        ExitStatus.VERIFICATION_FAILED
    assert "--root" in capsys.readouterr().err
    assert main(["verify-attestation", str(document), *expect,
                 "--root", str(pki.root_path)]) == 0


def test_module_entry_point_exit_status(att3: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "client", "verify-attestation", str(att3),
                             "--at", ATT3_AT, "--expect-pcr", f"0={ATT3_PCR0}"],
                            cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "attestation document verified" in result.stdout


def test_documented_example_runs_as_documented(fixtures_dir: Path, capsys) -> None:
    text = (PROJECT_ROOT / "docs" / "verify-attestation.md").read_text()
    block = text.split("```")[1].replace("\\\n", " ").split()
    assert block[:4] == ["python", "-m", "client", "verify-attestation"]
    argv = [arg.replace("../shared/fixtures", str(fixtures_dir)) for arg in block[3:]]
    assert main(argv) == 0


# ---- the same mistake, the same answer, in every command that checks a document -------------

# Each command with the options it needs to get as far as its inputs; FILE need not exist, the
# command line is checked first.
DOCUMENT_COMMANDS = {
    "attest": ["attest"],
    "verify-attestation": ["verify-attestation", "missing.cbor"],
    "verify-receipt": ["verify-receipt", "missing.json"],
    "jobs results": ["jobs", "results", "job-1", "-o", "out", "--bucket", "bucket"],
}
GOOD_PCR = f"0={ATT3_PCR0}"


@pytest.mark.parametrize("command", DOCUMENT_COMMANDS)
@pytest.mark.parametrize("root", ["absent.pem", "."], ids=["missing", "directory"])
def test_unreadable_root_exits_4_with_one_message_in_every_command(
        command: str, root: str, tmp_path: Path, capsys) -> None:
    path = tmp_path / root
    status = main([*DOCUMENT_COMMANDS[command], "--expect-pcr", GOOD_PCR, "--root", str(path)])
    err = capsys.readouterr().err
    assert status == ExitStatus.NOT_FOUND, err
    assert err.startswith(f"error: cannot read the root certificate {path}: "), err
    assert err.rstrip().endswith("give a readable PEM file of the root to trust"), err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("command", DOCUMENT_COMMANDS)
@pytest.mark.parametrize(("option", "value", "message"), [
    ("--expect-pcr", "0=" + "zz" * 48, "error: --expect-pcr '0=" + "zz" * 48 + "': '"),
    ("--expect-pcr", "0=abcd", "error: --expect-pcr '0=abcd': 'abcd' has 4 hex digits; a PCR "
                                "(SHA-384) has 96"),
    ("--expect-pcr", "32=" + "0" * 96, "error: --expect-pcr '32=" + "0" * 96 + "' is not N=HEX"),
    ("--expect-pcr", "0" * 96, "error: --expect-pcr '" + "0" * 96 + "' is not N=HEX"),
], ids=["not-hex", "short", "index", "no-index"])
def test_malformed_pcr_exits_2_with_one_message_in_every_command(
        command: str, option: str, value: str, message: str, tmp_path: Path, capsys,
        monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    status = main([*DOCUMENT_COMMANDS[command], option, value])
    err = capsys.readouterr().err
    assert status == ExitStatus.USAGE, err
    assert err.startswith(message), err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("command", ["verify-attestation", "verify-receipt"])
def test_malformed_nonce_exits_2_with_the_message_attest_gives_its_user_data(
        command: str, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*DOCUMENT_COMMANDS[command], "--expect-pcr", GOOD_PCR, "--nonce", "0g"]) == \
        ExitStatus.USAGE
    nonce_error = capsys.readouterr().err
    assert main(["attest", "--expect-pcr", GOOD_PCR, "--user-data", "0g"]) == ExitStatus.USAGE
    user_data_error = capsys.readouterr().err
    assert nonce_error == ("error: --nonce '0g' is not hex; give an even number of hex digits, "
                           "e.g. 01ab\n")
    assert user_data_error == nonce_error.replace("--nonce", "--user-data")
