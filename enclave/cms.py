"""Unwrap KMS `CiphertextForRecipient`: BER CMS EnvelopedData to our ephemeral RSA key.

KMS answers a Decrypt with `Recipient` by enveloping the plaintext to the public key carried in
the attestation document: EnvelopedData with one KeyTransRecipientInfo (RSAES-OAEP, SHA-256,
MGF1-SHA-256, empty label) and AES-256-CBC content. Only exactly that shape is accepted; anything
else is refused with `CmsError`: a looser parser is attack surface inside the enclave and buys
nothing.

The recipient is identified either by subjectKeyIdentifier (KMS uses SHA-256 of the recipient's DER
SubjectPublicKeyInfo; `openssl cms -keyid` uses the SHA-1 of the public key BIT STRING, RFC 5280
method 1 — both are derived from our key and accepted) or by issuer and serial number. For the
latter we hold no certificate unless the caller passes one; without it, the OAEP decoding check is
what proves the key was ours (OAEP decryption with another key fails its integrity check).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

AES_BLOCK_BYTES = 16
AES_256_KEY_BYTES = 32
# the largest CiphertextForRecipient we accept: KMS plaintexts are at most 4096 bytes
MAX_ENVELOPE_BYTES = 64 * 1024


class CmsError(ValueError):
    """The CMS message is malformed, of an unsupported shape, or not for our key."""


@dataclass(frozen=True)
class EnvelopeInfo:
    """The parsed, shape-checked parts of an EnvelopedData."""

    recipient_kind: str  # "subject_key_identifier" or "issuer_and_serial_number"
    subject_key_identifier: bytes | None
    issuer_and_serial: tuple[bytes, int] | None  # (DER issuer Name, serial)
    encrypted_key: bytes
    iv: bytes
    encrypted_content: bytes


def spki_sha256(public_key: rsa.RSAPublicKey) -> bytes:
    """The subjectKeyIdentifier KMS puts in its answer: SHA-256 of the DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


def _rfc5280_key_id(public_key: rsa.RSAPublicKey) -> bytes:
    return x509.SubjectKeyIdentifier.from_public_key(public_key).digest


def parse_enveloped_data(ber: bytes) -> EnvelopeInfo:
    """Parse and shape-check `ber`; no key needed. Raises `CmsError` naming what is unsupported."""
    if len(ber) > MAX_ENVELOPE_BYTES:
        raise CmsError(f"CMS message of {len(ber)} bytes exceeds {MAX_ENVELOPE_BYTES}")
    try:
        info = cms.ContentInfo.load(ber)
        content_type = info["content_type"].native
        if content_type != "enveloped_data":
            raise CmsError(f"CMS content type is {content_type!r}, expected enveloped_data")
        enveloped = info["content"]
        ktri = _only_recipient(enveloped["recipient_infos"])
        _check_key_encryption_algorithm(ktri["key_encryption_algorithm"])
        rid = ktri["rid"]
        ski, issuer_serial = _recipient_id(rid)
        iv, encrypted_content = _encrypted_content(enveloped["encrypted_content_info"])
        encrypted_key = ktri["encrypted_key"].native
    except CmsError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise CmsError(f"not a well-formed CMS EnvelopedData: {exc}") from None
    return EnvelopeInfo(
        recipient_kind=rid.name,
        subject_key_identifier=ski,
        issuer_and_serial=issuer_serial,
        encrypted_key=encrypted_key,
        iv=iv,
        encrypted_content=encrypted_content,
    )


def _only_recipient(recipients: cms.RecipientInfos) -> cms.KeyTransRecipientInfo:
    if len(recipients) != 1:
        raise CmsError(f"CMS message has {len(recipients)} recipients, expected exactly one: "
                       "KMS addresses only the attested key")
    recipient = recipients[0]
    if recipient.name != "ktri":
        raise CmsError(f"CMS recipient is {recipient.name!r}, expected a KeyTransRecipientInfo")
    return recipient.chosen


def _recipient_id(rid: cms.RecipientIdentifier) -> tuple[bytes | None, tuple[bytes, int] | None]:
    """(subject key identifier, (issuer DER, serial)): the one the message names, other None."""
    if rid.name == "subject_key_identifier":
        return rid.chosen.native, None
    if rid.name == "issuer_and_serial_number":
        return None, (rid.chosen["issuer"].dump(), rid.chosen["serial_number"].native)
    raise CmsError(f"unknown recipient identifier {rid.name!r}")


