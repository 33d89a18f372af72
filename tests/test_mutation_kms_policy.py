"""The local KMS's key policy evaluation: who is allowed what, and why a policy is refused.

Written against the mutants `make mutate` found alive (docs/testing.md): `evaluate`,
`statement_applies`, `principal_matches`, `conditions_hold` and `condition_holds`.
"""

from __future__ import annotations

import pytest

from client.sim.policy import (
    PolicyError,
    Request,
    condition_holds,
    conditions_hold,
    evaluate,
    principal_matches,
)

HOST = "arn:aws:sts::111111111111:assumed-role/HostRole/i-0abc"
OTHER = "arn:aws:sts::222222222222:assumed-role/OtherRole/x"
KEY = "arn:aws:kms:us-east-1:111111111111:key/k"


def allow(**statement) -> dict:
    return {"Statement": [{"Sid": "S1", "Effect": "Allow", "Principal": {"AWS": HOST},
                           "Action": "kms:Decrypt", "Resource": "*", **statement}]}


def decrypt(principal: str = HOST, context: dict | None = None) -> Request:
    return Request(principal, "kms:Decrypt", KEY, context or {})


def policy_error(policy: dict, request: Request | None = None) -> str:
    with pytest.raises(PolicyError) as caught:
        evaluate(policy, request or decrypt())
    return str(caught.value)


def test_a_single_statement_object_is_read_as_a_list_of_one() -> None:
    policy = allow()
    policy["Statement"] = policy["Statement"][0]
    decision = evaluate(policy, decrypt())
    assert decision.allowed and decision.reason == "allowed by S1"


def test_an_allow_for_another_action_allows_nothing_else() -> None:
    decision = evaluate(allow(Action="kms:Encrypt"), decrypt())
    assert not decision.allowed
    assert decision.reason == "no statement allows this request (implicit deny)"


def test_not_action_is_compared_without_case() -> None:
    policy = allow()
    del policy["Statement"][0]["Action"]
    policy["Statement"][0]["NotAction"] = "KMS:DECRYPT"
    assert not evaluate(policy, decrypt()).allowed
    assert evaluate(policy, Request(HOST, "kms:Encrypt", KEY)).allowed


def test_a_statement_without_action_is_refused_naming_it() -> None:
    policy = allow()
    del policy["Statement"][0]["Action"]
    assert policy_error(policy) == "S1: a statement needs Action or NotAction"


def test_a_malformed_principal_is_refused_naming_the_statement() -> None:
    assert policy_error(allow(Principal=5)) == 'S1: Principal must be "*" or a map, got 5'
    with pytest.raises(PolicyError) as caught:
        principal_matches(["x"], HOST)
    assert str(caught.value) == "statement: Principal must be \"*\" or a map, got ['x']"


def test_a_service_principal_before_the_caller_does_not_hide_it() -> None:
    assert principal_matches({"Service": "ec2.amazonaws.com", "AWS": HOST}, HOST)


def test_a_wildcard_aws_principal_matches_any_caller() -> None:
    assert evaluate(allow(Principal={"AWS": ["*"]}), decrypt(OTHER)).allowed


def test_a_condition_that_is_not_a_map_is_refused_naming_the_statement() -> None:
    assert policy_error(allow(Condition={"StringEquals": "x"})) == (
        "S1: condition StringEquals must map keys to values")
    with pytest.raises(PolicyError) as caught:
        conditions_hold({"StringEquals": "x"}, {})
    assert str(caught.value) == "statement: condition StringEquals must map keys to values"


def test_a_condition_value_that_is_not_a_string_is_refused_naming_the_statement() -> None:
    condition = {"StringEquals": {"kms:EncryptionContext:app_id": [{"nested": 1}]}}
    assert policy_error(allow(Condition=condition)) == (
        "S1: condition value {'nested': 1} is not a string")


