"""A malformed attestation document is refused before any certificate or signature is trusted:
client/attestation.py `verify_attestation`, each structural check with the message it gives."""

from __future__ import annotations

import datetime as dt
from typing import Any

import cbor2
import pytest

from client.attestation import VerificationError, verify_attestation

ES384_HEADER = cbor2.dumps({1: -35})
SIGNATURE = bytes(96)
PCR = bytes(48)
VALID_PAYLOAD: dict[str, Any] = {
    "module_id": "i-0123-enc0", "digest": "SHA384", "timestamp": 1_700_000_000_000,
    "pcrs": {0: PCR, 1: PCR, 2: PCR}, "certificate": b"leaf", "cabundle": [b"root"],
    "public_key": None, "user_data": None, "nonce": None,
}


def document(payload: Any = None, *, header: bytes = ES384_HEADER, unprotected: Any = None,
             signature: Any = SIGNATURE, tag: int | None = 18) -> bytes:
    body = cbor2.dumps(VALID_PAYLOAD if payload is None else payload)
    message = [header, {} if unprotected is None else unprotected, body, signature]
    return cbor2.dumps(cbor2.CBORTag(tag, message) if tag is not None else message)


def payload_with(**changes: Any) -> dict[str, Any]:
    return {**VALID_PAYLOAD, **changes}


@pytest.mark.parametrize(("given", "message"), [
    (b"\xff\x00", "the document is not CBOR"),
    (document(tag=99), "has CBOR tag 99, expected COSE_Sign1"),
    (cbor2.dumps([1, 2, 3]), "not a COSE_Sign1 array of 4 elements"),
    (cbor2.dumps(["h", {}, b"p", SIGNATURE]), "protected header and payload must be byte strings"),
    (document(unprotected=[1]), "unprotected header must be a map"),
    (document(signature=bytes(64)), "signature must be 96 bytes"),
    (document(header=b"\xff"), "protected header is not CBOR"),
    (document(header=cbor2.dumps({1: -7})), "does not declare ES384"),
    (cbor2.dumps([ES384_HEADER, {}, b"\xff", SIGNATURE]), "payload is not CBOR"),
    (document([1, 2]), "payload is not a map"),
    (document(payload_with(module_id="")), "has no module_id"),
    (document(payload_with(digest="SHA256")), "digest is 'SHA256', expected SHA384"),
    (document(payload_with(timestamp=True)), "no valid timestamp"),
    (document(payload_with(timestamp=0)), "no valid timestamp"),
    (document(payload_with(pcrs={})), "no pcrs map"),
    (document(payload_with(pcrs={32: PCR})), "PCR index 32 is out of range 0..31"),
    (document(payload_with(pcrs={0: bytes(32)})), "PCR0 is not a 48-byte SHA-384 value"),
    (document(payload_with(certificate=b"")), "no signing certificate"),
    (document(payload_with(cabundle=[])), "no cabundle of DER certificates"),
    (document(payload_with(cabundle=[b"root", b""])), "no cabundle of DER certificates"),
    (document(payload_with(nonce="text")), "field nonce must be bytes or null"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_a_malformed_document_is_refused_with_what_is_wrong(given, message):
    with pytest.raises(VerificationError, match=message.replace("(", r"\(")):
        verify_attestation(given, root_pem=None)


def test_an_untagged_document_gets_past_the_structure_checks():
    # no tag is allowed (as the NSM sends it); it then fails on its made-up certificates
    with pytest.raises(VerificationError) as caught:
        verify_attestation(document(tag=None))
    assert "CBOR tag" not in str(caught.value) and "COSE_Sign1" not in str(caught.value)


def test_the_root_must_be_a_pem_certificate():
    with pytest.raises(VerificationError, match="the given root is not a PEM certificate"):
        verify_attestation(document(), root_pem="not a certificate")


def test_a_verification_time_needs_a_time_zone():
    with pytest.raises(VerificationError, match="has no time zone; give UTC"):
        verify_attestation(document(), at=dt.datetime(2030, 1, 1))
