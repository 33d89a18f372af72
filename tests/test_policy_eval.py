"""The local KMS key-policy evaluator: the key policy the synthesized ThirdPartyStack template
holds, decided and attacked; then operator by operator."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from client.sim.image import ENCLAVE_KEY_LOGICAL_ID
from client.sim.policy import (
    PolicyError,
    Request,
    condition_holds,
    evaluate,
    principal_matches,
)
from client.sim.template import key_policy_from_template
from pipeline.allowlist import add_measurement

# What cdk.json's context makes of the enclave key's policy: the key's account (the third
# party's), the host role HostStack creates in the host account, the app id.
KEY_ACCOUNT = "111111111111"
REGION = "us-east-1"
HOST = "arn:aws:iam::222222222222:role/sealed-enclave-host-example-ml-vendor"
HOST_SESSION = "arn:aws:sts::222222222222:assumed-role/sealed-enclave-host-example-ml-vendor/i-0abc"
APP_ID = "sample-inference"
OTHER = "arn:aws:iam::333333333333:role/Other"
KEY = f"arn:aws:kms:{REGION}:{KEY_ACCOUNT}:key/0000"
GOOD = "a" * 96
BAD = "b" * 96
IMAGE = "kms:RecipientAttestation:ImageSha384"

# Every test below that reads the template synthesizes the CDK app once per session.
template = pytest.mark.cdk


@pytest.fixture(scope="module")
def template_policy(third_party_template_path: Path) -> dict[str, Any]:
    """The enclave key's policy as the ThirdPartyStack template defines it (no image allowed
    yet), read as the simulation reads it."""
    return key_policy_from_template(third_party_template_path,
                                    logical_id_prefix=ENCLAVE_KEY_LOGICAL_ID,
                                    account=KEY_ACCOUNT, region=REGION)


def allowing(policy: dict[str, Any], *images: str) -> dict[str, Any]:
    """The policy with `images` allowed by the pipeline's own function, as a release does."""
    for image in images:
        policy = add_measurement(policy, image, keep=len(images))
    return policy


@pytest.fixture
def policy(template_policy: dict[str, Any]) -> dict[str, Any]:
    """The template's policy after the pipeline allowed the image GOOD."""
    return allowing(template_policy, GOOD)


def decrypt(principal: str = HOST, **context) -> Request:
    return Request(principal, "kms:Decrypt", KEY, context)


def ctx(image: str | None = GOOD, app_id: str | None = APP_ID) -> dict:
    out = {}
    if image is not None:
        out[IMAGE] = image
    if app_id is not None:
        out["kms:EncryptionContext:app_id"] = app_id
    return out


# ---- the policy the stack writes, decided as KMS would ---------------------------------------


@template
def test_template_policy_uses_the_ignore_case_operators_this_evaluator_decides(
        template_policy) -> None:
    operators = {op for s in template_policy["Statement"] for op in s.get("Condition", {})}
    assert {"StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase", "Null"} <= operators


@template
@pytest.mark.parametrize("image,app_id,allowed", [
    (GOOD, APP_ID, True),
    (GOOD.upper(), APP_ID, True),  # a digest's case carries no meaning
    (BAD, APP_ID, False),
    ("0" * 96, APP_ID, False),  # debug mode
    (None, APP_ID, False),  # the parent instance, no attestation
    (GOOD, APP_ID.upper(), False),  # the app id is compared exactly
    (GOOD, "other-app", False),
    (GOOD, None, False),
])
def test_template_policy_decides_host_decrypts(policy, image, app_id, allowed) -> None:
    decision = evaluate(policy, decrypt(**ctx(image, app_id)))
    assert decision.allowed is allowed, decision


@template
def test_template_policy_with_no_image_yet_allows_no_attestation(template_policy) -> None:
    # An attested ImageSha384 is 96 hex digits, in any case: never the placeholder, folded or not.
    for image in (GOOD, GOOD.upper(), "0" * 96):
        assert not evaluate(template_policy, decrypt(**ctx(image))).allowed


# ---- the template's policy, attacked -------------------------------------------------------


@template
def test_allowed_image_with_right_context_is_allowed(policy) -> None:
    decision = evaluate(policy, decrypt(**ctx()))
    assert decision.allowed and decision.statement == "AllowAttestedEnclaveDecrypt"


@template
def test_assumed_role_session_of_the_host_role_is_allowed(policy) -> None:
    assert evaluate(policy, decrypt(HOST_SESSION, **ctx())).allowed


@template
def test_request_without_attestation_is_explicitly_denied(policy) -> None:
    decision = evaluate(policy, decrypt(**ctx(image=None)))
    assert not decision.allowed and decision.statement == "DenyDecryptWithoutAttestation"


@template
def test_unlisted_image_is_explicitly_denied(policy) -> None:
    decision = evaluate(policy, decrypt(**ctx(image=BAD)))
    assert not decision.allowed and decision.statement == "DenyDecryptUnlistedImage"


@template
def test_debug_mode_zero_image_is_explicitly_denied(policy) -> None:
    decision = evaluate(policy, decrypt(**ctx(image="0" * 96)))
    assert not decision.allowed and decision.statement == "DenyDecryptUnlistedImage"


@template
def test_wrong_encryption_context_is_not_allowed(policy) -> None:
    decision = evaluate(policy, decrypt(**ctx(app_id="other")))
    assert not decision.allowed and "implicit" in decision.reason


@template
def test_missing_encryption_context_is_not_allowed(policy) -> None:
    assert not evaluate(policy, decrypt(**ctx(app_id=None))).allowed


@template
def test_encryption_context_key_differing_in_case_is_a_different_key(policy) -> None:
    context = {IMAGE: GOOD, "kms:EncryptionContext:APP_ID": APP_ID}
    assert not evaluate(policy, decrypt(**context)).allowed


@template
def test_condition_key_prefix_is_case_insensitive(policy) -> None:
    context = {IMAGE.upper(): GOOD, "KMS:encryptioncontext:app_id": APP_ID}
    assert evaluate(policy, decrypt(**context)).allowed


@template
def test_any_of_several_allowed_images_is_allowed(template_policy) -> None:
    policy = allowing(template_policy, BAD, GOOD)
    assert evaluate(policy, decrypt(**ctx(image=GOOD))).allowed
    assert evaluate(policy, decrypt(**ctx(image=BAD))).allowed


@template
def test_other_principal_gets_implicit_deny(policy) -> None:
    assert not evaluate(policy, decrypt(OTHER, **ctx())).allowed


@template
def test_key_administrator_account_may_decrypt_without_attestation(policy) -> None:
    admin = f"arn:aws:iam::{KEY_ACCOUNT}:role/Pipeline"
    assert evaluate(policy, decrypt(admin, **ctx(image=None))).allowed


@template
def test_deny_wins_over_an_allow_in_the_same_policy(policy) -> None:
    broadened = copy.deepcopy(policy)
    broadened["Statement"].append({"Sid": "Broad", "Effect": "Allow", "Principal": "*",
                                   "Action": "kms:*", "Resource": "*"})
    assert not evaluate(broadened, decrypt(**ctx(image=BAD))).allowed


@template
@pytest.mark.parametrize("action", ["kms:Encrypt", "kms:GenerateDataKey", "kms:PutKeyPolicy",
                                    "kms:ReEncryptFrom"])
def test_host_is_denied_every_other_use_of_the_key(policy, action) -> None:
    decision = evaluate(policy, Request(HOST, action, KEY, ctx()))
    assert not decision.allowed and decision.statement == "DenyHostAnyOtherKeyUse"


# ---- statement elements, on small policies -------------------------------------------------


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
