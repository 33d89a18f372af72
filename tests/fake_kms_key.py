"""A stand-in for a KMS key in the runtime's unit tests: same provider id and key info as KMS.

The image policy (enclave/policy.py) accepts only data keys whose provider is `aws-kms` and whose
key info is a pinned KMS key ARN, exactly what KMS-sealed bundles carry. This master key produces
such data keys without a KMS endpoint: it wraps them with a local AES-GCM key, bound to the
encryption context. The attested path itself is tested against the local KMS (client/sim/kms/).
"""

from __future__ import annotations

import json
import os
from typing import Any

import attr
from aws_encryption_sdk.exceptions import DecryptKeyError
from aws_encryption_sdk.key_providers.base import (
    MasterKey,
    MasterKeyConfig,
    MasterKeyProvider,
    MasterKeyProviderConfig,
)
from aws_encryption_sdk.structures import DataKey, EncryptedDataKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

TEST_KEY_ARN = "arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab"
OTHER_KEY_ARN = "arn:aws:kms:us-east-1:222222222222:key/99999999-0000-4000-8000-000000000000"


def _aad(encryption_context: Any) -> bytes:
    return json.dumps(dict(encryption_context or {}), sort_keys=True).encode()


@attr.s(hash=True)
class FakeKmsMasterKeyConfig(MasterKeyConfig):
    provider_id = "aws-kms"
    secret = attr.ib(hash=False, default=b"s" * 32)
    decrypts = attr.ib(hash=False, factory=list)  # every decrypt, like KMS requests


class FakeKmsMasterKey(MasterKey):
    provider_id = "aws-kms"
    _config_class = FakeKmsMasterKeyConfig

    def _wrap(self, plaintext: bytes, encryption_context: Any) -> bytes:
        nonce = os.urandom(12)
        return nonce + AESGCM(self.config.secret).encrypt(nonce, plaintext,
                                                           _aad(encryption_context))

    def _generate_data_key(self, algorithm: Any, encryption_context: Any = None) -> DataKey:
        plaintext = os.urandom(algorithm.kdf_input_len)
        return DataKey(key_provider=self.key_provider, data_key=plaintext,
                       encrypted_data_key=self._wrap(plaintext, encryption_context))

    def _encrypt_data_key(self, data_key: Any, algorithm: Any, encryption_context: Any = None
                          ) -> EncryptedDataKey:
        return EncryptedDataKey(key_provider=self.key_provider,
                                encrypted_data_key=self._wrap(data_key.data_key,
                                                              encryption_context))

    def _decrypt_data_key(self, encrypted_data_key: Any, algorithm: Any,
                          encryption_context: Any = None) -> DataKey:
        self.config.decrypts.append(dict(encryption_context or {}))
        blob = encrypted_data_key.encrypted_data_key
        try:
            plaintext = AESGCM(self.config.secret).decrypt(blob[:12], blob[12:],
                                                           _aad(encryption_context))
        except Exception as exc:
            raise DecryptKeyError("fake KMS: wrong key or context") from exc
        return DataKey(key_provider=self.key_provider, data_key=plaintext,
                       encrypted_data_key=blob)


@attr.s(hash=True)
class FakeKmsProviderConfig(MasterKeyProviderConfig):
    key_arn = attr.ib(hash=True, default=TEST_KEY_ARN)
    secret = attr.ib(hash=False, default=b"s" * 32)
    decrypts = attr.ib(hash=False, factory=list)


class FakeKmsKeyProvider(MasterKeyProvider):
    """One 'KMS key' by ARN; `decrypts` lists every data-key decryption it was asked for."""

    provider_id = "aws-kms"
    vend_masterkey_on_decrypt = False
    _config_class = FakeKmsProviderConfig

    def __init__(self, **kwargs: Any) -> None:
        self.decrypts = self.config.decrypts
        self.add_master_key(self.config.key_arn)

    def _new_master_key(self, key_id: Any) -> FakeKmsMasterKey:
        return FakeKmsMasterKey(key_id=key_id, secret=self.config.secret,
                                decrypts=self.config.decrypts)
