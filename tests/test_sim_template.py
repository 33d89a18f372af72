"""Reading a key policy out of a synthesized template, as the demo and the simulation do."""

import json

import pytest

from client.sim.template import TemplateError, key_policy_from_template, resolve_intrinsics

PSEUDO = {"AWS::Partition": "aws", "AWS::AccountId": "111111111111", "AWS::Region": "us-east-1"}


def test_join_over_pseudo_parameters_resolves_to_the_stored_string():
    value = {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":iam::",
                               {"Ref": "AWS::AccountId"}, ":root"]]}
    assert resolve_intrinsics(value, PSEUDO) == "arn:aws:iam::111111111111:root"


def test_reference_to_a_resource_is_refused_not_left_in_place():
    with pytest.raises(TemplateError, match="MyRole"):
        resolve_intrinsics({"Principal": {"AWS": {"Ref": "MyRole"}}}, PSEUDO)


def test_other_intrinsics_are_refused():
    with pytest.raises(TemplateError, match="Fn::GetAtt"):
        resolve_intrinsics([{"Fn::GetAtt": ["Role", "Arn"]}], PSEUDO)


def _template(tmp_path, resources):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"Resources": resources}))
    return path


def test_the_one_matching_key_policy_is_returned_resolved(tmp_path):
    root = {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":iam::1:root"]]}
    policy = {"Statement": [{"Sid": "A", "Resource": "*", "Principal": {"AWS": root}}]}
    path = _template(tmp_path, {
        "EnclaveKeyABC": {"Type": "AWS::KMS::Key", "Properties": {"KeyPolicy": policy}},
        "LogKey": {"Type": "AWS::KMS::Key", "Properties": {"KeyPolicy": {"Statement": []}}},
    })
    resolved = key_policy_from_template(path, logical_id_prefix="EnclaveKey",
                                        account="111111111111", region="us-east-1")
    assert resolved["Statement"][0]["Principal"]["AWS"] == "arn:aws:iam::1:root"


def test_ambiguous_or_missing_key_is_an_error_naming_what_was_found(tmp_path):
    path = _template(tmp_path, {"LogKey": {"Type": "AWS::KMS::Key",
                                           "Properties": {"KeyPolicy": {"Statement": []}}}})
    with pytest.raises(TemplateError, match="LogKey"):
        key_policy_from_template(path, logical_id_prefix="EnclaveKey", account="1",
                                 region="us-east-1")


def test_missing_template_says_to_synthesize(tmp_path):
    with pytest.raises(TemplateError, match="make synth"):
        key_policy_from_template(tmp_path / "absent.json", logical_id_prefix="EnclaveKey",
                                 account="1", region="us-east-1")
