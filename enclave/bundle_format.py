"""The sealed bundle's format and the AWS Encryption SDK set up to read and write it.

Format (bundle_format 1):
- one ESDK message, framed (1 MiB frames), algorithm suite AES_256_GCM_HKDF_SHA512_COMMIT_KEY
  (key commitment, no signature), `CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT`;
- encryption context exactly `{"bundle_format": "1", "app_id": ..., "app_version": ...}`;
- plaintext: an uncompressed POSIX (pax) tar stream of the application directory, regular files
  and directories only, `manifest.json` as the first member.

Why the committing suite without a signature: a message signature protects against someone
who holds a message's data key forging a different message under the same encrypted data key.
Here the only parties that ever hold a data key are the Third Party, who seals, and the
attested enclave running the Third Party's approved image, which unseals (KMS returns the key
encrypted to the enclave's ephemeral key; the host never sees it). They are one trust domain,
so a signature would guard against nobody, while hashing every ciphertext byte with SHA-384
takes 30-40 % of the SDK's streaming time (256 MiB in process here: seal 1.0 s signed against
0.6 s, unseal 1.0 s against 0.7 s). What the bundle
needs is still there: AES-GCM per frame with the sequence number and a final-frame marker in
the authenticated data (tampering, reordering, dropping frames and truncation are detected),
key commitment (one ciphertext cannot open to different plaintexts under different keys), and
the encryption context bound into both the header authentication and the KMS ciphertext. The
algorithm is pinned on unsealing, so a bundle under any other suite is refused.
"""

from __future__ import annotations

from typing import Any

import aws_encryption_sdk
from aws_encryption_sdk.exceptions import AWSEncryptionSDKClientError
from aws_encryption_sdk.identifiers import Algorithm, CommitmentPolicy
from aws_encryption_sdk.key_providers.base import MasterKeyProvider
from aws_encryption_sdk.key_providers.kms import StrictAwsKmsMasterKeyProvider
from botocore.exceptions import BotoCoreError

from enclave.sdk_errors import describe_error

BUNDLE_FORMAT = "1"
ALGORITHM = Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY
# 1 MiB frames: the SDK's per-frame Python overhead is amortized and buffers stay a few MiB.
FRAME_LENGTH = 1024 * 1024
# A bundle may come from anywhere: the decryptor holds one whole frame in memory, so the frame
# length a header may claim is capped (checked by the SDK before any key is requested).
MAX_FRAME_LENGTH = 4 * 1024 * 1024
# Each encrypted data key may cost a KMS call; a bundle has one per master key used to seal.
MAX_ENCRYPTED_DATA_KEYS = 4
# Limits on the tar stream inside, the same for the producer and the extractor.
MAX_MEMBERS = 100_000
MAX_MEMBER_NAME_CHARS = 4096


class BundleError(Exception):
    """Base class: sealing or unsealing failed. The message says what and what to do."""


class SealError(BundleError):
    """The application directory cannot be sealed as it is."""


class KeyProviderError(BundleError):
    """The KMS key provider cannot be set up (key id form, region)."""


class UnsealError(BundleError):
    """The bundle was not unsealed; nothing was left in the target directory."""


def bundle_encryption_context(app_id: str, app_version: str) -> dict[str, str]:
    """The encryption context a bundle for this app is sealed under (and the key policy checks)."""
    return {"bundle_format": BUNDLE_FORMAT, "app_id": app_id, "app_version": app_version}


def esdk_client() -> aws_encryption_sdk.EncryptionSDKClient:
    return aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT,
        max_encrypted_data_keys=MAX_ENCRYPTED_DATA_KEYS,
    )


def kms_key_provider(key_arn: str, *, botocore_session: Any = None) -> MasterKeyProvider:
    """An ordinary KMS key provider (the owner's credentials), strict: only this key is used.

    For decryption `key_arn` must be the key ARN (not an alias). The region comes from the ARN;
    the endpoint honours `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_KMS` through botocore.
    """
    kwargs: dict[str, Any] = {"key_ids": [key_arn]}
    if botocore_session is not None:
        kwargs["botocore_session"] = botocore_session
    try:
        return StrictAwsKmsMasterKeyProvider(**kwargs)
    except (AWSEncryptionSDKClientError, BotoCoreError, ValueError) as exc:
        raise KeyProviderError(
            f"cannot use KMS key {key_arn!r}: {describe_error(exc)}; give the key ARN, or set "
            "AWS_REGION for a key id or alias"
        ) from exc
