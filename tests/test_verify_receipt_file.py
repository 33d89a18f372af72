"""`verify-receipt FILE` refuses a file that is not a receipt before it verifies anything:
each refusal through `python -m client verify-receipt` (client.cli.main), with its exit code."""

from __future__ import annotations

import json

import pytest

from client.cli import main
from client.commands.verify_receipt import MAX_RECEIPT_FILE_BYTES, check_files, file_sha256
from client.errors import ExitStatus, NotFoundError, VerificationError

PCR0 = "ab" * 48


@pytest.fixture
def verify(capsys):
    def run(*argv: str) -> tuple[int, str]:
        code = main(["verify-receipt", *argv, "--expect-pcr", f"0={PCR0}"])
        return code, capsys.readouterr().err
    return run


def test_a_missing_file_is_not_found(verify, tmp_path):
    code, err = verify(str(tmp_path / "none.json"))
    assert code == ExitStatus.NOT_FOUND and "no receipt file at" in err


def test_an_oversized_file_is_not_a_receipt(verify, tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (MAX_RECEIPT_FILE_BYTES + 1))
    code, err = verify(str(big))
    assert code == ExitStatus.VERIFICATION_FAILED and "bytes: not a receipt" in err


@pytest.mark.parametrize(("content", "message"), [
    ("{", "is not JSON"),
    ("[]", "is not a receipt file: expected an object with `receipt` and `document`"),
    (json.dumps({"receipt": {}, "document": 5}), "is not a receipt file"),
    (json.dumps({"receipt": {}, "document": "not base64!"}), "document is not base64"),
])
def test_a_file_that_is_not_a_receipt_fails_verification(verify, tmp_path, content, message):
    path = tmp_path / "receipt.json"
    path.write_text(content)
    code, err = verify(str(path))
    assert code == ExitStatus.VERIFICATION_FAILED and message in err


def test_an_input_name_must_be_name_equals_path(verify, tmp_path, capsys):
    path = tmp_path / "receipt.json"
    path.write_text("{}")
    code = main(["verify-receipt", str(path), "--input", "no-equals-sign"])
    assert code == ExitStatus.USAGE
    assert "'no-equals-sign' is not NAME=PATH" in capsys.readouterr().err


def test_local_files_must_be_the_bytes_the_receipt_names(tmp_path):
    data = tmp_path / "data.csv"
    data.write_bytes(b"a,b\n")
    digest = file_sha256(data)
    assert check_files("input", {"data.csv": digest}, [("data.csv", data)]) == ["data.csv"]
    with pytest.raises(VerificationError, match="has SHA-256 .* not the bytes the run used"):
        check_files("input", {"data.csv": "0" * 64}, [("data.csv", data)])
    with pytest.raises(VerificationError, match="names no output 'other.csv'; it names none"):
        check_files("output", {}, [("other.csv", data)])
    with pytest.raises(NotFoundError, match="no file at"):
        check_files("input", {"x": digest}, [("x", tmp_path / "missing")])
