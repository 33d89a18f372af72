"""The measurement allow-list tool: pure edits, then the CLI against moto KMS and SSM."""

import copy
import json

import boto3
import pytest
from moto import mock_aws

from pipeline import allowlist
from pipeline.allowlist import (
    AllowListError,
    MeasurementError,
    PolicyError,
    Record,
    add_measurement,
    allowed_measurements,
    allowed_signers,
    main,
    merge_recorded,
    parse_measurements,
)

HOST = "arn:aws:iam::222222222222:role/sealed-enclave-host"
PCR = [f"{i:x}" * 96 for i in range(1, 7)]  # six distinct, valid, non-zero digests
SIGNER = ("97c5395a83c0d6a04d53ff962663c714c178c24500bf97f7"
          "8456ed3721d922cf3f940614da4bb90107c439bc4a1443ca")


def deployed_policy(images=None, signers=None, *, legacy=False) -> dict:
    """The policy as ThirdPartyStack deploys it (see constructs/enclave_key.py); `legacy`: as it
    was deployed before, with StringEquals/StringNotEquals on the attestation keys."""
    images = images or [allowlist.PLACEHOLDER]
    equal, not_equal = (("StringEquals", "StringNotEquals") if legacy
                        else ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"))
    attestation = {allowlist.IMAGE_KEY: list(images)}
    if signers:
        attestation[allowlist.PCR8_KEY] = list(signers)
    app = {allowlist.APP_ID_KEY: "sample-inference"}
    conditions = ({"StringEquals": {**attestation, **app}} if legacy
                  else {equal: attestation, "StringEquals": app})
    statements = [
        {"Sid": "EnableKeyAdministration", "Effect": "Allow",
         "Principal": {"AWS": "arn:aws:iam::111111111111:root"}, "Action": "kms:*",
         "Resource": "*"},
        {"Sid": "AllowAttestedEnclaveDecrypt", "Effect": "Allow", "Principal": {"AWS": HOST},
         "Action": "kms:Decrypt", "Resource": "*", "Condition": conditions},
        {"Sid": "DenyDecryptWithoutAttestation", "Effect": "Deny", "Principal": {"AWS": HOST},
         "Action": "kms:Decrypt", "Resource": "*",
         "Condition": {"Null": {allowlist.IMAGE_KEY: "true"}}},
        {"Sid": "DenyDecryptUnlistedImage", "Effect": "Deny", "Principal": {"AWS": HOST},
         "Action": "kms:Decrypt", "Resource": "*",
         "Condition": {not_equal: {allowlist.IMAGE_KEY: list(images)}}},
    ]
    if signers:
        statements.append(
            {"Sid": "DenyDecryptUnlistedSigner", "Effect": "Deny", "Principal": {"AWS": HOST},
             "Action": "kms:Decrypt", "Resource": "*",
             "Condition": {not_equal: {allowlist.PCR8_KEY: list(signers)}}})
    return {"Version": "2012-10-17", "Statement": statements}


def nitro_output(pcr0: str, pcr8: str | None = None) -> str:
    block = {"HashAlgorithm": "Sha384 { ... }", "PCR0": pcr0, "PCR1": PCR[4], "PCR2": PCR[5]}
    if pcr8:
        block["PCR8"] = pcr8
    return json.dumps({"Measurements": block}, indent=2)


def deny_list(policy: dict) -> list[str]:
    deny = next(s for s in policy["Statement"] if s["Sid"] == "DenyDecryptUnlistedImage")
    (condition,) = deny["Condition"].values()
    return condition[allowlist.IMAGE_KEY]


def test_the_policy_these_tests_edit_is_the_one_the_construct_writes():
    import aws_cdk as cdk

    from constructs.enclave_key import key_policy

    document = key_policy(administrator_account="111111111111", host_principal_arn=HOST,
                          app_id="sample-inference", measurements=[PCR[0]], signer_pcr8=SIGNER)
    written = cdk.Stack().resolve(document.to_json())

    def conditions(policy: dict) -> dict:
        return {s["Sid"]: s.get("Condition") for s in policy["Statement"]
                if s["Sid"].startswith(("Allow", "DenyDecrypt"))}

    assert conditions(written) == conditions(deployed_policy([PCR[0]], [SIGNER]))


def test_attestation_lists_use_the_ignore_case_operators_of_the_kms_guide():
    policy = add_measurement(deployed_policy(signers=[SIGNER]), PCR[0], keep=3, pcr8=SIGNER)
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    allow = by_sid[allowlist.ALLOW_SID]["Condition"]
    assert allow["StringEqualsIgnoreCase"] == {allowlist.IMAGE_KEY: [PCR[0]],
                                               allowlist.PCR8_KEY: [SIGNER]}
    assert allow["StringEquals"] == {allowlist.APP_ID_KEY: "sample-inference"}
    for sid, key in ((allowlist.DENY_UNLISTED_IMAGE_SID, allowlist.IMAGE_KEY),
                     (allowlist.DENY_UNLISTED_SIGNER_SID, allowlist.PCR8_KEY)):
        assert set(by_sid[sid]["Condition"]) == {"StringNotEqualsIgnoreCase"}, sid
        assert by_sid[sid]["Condition"]["StringNotEqualsIgnoreCase"][key] == allow[
            "StringEqualsIgnoreCase"][key]


def test_a_policy_deployed_with_the_earlier_operators_is_edited_in_place():
    policy = add_measurement(deployed_policy([PCR[0]], legacy=True), PCR[1], keep=3)
    assert policy == deployed_policy([PCR[0], PCR[1]], legacy=True)
    assert allowed_measurements(policy) == [PCR[0], PCR[1]]


def test_a_list_under_both_operators_is_refused():
    policy = deployed_policy([PCR[0]])
    allow = next(s for s in policy["Statement"] if s["Sid"] == allowlist.ALLOW_SID)
    allow["Condition"]["StringEquals"][allowlist.IMAGE_KEY] = [PCR[1]]
    with pytest.raises(PolicyError, match="more than one"):
        add_measurement(policy, PCR[2], keep=3)


# --- pure core -------------------------------------------------------------------------------


def test_first_measurement_replaces_the_placeholder_in_allow_and_deny():
    result = add_measurement(deployed_policy(), PCR[0], keep=3)
    assert allowed_measurements(result) == [PCR[0]]
    assert deny_list(result) == [PCR[0]]


def test_add_does_not_modify_its_input():
    policy = deployed_policy()
    before = copy.deepcopy(policy)
    add_measurement(policy, PCR[0], keep=3)
    assert policy == before


def test_new_measurements_go_last_and_the_oldest_drop_beyond_keep():
    policy = deployed_policy()
    for value in PCR[:4]:
        policy = add_measurement(policy, value, keep=3)
    assert allowed_measurements(policy) == PCR[1:4]
    assert deny_list(policy) == PCR[1:4]


def test_adding_an_allowed_measurement_again_changes_nothing():
    once = add_measurement(deployed_policy([PCR[0], PCR[1]]), PCR[0], keep=3)
    assert once == deployed_policy([PCR[0], PCR[1]])
    assert add_measurement(once, PCR[0], keep=3) == once


def test_uppercase_measurement_is_stored_lowercase():
    result = add_measurement(deployed_policy(), PCR[0].upper(), keep=3)
    assert allowed_measurements(result) == [PCR[0]]


@pytest.mark.parametrize("bad", ["", "abc", "g" * 96, PCR[0] + "0", PCR[0][:-1], None, 7])
def test_malformed_pcr0_is_refused(bad):
    with pytest.raises(MeasurementError, match="malformed"):
        add_measurement(deployed_policy(), bad, keep=3)


def test_all_zero_pcr0_of_debug_mode_enclaves_is_refused():
    with pytest.raises(MeasurementError, match="debug-mode"):
        add_measurement(deployed_policy(), "0" * 96, keep=3)


@pytest.mark.parametrize("missing", ["AllowAttestedEnclaveDecrypt", "DenyDecryptUnlistedImage",
                                     "DenyDecryptWithoutAttestation"])
def test_policy_without_a_managed_sid_is_refused(missing):
    policy = deployed_policy()
    policy["Statement"] = [s for s in policy["Statement"] if s["Sid"] != missing]
    with pytest.raises(PolicyError, match=missing):
        add_measurement(policy, PCR[0], keep=3)


def test_policy_whose_allow_and_deny_lists_differ_is_refused():
    policy = deployed_policy([PCR[0]])
    deny_list(policy).append(PCR[1])
    with pytest.raises(PolicyError, match="different values"):
        add_measurement(policy, PCR[2], keep=3)


def test_policy_with_a_debug_mode_zero_measurement_is_refused():
    policy = deployed_policy(["0" * 96])
    with pytest.raises(MeasurementError, match="debug-mode"):
        add_measurement(policy, PCR[0], keep=3)


def test_deny_statement_turned_into_allow_is_refused():
    policy = deployed_policy()
    policy["Statement"][3]["Effect"] = "Allow"
    with pytest.raises(PolicyError, match="Effect"):
        add_measurement(policy, PCR[0], keep=3)


def test_duplicate_sid_is_refused():
    policy = deployed_policy()
    policy["Statement"].append(copy.deepcopy(policy["Statement"][1]))
    with pytest.raises(PolicyError, match="2 statements"):
        add_measurement(policy, PCR[0], keep=3)


@pytest.mark.parametrize("keep", [0, -1, True])
def test_keep_below_one_is_refused(keep):
    with pytest.raises(AllowListError, match="keep"):
        add_measurement(deployed_policy(), PCR[0], keep=keep)


def test_pcr8_rotates_the_signer_list_when_a_signer_is_pinned():
    policy = deployed_policy([PCR[0]], [SIGNER])
    result = add_measurement(policy, PCR[1], keep=3, pcr8=PCR[5])
    assert allowed_signers(result) == [SIGNER, PCR[5]]
    assert allowed_measurements(result) == [PCR[0], PCR[1]]


def test_pcr8_on_a_policy_without_signer_pin_is_refused():
    with pytest.raises(PolicyError, match="pins no signer"):
        add_measurement(deployed_policy(), PCR[0], keep=3, pcr8=SIGNER)


def test_merge_recorded_appends_the_pipeline_measurements_after_the_template_ones():
    template = deployed_policy([PCR[0]])
    merged = merge_recorded(template, Record(image_sha384=(PCR[1], PCR[2], PCR[3])), keep=3)
    assert allowed_measurements(merged) == [PCR[1], PCR[2], PCR[3]]


def test_merge_of_an_empty_record_leaves_the_policy_as_is():
    template = deployed_policy()
    assert merge_recorded(template, Record(), keep=3) == template


# --- nitro-cli output -------------------------------------------------------------------------


def test_parse_reads_pcr0_and_optional_pcr8():
    parsed = parse_measurements(nitro_output(PCR[0], SIGNER))
    assert (parsed.pcr0, parsed.pcr8) == (PCR[0], SIGNER)
    assert parse_measurements(nitro_output(PCR[0])).pcr8 is None


@pytest.mark.parametrize("text,message", [
    ("not json", "not JSON"),
    ("[]", "Measurements"),
    (json.dumps({"Measurements": {"HashAlgorithm": "Sha256 { ... }", "PCR0": PCR[0]}}),
     "Sha384"),
    ('{"Measurements": {"HashAlgorithm": "Sha384 { ... }"}}', "PCR0"),
])
def test_malformed_nitro_output_is_refused(text, message):
    with pytest.raises(MeasurementError, match=message):
        parse_measurements(text)


# --- CLI against moto -------------------------------------------------------------------------


@pytest.fixture
def aws(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield boto3.client("kms", region_name="us-east-1"), boto3.client("ssm", "us-east-1")


def make_key(kms, policy_text: str) -> str:
    return kms.create_key(Policy=policy_text)["KeyMetadata"]["Arn"]


def stored(kms, key_id: str) -> str:
    return kms.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"]


def write(tmp_path, text: str):
    path = tmp_path / "measurements.json"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("layout", ["compact", "pretty"])
def test_cli_adds_pcr0_to_compact_and_pretty_policies(aws, tmp_path, layout):
    kms, _ = aws
    policy = deployed_policy()
    text = (json.dumps(policy, separators=(",", ":")) if layout == "compact"
            else json.dumps(policy, indent=4))
    key = make_key(kms, text)
    status = main(["add", "--key-id", key, "--measurements", write(tmp_path, nitro_output(PCR[0])),
                   "--keep", "3"])
    assert status == 0
    assert allowed_measurements(json.loads(stored(kms, key))) == [PCR[0]]


def test_cli_second_identical_add_leaves_the_stored_policy_byte_identical(aws, tmp_path):
    kms, _ = aws
    key = make_key(kms, json.dumps(deployed_policy()))
    args = ["add", "--key-id", key, "--measurements", write(tmp_path, nitro_output(PCR[0]))]
    assert main(args) == 0
    first = stored(kms, key)
    assert main(args) == 0
    assert stored(kms, key) == first


def test_cli_keeps_the_newest_n_across_builds(aws, tmp_path):
    kms, _ = aws
    key = make_key(kms, json.dumps(deployed_policy()))
    for value in PCR[:4]:
        assert main(["add", "--key-id", key, "--keep", "2",
                     "--measurements", write(tmp_path, nitro_output(value))]) == 0
    assert allowed_measurements(json.loads(stored(kms, key))) == PCR[2:4]


def test_cli_refuses_a_policy_missing_the_sids_and_leaves_it_untouched(aws, tmp_path, capsys):
    kms, _ = aws
    foreign = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "Enable IAM User Permissions", "Effect": "Allow",
         "Principal": {"AWS": "arn:aws:iam::111111111111:root"}, "Action": "kms:*",
         "Resource": "*"}]})
    key = make_key(kms, foreign)
    status = main(["add", "--key-id", key, "--measurements", write(tmp_path, nitro_output(PCR[0]))])
    assert status == allowlist.EXIT_REFUSED
    assert stored(kms, key) == foreign
    assert "AllowAttestedEnclaveDecrypt" in capsys.readouterr().err


