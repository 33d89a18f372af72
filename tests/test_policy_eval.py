"""The local KMS key-policy evaluator: operator by operator, and attacks on the project shape."""

from __future__ import annotations

import pytest

from client.sim.policy import (
    PolicyError,
    Request,
    condition_holds,
    evaluate,
    principal_matches,
)
from client.sim.template import resolve_intrinsics

HOST = "arn:aws:iam::222222222222:role/EnclaveHostRole"
HOST_SESSION = "arn:aws:sts::222222222222:assumed-role/EnclaveHostRole/i-0abc"
OTHER = "arn:aws:iam::333333333333:role/Other"
KEY = "arn:aws:kms:us-east-1:111111111111:key/0000"
GOOD = "a" * 96
BAD = "b" * 96
IMAGE = "kms:RecipientAttestation:ImageSha384"


def project_shaped_policy(images: list[str]) -> dict:
    """Same shape as constructs/enclave_key.py writes: Allow with conditions, two Denies."""
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "EnableKeyAdministration", "Effect": "Allow",
         "Principal": {"AWS": "arn:aws:iam::111111111111:root"}, "Action": "kms:*",
         "Resource": "*"},
        {"Sid": "AllowAttestedEnclaveDecrypt", "Effect": "Allow", "Principal": {"AWS": HOST},
         "Action": "kms:Decrypt", "Resource": "*",
         "Condition": {"StringEquals": {IMAGE: images, "kms:EncryptionContext:app_id": "app"}}},
        {"Sid": "DenyDecryptWithoutAttestation", "Effect": "Deny", "Principal": {"AWS": HOST},
         "Action": "kms:Decrypt", "Resource": "*", "Condition": {"Null": {IMAGE: "true"}}},
        {"Sid": "DenyDecryptUnlistedImage", "Effect": "Deny", "Principal": {"AWS": HOST},
         "Action": "kms:Decrypt", "Resource": "*",
         "Condition": {"StringNotEquals": {IMAGE: images}}},
    ]}


def decrypt(principal: str = HOST, **context) -> Request:
    return Request(principal, "kms:Decrypt", KEY, context)


def ctx(image: str | None = GOOD, app_id: str | None = "app") -> dict:
    out = {}
    if image is not None:
        out[IMAGE] = image
    if app_id is not None:
        out["kms:EncryptionContext:app_id"] = app_id
    return out


def stack_policy(images: list[str]) -> dict:
    """The policy constructs/enclave_key.py writes, with the KMS guide's IgnoreCase operators."""
    import aws_cdk as cdk

    from constructs.enclave_key import key_policy

    document = key_policy(administrator_account="111111111111", host_principal_arn=HOST,
                          app_id="app", measurements=images, signer_pcr8=None)
    return resolve_intrinsics(cdk.Stack().resolve(document.to_json()),
                              {"AWS::Partition": "aws"})


# ---- the policy the stack writes, decided as KMS would ---------------------------------------


def test_stack_policy_uses_the_ignore_case_operators_this_evaluator_decides() -> None:
    operators = {op for s in stack_policy([GOOD])["Statement"] for op in s.get("Condition", {})}
    assert {"StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"} <= operators


@pytest.mark.parametrize("image,app_id,allowed", [
    (GOOD, "app", True),
    (GOOD.upper(), "app", True),  # a digest's case carries no meaning
    (BAD, "app", False),
    ("0" * 96, "app", False),  # debug mode
    (None, "app", False),  # the parent instance, no attestation
    (GOOD, "APP", False),  # the app id is compared exactly
    (GOOD, None, False),
])
def test_stack_policy_decides_host_decrypts(image, app_id, allowed) -> None:
    decision = evaluate(stack_policy([GOOD]), decrypt(**ctx(image, app_id)))
    assert decision.allowed is allowed, decision


def test_stack_policy_with_no_image_yet_allows_no_attestation() -> None:
    # An attested ImageSha384 is 96 hex digits, in any case: never the placeholder, folded or not.
    policy = stack_policy([])
    for image in (GOOD, GOOD.upper(), "0" * 96):
        assert not evaluate(policy, decrypt(**ctx(image))).allowed


# ---- the project's policy shape, attacked --------------------------------------------------


