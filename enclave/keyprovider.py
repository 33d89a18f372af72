"""An AWS Encryption SDK master key provider whose KMS Decrypt is attested.

`AttestedKmsMasterKeyProvider(key_arn, kms_client, nsm)` is a strict provider for exactly one KMS
key ARN: it decrypts data keys only for that key, through `enclave.attested_kms.attested_decrypt`,
so `enclave.sealing.unseal_bundle(..., key_provider=...)` runs unchanged inside the enclave. It
never encrypts or generates data keys: sealing happens outside the enclave with the ordinary KMS
provider. Its provider id is "aws-kms", so it reads messages sealed by
`StrictAwsKmsMasterKeyProvider`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attr
from aws_encryption_sdk.exceptions import ConfigMismatchError, DecryptKeyError, InvalidKeyIdError
from aws_encryption_sdk.internal.str_ops import to_str
from aws_encryption_sdk.key_providers.base import MasterKeyProvider, MasterKeyProviderConfig
from aws_encryption_sdk.key_providers.kms import KMSMasterKey, KMSMasterKeyConfig
from aws_encryption_sdk.structures import DataKey
from botocore.exceptions import ClientError

from enclave.attested_kms import AttestationSource, AttestedDecryptError, attested_decrypt
from enclave.cms import CmsError
from enclave.nsm import NsmError

PROVIDER_ID = "aws-kms"
# Raises to refuse an encryption context before KMS sees it (the image policy's check).
ContextGuard = Callable[[dict[str, str]], None]


@attr.s(hash=True)
class AttestedKmsMasterKeyConfig(KMSMasterKeyConfig):  # type: ignore[misc]  # untyped SDK
    nsm: AttestationSource | None = attr.ib(hash=False, default=None)
    context_guard: ContextGuard | None = attr.ib(hash=False, default=None)


class AttestedKmsMasterKey(KMSMasterKey):  # type: ignore[misc]  # untyped SDK
    """One KMS key; Decrypt goes through the attested recipient path."""

    _config_class = AttestedKmsMasterKeyConfig

    def _generate_data_key(self, algorithm: Any, encryption_context: Any = None) -> Any:
        raise ConfigMismatchError("the attested key provider only decrypts; seal outside the "
                                  "enclave with the KMS key provider")

    def _encrypt_data_key(self, data_key: Any, algorithm: Any, encryption_context: Any = None
                          ) -> Any:
        raise ConfigMismatchError("the attested key provider only decrypts; seal outside the "
                                  "enclave with the KMS key provider")

    def _decrypt_data_key(self, encrypted_data_key: Any, algorithm: Any,
                          encryption_context: Any = None) -> DataKey:
        edk_key_id = to_str(encrypted_data_key.key_provider.key_info)
        if edk_key_id != self._key_id:
            raise DecryptKeyError(f"the data key was sealed under {edk_key_id}, not {self._key_id}")
        if self.config.context_guard is not None:
            # The image policy once more, on the context KMS is about to see: nothing but a
            # pinned app at or above the minimum version ever reaches KMS.
            try:
                self.config.context_guard(encryption_context or {})
            except Exception as exc:
                raise DecryptKeyError(f"refused before KMS: {exc}") from exc
        try:
            plaintext = attested_decrypt(
                self.config.client, self.config.nsm,
                ciphertext_blob=encrypted_data_key.encrypted_data_key,
                encryption_context=encryption_context or {}, key_id=self._key_id)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise DecryptKeyError(
                f"KMS refused the attested Decrypt with {self._key_id}: "
                f"{error.get('Code')}: {error.get('Message')}") from exc
        except (AttestedDecryptError, CmsError, NsmError) as exc:
            raise DecryptKeyError(f"attested Decrypt with {self._key_id} failed: {exc}") from exc
        if len(plaintext) != algorithm.data_key_len:
            raise DecryptKeyError(f"KMS returned a {len(plaintext)}-byte data key, the algorithm "
                                  f"needs {algorithm.data_key_len}")
        return DataKey(key_provider=self.key_provider, data_key=plaintext,
                       encrypted_data_key=encrypted_data_key.encrypted_data_key)


@attr.s(hash=True)
class AttestedKmsMasterKeyProviderConfig(MasterKeyProviderConfig):  # type: ignore[misc]
    key_arn: str = attr.ib(hash=True, validator=attr.validators.instance_of(str))
    kms_client: Any = attr.ib(hash=False)
    nsm: AttestationSource | None = attr.ib(hash=False)
    context_guard: ContextGuard | None = attr.ib(hash=False, default=None)


class AttestedKmsMasterKeyProvider(MasterKeyProvider):  # type: ignore[misc]  # untyped SDK
    """Strict, decrypt-only provider for one KMS key ARN, attested through the NSM."""

    provider_id = PROVIDER_ID
    vend_masterkey_on_decrypt = False
    _config_class = AttestedKmsMasterKeyProviderConfig

    def __new__(cls, key_arn: str | None = None, kms_client: Any = None,
                nsm: AttestationSource | None = None,
                **kwargs: Any) -> AttestedKmsMasterKeyProvider:
        if key_arn is not None:
            kwargs.update(key_arn=key_arn, kms_client=kms_client, nsm=nsm)
        provider: AttestedKmsMasterKeyProvider = super().__new__(cls, **kwargs)
        return provider

    def __init__(self, key_arn: str | None = None, kms_client: Any = None,
                 nsm: AttestationSource | None = None, **kwargs: Any) -> None:
        # `context_guard(encryption_context)` raises to refuse a context before KMS sees it.
        if not self.config.key_arn.startswith("arn:") or ":key/" not in self.config.key_arn:
            raise ValueError(f"key_arn {self.config.key_arn!r} must be a KMS key ARN "
                             "(arn:aws:kms:<region>:<account>:key/<id>), not an alias or id: "
                             "the data key records the ARN it was sealed under")
        self.add_master_key(self.config.key_arn)

    def _new_master_key(self, key_id: Any) -> AttestedKmsMasterKey:
        if to_str(key_id) != self.config.key_arn:
            raise InvalidKeyIdError(f"this provider decrypts only with {self.config.key_arn}")
        return AttestedKmsMasterKey(key_id=self.config.key_arn, client=self.config.kms_client,
                                    nsm=self.config.nsm, context_guard=self.config.context_guard)