def test_an_unsupported_operator_is_refused_naming_the_supported_ones() -> None:
    condition = {"NumericLessThan": {"aws:x": "1"}}
    assert policy_error(allow(Condition=condition)) == (
        "S1: condition operator 'NumericLessThan' is not supported by the local KMS; supported: "
        "StringEquals, StringNotEquals, StringEqualsIgnoreCase, StringNotEqualsIgnoreCase, "
        "StringLike, StringNotLike, Null, Bool, with ForAnyValue:/ForAllValues:/IfExists")
    with pytest.raises(PolicyError, match="^statement: condition operator 'Nope'"):
        condition_holds("Nope", ["x"], "x")


@pytest.mark.parametrize("operator", ["NullIfExists", "ForAnyValue:Null", "ForAllValues:Null"])
def test_null_takes_no_set_prefix_and_no_if_exists(operator: str) -> None:
    condition = {operator: {"aws:x": "true"}}
    assert policy_error(allow(Condition=condition)) == (
        "S1: Null takes one value and no set prefix")


def test_for_all_values_string_not_equals_holds_only_when_no_value_is_listed() -> None:
    assert condition_holds("ForAllValues:StringNotEquals", ["a"], ["b", "c"])
    assert not condition_holds("ForAllValues:StringNotEquals", ["a"], ["a"])
    assert not condition_holds("ForAllValues:StringNotEquals", ["a"], ["b", "a"])


def test_a_json_true_in_a_bool_condition_means_true() -> None:
    condition = {"Bool": {"aws:SecureTransport": True}}
    assert evaluate(allow(Condition=condition),
                    decrypt(context={"aws:SecureTransport": "true"})).allowed
    assert not evaluate(allow(Condition=condition),
                        decrypt(context={"aws:SecureTransport": "false"})).allowed


def test_a_policy_without_statements_is_refused() -> None:
    with pytest.raises(PolicyError) as caught:
        evaluate({"Version": "2012-10-17"}, decrypt())
    assert str(caught.value) == "the policy has no Statement list"


def test_a_statement_without_resource_applies_to_every_resource() -> None:
    policy = allow()
    del policy["Statement"][0]["Resource"]
    assert evaluate(policy, decrypt()).allowed


def test_bool_conditions_ignore_case_and_take_no_wildcards() -> None:
    assert condition_holds("Bool", ["true"], "True")
    assert not condition_holds("Bool", ["tru*"], "true")


def test_string_like_reads_a_bracket_literally() -> None:
    assert condition_holds("StringLike", ["a[b]*"], "a[b]c")
    assert not condition_holds("StringLike", ["a[b]*"], "abc")


@pytest.mark.parametrize(("value", "context", "holds"), [
    (False, "false", True), (False, "true", False), (True, "true", True), (True, "TRUE", False),
])
def test_json_booleans_in_string_conditions_are_lowercase_words(value: bool, context: str,
                                                                 holds: bool) -> None:
    condition = {"StringEquals": {"kms:EncryptionContext:flag": value}}
    request = decrypt(context={"kms:EncryptionContext:flag": context})
    assert evaluate(allow(Condition=condition), request).allowed is holds


def test_an_effect_other_than_allow_or_deny_is_refused_naming_it() -> None:
    assert policy_error(allow(Effect="Audit")) == "S1: Effect must be Allow or Deny, got 'Audit'"


def test_a_deny_names_the_statement_that_denied() -> None:
    policy = allow()
    policy["Statement"].append({"Sid": "NoDecrypt", "Effect": "Deny", "Principal": "*",
                                "Action": "kms:*"})
    decision = evaluate(policy, decrypt())
    assert not decision.allowed
    assert decision.reason == "explicitly denied by NoDecrypt"


def test_resources_are_compared_with_their_case() -> None:
    assert not evaluate(allow(Resource=KEY.replace(":key/k", ":key/K")), decrypt()).allowed
    assert evaluate(allow(Resource=KEY), decrypt()).allowed


def test_a_statement_checked_alone_is_named_statement_in_errors() -> None:
    from client.sim.policy import statement_applies

    with pytest.raises(PolicyError) as caught:
        statement_applies({"Effect": "Allow", "Principal": "*"}, decrypt(), {})
    assert str(caught.value) == "statement: a statement needs Action or NotAction"