def test_allowed_image_with_right_context_is_allowed() -> None:
    decision = evaluate(project_shaped_policy([GOOD]), decrypt(**ctx()))
    assert decision.allowed and decision.statement == "AllowAttestedEnclaveDecrypt"


def test_assumed_role_session_of_the_host_role_is_allowed() -> None:
    assert evaluate(project_shaped_policy([GOOD]), decrypt(HOST_SESSION, **ctx())).allowed


def test_request_without_attestation_is_explicitly_denied() -> None:
    decision = evaluate(project_shaped_policy([GOOD]), decrypt(**ctx(image=None)))
    assert not decision.allowed and decision.statement == "DenyDecryptWithoutAttestation"


def test_unlisted_image_is_explicitly_denied() -> None:
    decision = evaluate(project_shaped_policy([GOOD]), decrypt(**ctx(image=BAD)))
    assert not decision.allowed and decision.statement == "DenyDecryptUnlistedImage"


def test_debug_mode_zero_image_is_denied() -> None:
    decision = evaluate(project_shaped_policy([GOOD]), decrypt(**ctx(image="0" * 96)))
    assert not decision.allowed


def test_wrong_encryption_context_is_not_allowed() -> None:
    decision = evaluate(project_shaped_policy([GOOD]), decrypt(**ctx(app_id="other")))
    assert not decision.allowed and "implicit" in decision.reason


def test_missing_encryption_context_is_not_allowed() -> None:
    assert not evaluate(project_shaped_policy([GOOD]), decrypt(**ctx(app_id=None))).allowed


def test_encryption_context_key_differing_in_case_is_a_different_key() -> None:
    context = {IMAGE: GOOD, "kms:EncryptionContext:APP_ID": "app"}
    assert not evaluate(project_shaped_policy([GOOD]), decrypt(**context)).allowed


def test_condition_key_prefix_is_case_insensitive() -> None:
    context = {IMAGE.upper(): GOOD, "KMS:encryptioncontext:app_id": "app"}
    assert evaluate(project_shaped_policy([GOOD]), decrypt(**context)).allowed


def test_any_of_several_allowed_images_is_allowed() -> None:
    policy = project_shaped_policy([BAD, GOOD])
    assert evaluate(policy, decrypt(**ctx(image=GOOD))).allowed
    assert evaluate(policy, decrypt(**ctx(image=BAD))).allowed


def test_other_principal_gets_implicit_deny() -> None:
    assert not evaluate(project_shaped_policy([GOOD]), decrypt(OTHER, **ctx())).allowed


def test_key_administrator_account_may_decrypt_without_attestation() -> None:
    admin = "arn:aws:iam::111111111111:role/Pipeline"
    assert evaluate(project_shaped_policy([GOOD]), decrypt(admin, **ctx(image=None))).allowed


def test_deny_wins_over_an_allow_in_the_same_policy() -> None:
    policy = project_shaped_policy([GOOD])
    policy["Statement"].append({"Sid": "Broad", "Effect": "Allow", "Principal": "*",
                                "Action": "kms:*", "Resource": "*"})
    assert not evaluate(policy, decrypt(**ctx(image=BAD))).allowed


def test_other_action_is_not_allowed_by_a_decrypt_statement() -> None:
    request = Request(HOST, "kms:Encrypt", KEY, ctx())
    assert not evaluate(project_shaped_policy([GOOD]), request).allowed


def test_action_names_match_case_insensitively_with_wildcards() -> None:
    policy = {"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "KMS:Dec*",
                             "Resource": "*"}]}
    assert evaluate(policy, decrypt()).allowed


def test_resource_must_match() -> None:
    policy = {"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt",
                             "Resource": "arn:aws:kms:us-east-1:111111111111:key/other"}]}
    assert not evaluate(policy, decrypt()).allowed


def test_not_action_excludes_the_listed_actions() -> None:
    policy = {"Statement": [{"Effect": "Allow", "Principal": "*", "NotAction": "kms:Decrypt",
                             "Resource": "*"}]}
    assert not evaluate(policy, decrypt()).allowed
    assert evaluate(policy, Request(HOST, "kms:Encrypt", KEY)).allowed


# ---- operators one by one ------------------------------------------------------------------


def test_string_not_equals_holds_when_the_key_is_absent() -> None:
    assert condition_holds("StringNotEquals", ["x"], None)