def test_cli_refuses_malformed_pcr0_and_leaves_the_policy_untouched(aws, tmp_path, capsys):
    kms, _ = aws
    original = json.dumps(deployed_policy([PCR[0]]))
    key = make_key(kms, original)
    malformed = write(tmp_path, nitro_output("ab" * 47))
    status = main(["add", "--key-id", key, "--measurements", malformed])
    assert status == allowlist.EXIT_USAGE
    assert stored(kms, key) == original
    assert "malformed" in capsys.readouterr().err


def test_cli_records_added_measurements_in_the_ssm_parameter(aws, tmp_path):
    kms, ssm = aws
    key = make_key(kms, json.dumps(deployed_policy()))
    for value in PCR[:3]:
        assert main(["add", "--key-id", key, "--keep", "2", "--record-parameter", "/x/measurements",
                     "--measurements", write(tmp_path, nitro_output(value))]) == 0
    value = ssm.get_parameter(Name="/x/measurements")["Parameter"]["Value"]
    assert json.loads(value) == {"ImageSha384": PCR[1:3], "PCR8": []}


def test_cli_list_prints_allowed_measurements_oldest_first(aws, capsys):
    kms, _ = aws
    key = make_key(kms, json.dumps(deployed_policy([PCR[0], PCR[1]])))
    assert main(["list", "--key-id", key, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"ImageSha384": [PCR[0], PCR[1]], "PCR8": None}


def test_cli_reports_an_unknown_key_as_an_aws_error(aws, tmp_path, capsys):
    status = main(["add", "--key-id", "alias/does-not-exist",
                   "--measurements", write(tmp_path, nitro_output(PCR[0]))])
    assert status == allowlist.EXIT_AWS_ERROR
    assert "AWS call failed" in capsys.readouterr().err


def test_cli_without_a_subcommand_is_a_usage_error(capsys):
    assert main([]) == allowlist.EXIT_USAGE


def test_single_string_condition_values_are_read_and_written_back_as_lists():
    policy = deployed_policy([PCR[0]])
    for s in policy["Statement"]:
        for operator in ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"):
            values = s.get("Condition", {}).get(operator, {})
            if allowlist.IMAGE_KEY in values:
                values[allowlist.IMAGE_KEY] = PCR[0]
    result = add_measurement(policy, PCR[1], keep=3)
    assert allowed_measurements(result) == [PCR[0], PCR[1]]
    assert deny_list(result) == [PCR[0], PCR[1]]


def test_module_runs_as_the_build_spec_invokes_it():
    import subprocess
    import sys
    from pathlib import Path

    result = subprocess.run([sys.executable, "-m", "pipeline.allowlist", "add", "--help"],
                            cwd=Path(__file__).resolve().parent.parent, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0
    assert "--record-parameter" in result.stdout
