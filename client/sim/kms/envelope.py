"""The CMS EnvelopedData KMS answers a `Recipient` with (`CiphertextForRecipient`)."""

from __future__ import annotations

import hashlib
import os

from asn1crypto import cms
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from client.sim.kms.fault import KmsFault


def envelope_for_recipient(plaintext: bytes, public_key_der: bytes) -> bytes:
    """CMS EnvelopedData as KMS builds it: one KeyTransRecipientInfo v2 identified by
    SHA-256(DER SPKI), RSAES-OAEP-SHA256/MGF1-SHA256, AES-256-CBC content."""
    public_key = serialization.load_der_public_key(public_key_der)
    if not isinstance(public_key, rsa.RSAPublicKey) or public_key.key_size < 2048:
        raise KmsFault("ValidationException",
                       "the attestation document's public_key must be an RSA key of at least "
                       "2048 bits in DER SubjectPublicKeyInfo form")
    spki = public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    content_key, iv = os.urandom(32), os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(content_key), modes.CBC(iv)).encryptor()
    encrypted_content = encryptor.update(padded) + encryptor.finalize()
    encrypted_key = public_key.encrypt(
        content_key, OAEP(mgf=MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(),
                          label=None))
    recipient = cms.KeyTransRecipientInfo({
        "version": "v2",
        "rid": cms.RecipientIdentifier(name="subject_key_identifier",
                                       value=hashlib.sha256(spki).digest()),
        "key_encryption_algorithm": {
            "algorithm": "rsaes_oaep",
            "parameters": {
                "hash_algorithm": {"algorithm": "sha256"},
                "mask_gen_algorithm": {"algorithm": "mgf1",
                                       "parameters": {"algorithm": "sha256"}},
                "p_source_algorithm": {"algorithm": "p_specified", "parameters": b""},
            },
        },
        "encrypted_key": encrypted_key,
    })
    enveloped = cms.EnvelopedData({
        "version": "v2",
        "recipient_infos": [cms.RecipientInfo(name="ktri", value=recipient)],
        "encrypted_content_info": {
            "content_type": "data",
            "content_encryption_algorithm": {"algorithm": "aes256_cbc", "parameters": iv},
            "encrypted_content": encrypted_content,
        },
    })
    encoded: bytes = cms.ContentInfo({"content_type": "enveloped_data",
                                      "content": enveloped}).dump()
    return encoded