def test_string_not_equals_ignore_case_holds_when_absent_and_compares_folded() -> None:
    assert condition_holds("StringNotEqualsIgnoreCase", ["x"], None)
    assert not condition_holds("StringNotEqualsIgnoreCase", ["ABC"], "abc")


def test_string_equals_fails_when_the_key_is_absent() -> None:
    assert not condition_holds("StringEquals", ["x"], None)


def test_string_equals_is_case_sensitive() -> None:
    assert not condition_holds("StringEquals", ["ABC"], "abc")


def test_string_equals_ignore_case_folds_case() -> None:
    assert condition_holds("StringEqualsIgnoreCase", ["ABC"], "abc")


def test_string_like_uses_wildcards_and_not_like_negates() -> None:
    assert condition_holds("StringLike", ["app-*"], "app-1")
    assert not condition_holds("StringLike", ["app-?"], "app-12")
    assert condition_holds("StringNotLike", ["app-*"], "other")


def test_if_exists_holds_when_absent() -> None:
    assert condition_holds("StringEqualsIfExists", ["x"], None)
    assert not condition_holds("StringEqualsIfExists", ["x"], "y")


def test_null_true_and_false() -> None:
    assert condition_holds("Null", ["true"], None)
    assert not condition_holds("Null", ["true"], "v")
    assert condition_holds("Null", ["false"], "v")
    assert not condition_holds("Null", ["false"], None)


def test_bool_compares_true_false_strings() -> None:
    assert condition_holds("Bool", ["true"], "true")
    assert not condition_holds("Bool", ["true"], "false")
    assert not condition_holds("Bool", ["true"], None)


def test_for_any_value_needs_one_match_and_fails_when_absent() -> None:
    assert condition_holds("ForAnyValue:StringEquals", ["a"], ["b", "a"])
    assert not condition_holds("ForAnyValue:StringEquals", ["a"], ["b"])
    assert not condition_holds("ForAnyValue:StringEquals", ["a"], None)


def test_for_all_values_needs_every_match_and_holds_when_absent() -> None:
    assert condition_holds("ForAllValues:StringEquals", ["a", "b"], ["a", "b"])
    assert not condition_holds("ForAllValues:StringEquals", ["a"], ["a", "c"])
    assert condition_holds("ForAllValues:StringEquals", ["a"], None)


def test_for_any_value_with_a_negated_operator() -> None:
    assert condition_holds("ForAnyValue:StringNotEquals", ["a"], ["a", "b"])
    assert not condition_holds("ForAnyValue:StringNotEquals", ["a"], ["a"])


def test_negated_operator_with_several_values_holds_only_if_none_match() -> None:
    assert not condition_holds("StringNotEquals", ["a", "b"], "b")
    assert condition_holds("StringNotEquals", ["a", "b"], "c")


def test_all_keys_of_an_operator_must_hold() -> None:
    policy = {"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*",
                             "Condition": {"StringEquals": {"k1": "a", "k2": "b"}}}]}
    assert evaluate(policy, decrypt(k1="a", k2="b")).allowed
    assert not evaluate(policy, decrypt(k1="a", k2="x")).allowed


def test_unknown_operator_fails_closed() -> None:
    policy = {"Statement": [{"Effect": "Deny", "Principal": "*", "Action": "*", "Resource": "*",
                             "Condition": {"NumericLessThan": {"k": "3"}}}]}
    with pytest.raises(PolicyError, match="not supported"):
        evaluate(policy, decrypt(k="1"))


def test_unknown_statement_element_fails_closed() -> None:
    policy = {"Statement": [{"Effect": "Allow", "NotPrincipal": {"AWS": OTHER}, "Action": "*",
                             "Resource": "*"}]}
    with pytest.raises(PolicyError, match="NotPrincipal"):
        evaluate(policy, decrypt())


def test_principal_forms() -> None:
    assert principal_matches({"AWS": "222222222222"}, HOST)
    assert principal_matches({"AWS": ["x", HOST]}, HOST)
    assert not principal_matches({"AWS": "arn:aws:iam::222222222222:role/Another"}, HOST_SESSION)
    assert not principal_matches({"Service": "kms.amazonaws.com"}, HOST)
