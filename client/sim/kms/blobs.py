"""Ciphertext blobs: b"SIMKMS1" || len(key id) (1 byte) || key id || 12-byte nonce ||
AES-256-GCM ciphertext+tag, with AAD = key id || canonical JSON of the encryption context."""

from __future__ import annotations

import json
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from client.sim.kms.fault import KmsFault

BLOB_MAGIC = b"SIMKMS1"


def _context_aad(key_id: str, context: dict[str, str]) -> bytes:
    return key_id.encode() + b"\x00" + json.dumps(context, sort_keys=True,
                                                  separators=(",", ":")).encode()


def seal_blob(key_id: str, material: bytes, plaintext: bytes, context: dict[str, str]) -> bytes:
    nonce = os.urandom(12)
    sealed = AESGCM(material).encrypt(nonce, plaintext, _context_aad(key_id, context))
    return BLOB_MAGIC + bytes([len(key_id)]) + key_id.encode() + nonce + sealed


def blob_key_id(blob: bytes) -> str:
    if not blob.startswith(BLOB_MAGIC) or len(blob) < len(BLOB_MAGIC) + 1:
        raise KmsFault("InvalidCiphertextException", "the ciphertext was not produced by this "
                                                     "local KMS")
    length = blob[len(BLOB_MAGIC)]
    start = len(BLOB_MAGIC) + 1
    return blob[start:start + length].decode(errors="replace")


def open_blob(key_id: str, material: bytes, blob: bytes, context: dict[str, str]) -> bytes:
    start = len(BLOB_MAGIC) + 1 + len(key_id.encode())
    nonce, sealed = blob[start:start + 12], blob[start + 12:]
    try:
        return AESGCM(material).decrypt(nonce, sealed, _context_aad(key_id, context))
    except Exception:  # InvalidTag, or a truncated blob
        raise KmsFault("InvalidCiphertextException",
                       "the ciphertext does not decrypt under this key with this encryption "
                       "context") from None