def _encrypted_content(content: cms.EncryptedContentInfo) -> tuple[bytes, bytes]:
    """(IV, ciphertext) of AES-256-CBC encrypted data, the only content accepted."""
    inner_type = content["content_type"].native
    if inner_type != "data":
        raise CmsError(f"enveloped content type is {inner_type!r}, expected data")
    algorithm = content["content_encryption_algorithm"]
    if algorithm["algorithm"].native != "aes256_cbc":
        raise CmsError(f"content encryption is {algorithm['algorithm'].native!r}, only "
                       "aes256_cbc is accepted")
    iv = algorithm["parameters"].native
    if not isinstance(iv, bytes) or len(iv) != AES_BLOCK_BYTES:
        raise CmsError("AES-256-CBC parameters must be a 16-byte IV")
    encrypted_content = content["encrypted_content"].native
    if encrypted_content is None:
        raise CmsError("the EnvelopedData carries no encrypted content (detached content is "
                       "not supported)")
    return iv, encrypted_content


def _check_key_encryption_algorithm(algorithm: cms.KeyEncryptionAlgorithm) -> None:
    name = algorithm["algorithm"].native
    if name != "rsaes_oaep":
        raise CmsError(f"key transport is {name!r}, only RSAES-OAEP with SHA-256 is accepted")
    params = algorithm["parameters"]
    if not isinstance(params, cms.RSAESOAEPParams):
        raise CmsError("RSAES-OAEP parameters are missing; the default (SHA-1) is not accepted")
    digest = params["hash_algorithm"]["algorithm"].native
    mgf = params["mask_gen_algorithm"]
    mgf_digest = mgf["parameters"]["algorithm"].native if mgf["parameters"] else None
    source = params["p_source_algorithm"]
    label = source["parameters"].native if source["parameters"] else b""
    if digest != "sha256" or mgf["algorithm"].native != "mgf1" or mgf_digest != "sha256":
        raise CmsError(f"RSAES-OAEP uses hash {digest!r} and mask {mgf['algorithm'].native!r}/"
                       f"{mgf_digest!r}; only SHA-256 with MGF1-SHA-256 is accepted")
    if source["algorithm"].native != "p_specified" or label:
        raise CmsError("RSAES-OAEP with a non-empty label is not accepted")


def decrypt_enveloped_data(ber: bytes, private_key: rsa.RSAPrivateKey, *,
                           certificate: x509.Certificate | None = None) -> bytes:
    """Decrypt KMS `CiphertextForRecipient` with our ephemeral key and return the plaintext.

    Raises `CmsError` if the message is malformed, uses another algorithm, has several
    recipients, names a recipient that is not `private_key`, or fails to decrypt.
    """
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise CmsError("the private key must be RSA")
    info = parse_enveloped_data(ber)
    public_key = private_key.public_key()
    if info.subject_key_identifier is not None:
        ours = (spki_sha256(public_key), _rfc5280_key_id(public_key))
        if not any(hmac.compare_digest(info.subject_key_identifier, k) for k in ours):
            raise CmsError(
                f"the CMS message is addressed to key id {info.subject_key_identifier.hex()}, not "
                f"to our key ({ours[0].hex()}); it was produced for another attestation document")
    elif certificate is not None and info.issuer_and_serial is not None:
        issuer, serial = info.issuer_and_serial
        if (issuer != certificate.issuer.public_bytes() or serial != certificate.serial_number
                or certificate.public_key() != public_key):
            raise CmsError("the CMS message is addressed to another certificate (issuer/serial)")

    try:
        content_key = private_key.decrypt(
            info.encrypted_key,
            OAEP(mgf=MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None))
    except ValueError:
        raise CmsError("the content key does not decrypt with our private key (RSAES-OAEP "
                       "check failed): the message is for another key or was altered") from None
    if len(content_key) != AES_256_KEY_BYTES:
        raise CmsError(f"the content key is {len(content_key)} bytes, AES-256 needs 32")
    if not info.encrypted_content or len(info.encrypted_content) % AES_BLOCK_BYTES:
        raise CmsError("the encrypted content is not a whole number of AES blocks")
    decryptor = Cipher(algorithms.AES(content_key), modes.CBC(info.iv)).decryptor()
    padded = decryptor.update(info.encrypted_content) + decryptor.finalize()
    unpadder = padding.PKCS7(AES_BLOCK_BYTES * 8).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise CmsError("the decrypted content has invalid PKCS#7 padding: the message was "
                       "altered") from None


__all__ = ["CmsError", "EnvelopeInfo", "decrypt_enveloped_data", "parse_enveloped_data",
           "spki_sha256"]
