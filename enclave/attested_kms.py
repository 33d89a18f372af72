"""KMS Decrypt for an attested enclave: the plaintext comes back encrypted to a key only we hold.

Per call: a fresh RSA-2048 key pair; an NSM attestation document carrying its DER
SubjectPublicKeyInfo as `public_key`; `kms.decrypt(..., Recipient={"KeyEncryptionAlgorithm":
"RSAES_OAEP_SHA_256", "AttestationDocument": doc})`. KMS evaluates the key policy's
`kms:RecipientAttestation:*` conditions against the document and answers with
`CiphertextForRecipient` (CMS EnvelopedData to that public key), never with `Plaintext`. The private
key exists only in this process's memory for the length of the call, so the parent instance, which
carries the traffic, sees only ciphertext.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from enclave.cms import CmsError, decrypt_enveloped_data
from enclave.sdk_errors import KEY_SERVICE_ERROR, service_error_text

RECIPIENT_KEY_BITS = 2048
RECIPIENT_ALGORITHM = "RSAES_OAEP_SHA_256"
log = logging.getLogger(__name__)


class AttestedDecryptError(Exception):
    """KMS answered in a way an attested decrypt must not accept."""


class AttestationSource(Protocol):
    def attestation(self, *, user_data: bytes | None = None, nonce: bytes | None = None,
                    public_key: bytes | None = None) -> bytes: ...


def attested_decrypt(kms_client: Any, nsm: AttestationSource, *, ciphertext_blob: bytes,
                     encryption_context: Mapping[str, str], key_id: str) -> bytes:
    """Decrypt `ciphertext_blob` under `key_id` through KMS with an attestation `Recipient`.

    Raises `AttestedDecryptError` if KMS returns `Plaintext` (a response that bypassed the
    recipient path: fail closed) or no `CiphertextForRecipient`, `enclave.cms.CmsError` if that
    does not unwrap with our key, `enclave.nsm.NsmError` if the NSM refuses, and botocore's
    `ClientError` if KMS refuses (e.g. AccessDeniedException from the key policy).
    """
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=RECIPIENT_KEY_BITS)
    spki = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    document = nsm.attestation(public_key=spki)
    try:
        response = kms_client.decrypt(
            CiphertextBlob=ciphertext_blob,
            KeyId=key_id,
            EncryptionContext=dict(encryption_context),
            Recipient={"KeyEncryptionAlgorithm": RECIPIENT_ALGORITHM,
                       "AttestationDocument": document},
        )
    except (ClientError, BotoCoreError) as exc:
        # The Encryption SDK replaces a key provider's failure with a generic "Unable to decrypt
        # any data key". KMS's own answer goes out on this record, as the SDK's KMS master key
        # logs its own, and enclave.sealing puts it into the unseal error.
        log.error("KMS did not release the data key of %s: %s", key_id, service_error_text(exc),
                  extra={KEY_SERVICE_ERROR: exc})
        raise
    if response.get("Plaintext") is not None:
        raise AttestedDecryptError(
            "KMS returned Plaintext to an attested Decrypt: the plaintext crossed the parent "
            "instance in the clear; refusing it. Check that the endpoint is the real KMS and "
            "that the request carried the Recipient")
    if key_id.startswith("arn:") and response.get("KeyId") not in (None, key_id):
        raise AttestedDecryptError(
            f"KMS answered for key {response.get('KeyId')}, not the requested {key_id}")
    wrapped = response.get("CiphertextForRecipient")
    if not wrapped:
        raise AttestedDecryptError("KMS returned no CiphertextForRecipient to an attested Decrypt")
    try:
        return decrypt_enveloped_data(wrapped, private_key)
    except CmsError as exc:
        raise CmsError(f"KMS CiphertextForRecipient did not unwrap: {exc}") from None

