"""The image's pinning of keys and apps, and the header it decides on, refused for the reason
the operator is told.

Written against the mutants `make mutate` found alive (docs/testing.md): `ImagePolicy`'s
`check_header` and `check_context`, `version_key`, and `read_bundle_header`.
"""

from __future__ import annotations

import io

import aws_encryption_sdk
import pytest
from aws_encryption_sdk.identifiers import CommitmentPolicy

from enclave.policy import BundleRefused, ImagePolicy, version_key
from enclave.runner import read_bundle_header
from tests.fake_kms_key import OTHER_KEY_ARN, TEST_KEY_ARN, FakeKmsKeyProvider

CONTEXT = {"app_id": "sample-inference", "app_version": "1.2.0"}


def policy(minimum: str | None = None, arns: tuple[str, ...] = (TEST_KEY_ARN,)) -> ImagePolicy:
    return ImagePolicy(region="us-east-1", kms_key_arns=arns,
                       app_ids=("sample-inference", "other-app"), minimum_app_version=minimum)


def refusal(check, *args) -> str:
    with pytest.raises(BundleRefused) as caught:
        check(*args)
    return str(caught.value)


def test_a_header_without_data_keys_is_refused_as_such() -> None:
    assert refusal(policy().check_header, [], CONTEXT) == (
        "the bundle carries no encrypted data key")


def test_an_unpinned_key_is_refused_naming_it_and_the_pinned_ones() -> None:
    pinned = policy(arns=(TEST_KEY_ARN, OTHER_KEY_ARN.replace("222222222222", "111111111111")))
    message = refusal(pinned.check_header, [("aws-kms", OTHER_KEY_ARN)], CONTEXT)
    assert message == (
        f"the bundle has a data key for aws-kms {OTHER_KEY_ARN!r}; this image trusts only "
        f"aws-kms keys {', '.join(pinned.kms_key_arns)}: refused before any KMS request. "
        "Seal with the third party's enclave key")


def test_the_pinned_key_of_the_first_data_key_is_the_one_to_decrypt_with() -> None:
    second = OTHER_KEY_ARN.replace("222222222222", "111111111111")
    both = policy(arns=(TEST_KEY_ARN, second))
    keys = [("aws-kms", second), ("aws-kms", TEST_KEY_ARN)]
    assert both.check_header(keys, CONTEXT) == second


def test_a_pinned_key_does_not_let_an_unpinned_app_through() -> None:
    message = refusal(policy().check_header, [("aws-kms", TEST_KEY_ARN)],
                      {**CONTEXT, "app_id": "intruder"})
    assert message == (
        "the bundle is app 'intruder'; this image runs only sample-inference, other-app")


def test_every_pinned_app_is_accepted() -> None:
    for app_id in ("sample-inference", "other-app"):
        policy(minimum="1.2").check_context({"app_id": app_id, "app_version": "1.2"})


def test_a_version_that_is_not_numeric_is_refused_naming_the_minimum() -> None:
    message = refusal(policy(minimum="1.2").check_context, {**CONTEXT, "app_version": "1.x"})
    assert message == ("the bundle's version '1.x' is not a dotted numeric version, and this "
                       "image requires at least 1.2")


def test_without_a_minimum_any_version_string_is_run() -> None:
    policy().check_context({**CONTEXT, "app_version": "not-numeric"})


def test_an_older_release_is_refused_naming_both_versions() -> None:
    message = refusal(policy(minimum="1.2").check_context, {**CONTEXT, "app_version": "1.1.9"})
    assert message == ("the bundle is sample-inference 1.1.9, below this image's minimum "
                       "version 1.2 (an older release is not run again)")


def test_the_minimum_version_itself_is_run() -> None:
    policy(minimum="1.2.0").check_context({**CONTEXT, "app_version": "1.2"})
    policy(minimum="1.2").check_context({**CONTEXT, "app_version": "1.2.0"})


@pytest.mark.parametrize(("version", "key"), [
    ("1.2.0", (1, 2)), ("1.0.0", (1,)), ("0", (0,)), ("0.0", (0,)), ("10.0.1", (10, 0, 1)),
])
def test_version_key_drops_only_trailing_zeros(version: str, key: tuple[int, ...]) -> None:
    assert version_key(version) == key


def sealed(provider: FakeKmsKeyProvider, context: dict[str, str]) -> bytes:
    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)
    ciphertext, _header = client.encrypt(source=b"payload", key_provider=provider,
                                         encryption_context=context)
    return ciphertext


def test_the_header_names_each_data_key_and_the_context_as_text() -> None:
    header = read_bundle_header(io.BytesIO(sealed(FakeKmsKeyProvider(), CONTEXT)), "app.sealed")
    assert header.data_keys == (("aws-kms", TEST_KEY_ARN),)
    assert {k: header.encryption_context[k] for k in CONTEXT} == CONTEXT


def test_a_file_that_is_not_a_bundle_is_refused_naming_it() -> None:
    with pytest.raises(Exception) as caught:  # noqa: B017 - the runner's own failure type
        read_bundle_header(io.BytesIO(b"not a sealed bundle at all"), "notes.txt")
    assert str(caught.value).startswith(
        "unsealing 'notes.txt' failed: it is not a sealed bundle (")
    assert str(caught.value).endswith("); upload the .sealed file the pipeline produced")


def test_a_header_with_more_data_keys_than_the_runtime_reads_is_refused() -> None:
    provider = FakeKmsKeyProvider()
    for account in range(16):
        provider.add_master_key(TEST_KEY_ARN.replace("111111111111", f"{account:012d}"))
    bundle = sealed(provider, CONTEXT)
    with pytest.raises(Exception) as caught:  # noqa: B017 - the runner's own failure type
        read_bundle_header(io.BytesIO(bundle), "many.sealed")
    assert str(caught.value).startswith("unsealing 'many.sealed' failed: it is not a sealed bundle")
