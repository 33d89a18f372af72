"""The attestation verifier's refusals, each for the reason the user is told.

Written against the mutants `make mutate` found alive (docs/testing.md). Documents are either
the real Nitro document att_3 (`../shared/fixtures/`) with one part replaced, or documents signed
here through a chain built here, with one rule of the chain broken.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from client import attestation
from client.attestation import load_pinned_root, verify_attestation
from client.errors import VerificationError
from client.sim.nsm import build_attestation_document
from client.sim.pki import DevelopmentPki

NOW = dt.datetime.now(dt.UTC)
PCRS = {i: bytes([i + 1]) * 48 for i in range(16)}


@pytest.fixture
def att3(fixtures_dir: Path) -> bytes:
    return (fixtures_dir / "nitro" / "att_3.cbor").read_bytes()


def own_time(document: bytes) -> dt.datetime:
    payload = cbor2.loads(cbor2.loads(document)[2])
    return dt.datetime.fromtimestamp(payload["timestamp"] / 1000, dt.UTC)


def refusal(document: bytes, **kwargs) -> str:
    with pytest.raises(VerificationError) as caught:
        verify_attestation(document, **kwargs)
    return str(caught.value)


def with_payload(document: bytes, payload: object) -> bytes:
    protected, unprotected, _payload, signature = cbor2.loads(document)
    return cbor2.dumps([protected, unprotected, cbor2.dumps(payload), signature])


def certificate(subject: str, key, issuer_name: x509.Name, issuer_key, *, ca: bool,
                path_length: int | None = None, constraints: bool = True,
                cert_sign: bool | None = None) -> x509.Certificate:
    cert_sign = ca if cert_sign is None else cert_sign
    usage = x509.KeyUsage(digital_signature=not ca, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False,
                          decipher_only=False)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(NOW - dt.timedelta(hours=1))
               .not_valid_after(NOW + dt.timedelta(hours=1))
               .add_extension(usage, critical=True))
    if constraints:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    return builder.sign(issuer_key, hashes.SHA384())


def signed_document(tmp_path: Path, *, root_path_length: int | None = None,
                    intermediate_constraints: bool = True, intermediate_cert_sign: bool = True,
                    leaf_curve: ec.EllipticCurve | None = None, root_signed_by_other: bool = False,
                    module_id: str = "i-t-enc1") -> tuple[bytes, bytes]:
    """A document and its root PEM, through root -> intermediate -> leaf built here."""
    root_key = ec.generate_private_key(ec.SECP384R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test root")])
    signer = ec.generate_private_key(ec.SECP384R1()) if root_signed_by_other else root_key
    root = certificate("test root", root_key, root_name, signer, ca=True,
                       path_length=root_path_length)
    inter_key = ec.generate_private_key(ec.SECP384R1())
    intermediate = certificate("test intermediate", inter_key, root.subject, root_key, ca=True,
                               constraints=intermediate_constraints,
                               cert_sign=intermediate_cert_sign)
    leaf_key = ec.generate_private_key(leaf_curve or ec.SECP384R1())
    leaf = certificate("test leaf", leaf_key, intermediate.subject, inter_key, ca=False)
    pki = DevelopmentPki(root=root, intermediate=intermediate, leaf=leaf, leaf_key=leaf_key,
                         directory=tmp_path)
    document = build_attestation_document(pki, pcrs=PCRS, module_id=module_id,
                                          public_key=b"enclave public key", user_data=b"user")
    return document, pki.root_pem


# ---- the payload ------------------------------------------------------------------------------


def test_a_payload_that_is_not_cbor_is_refused_as_such(att3: bytes) -> None:
    protected, unprotected, _payload, signature = cbor2.loads(att3)
    document = cbor2.dumps([protected, unprotected, b"\xff", signature])
    assert refusal(document).startswith("the attestation payload is not CBOR: ")


def test_a_payload_that_is_not_a_map_is_refused_as_such(att3: bytes) -> None:
    assert refusal(with_payload(att3, [1, 2])) == "the attestation payload is not a map"


@pytest.mark.parametrize("module_id", [None, "", 7])
def test_a_payload_without_a_module_id_is_refused(att3: bytes, module_id: object) -> None:
    payload = {**cbor2.loads(cbor2.loads(att3)[2]), "module_id": module_id}
    assert refusal(with_payload(att3, payload)) == "the attestation payload has no module_id"


def test_an_empty_module_id_is_refused_even_when_signed(tmp_path: Path) -> None:
    document, root = signed_document(tmp_path, module_id="")
    assert refusal(document, root_pem=root) == "the attestation payload has no module_id"


def test_a_digest_other_than_sha384_is_refused_naming_it(att3: bytes) -> None:
    payload = {**cbor2.loads(cbor2.loads(att3)[2]), "digest": "SHA256"}
    assert refusal(with_payload(att3, payload)) == (
        "the attestation digest is 'SHA256', expected SHA384")


def test_the_result_reports_the_sha384_digest(att3: bytes) -> None:
    assert verify_attestation(att3, at=own_time(att3)).digest == "SHA384"


# ---- the chain --------------------------------------------------------------------------------


def leaf_of(document: bytes) -> x509.Certificate:
    return x509.load_der_x509_certificate(cbor2.loads(cbor2.loads(document)[2])["certificate"])


def test_the_leaf_validity_bounds_are_inclusive(att3: bytes) -> None:
    leaf = leaf_of(att3)
    verify_attestation(att3, at=leaf.not_valid_before_utc)
    verify_attestation(att3, at=leaf.not_valid_after_utc)


def test_a_time_outside_the_leaf_says_how_to_verify_as_of_then(att3: bytes) -> None:
    leaf = leaf_of(att3)
    message = refusal(att3, at=leaf.not_valid_after_utc + dt.timedelta(seconds=1))
    assert message.startswith("the leaf certificate (")
    assert "an old document verifies only as of its own time (--at); the document was made" in (
        message)


def test_the_chain_built_here_verifies(tmp_path: Path) -> None:
    document, root = signed_document(tmp_path)
    assert verify_attestation(document, root_pem=root).module_id == "i-t-enc1"


def test_a_root_path_length_of_zero_refuses_an_intermediate(tmp_path: Path) -> None:
    document, root = signed_document(tmp_path, root_path_length=0)
    assert refusal(document, root_pem=root) == (
        "cabundle[0] has 1 CAs below it, more than its path length 0")
    document, root = signed_document(tmp_path, root_path_length=1)
    verify_attestation(document, root_pem=root)


def test_an_intermediate_without_basic_constraints_is_not_a_ca(tmp_path: Path) -> None:
    document, root = signed_document(tmp_path, intermediate_constraints=False)
    assert refusal(document, root_pem=root) == (
        "cabundle[1] issues a certificate but is not a CA")


def test_an_intermediate_whose_key_usage_forbids_signing_certificates_is_refused(
        tmp_path: Path) -> None:
    document, root = signed_document(tmp_path, intermediate_cert_sign=False)
    assert refusal(document, root_pem=root) == (
        "cabundle[1] issues a certificate but its key usage forbids it")


def test_a_root_that_does_not_sign_itself_is_refused(tmp_path: Path) -> None:
    document, root = signed_document(tmp_path, root_signed_by_other=True)
    assert refusal(document, root_pem=root) == (
        "cabundle[0] is not validly signed by itself (bad signature); the chain was altered or "
        "reordered")


def test_a_certificate_not_signed_by_the_one_before_names_both(tmp_path: Path) -> None:
    document, root = signed_document(tmp_path)
    other, _ = signed_document(tmp_path)
    payload = cbor2.loads(cbor2.loads(document)[2])
    payload["cabundle"][1] = cbor2.loads(cbor2.loads(other)[2])["cabundle"][1]
    assert refusal(with_payload(document, payload), root_pem=root) == (
        "cabundle[1] is not validly signed by cabundle[0] (bad signature); the chain was "
        "altered or reordered")
    payload = cbor2.loads(cbor2.loads(document)[2])
    payload["certificate"] = cbor2.loads(cbor2.loads(other)[2])["certificate"]
    assert refusal(with_payload(document, payload), root_pem=root) == (
        "the leaf certificate is not validly signed by cabundle[1] (bad signature); the chain "
        "was altered or reordered")


def test_a_leaf_key_that_is_not_p384_is_refused(tmp_path: Path) -> None:
    document, root = signed_document(tmp_path, leaf_curve=ec.SECP256R1())
    assert refusal(document, root_pem=root) == (
        "the signing certificate's key is not ECDSA P-384")


# ---- the signature, the PCRs, the pinned root -------------------------------------------------


def test_a_signature_that_does_not_verify_says_the_document_was_altered(att3: bytes) -> None:
    protected, unprotected, payload, signature = cbor2.loads(att3)
    changed = bytes([signature[0] ^ 1]) + signature[1:]
    document = cbor2.dumps([protected, unprotected, payload, changed])
    assert refusal(document, at=own_time(att3)) == (
        "the COSE signature does not verify with the leaf certificate's key: the document was "
        "altered after signing")


def test_a_pcr_that_differs_names_both_values(att3: bytes) -> None:
    want = bytes(48)
    message = refusal(att3, at=own_time(att3), expected_pcrs={0: want})
    assert message.startswith("PCR0 is ")
    assert message.endswith(f", expected {want.hex()}: the enclave runs a different image (or "
                            "signer) than the one you trust")


def test_a_bundled_root_with_another_fingerprint_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(attestation, "AWS_NITRO_ROOT_G1_SHA256", "00" * 32)
    with pytest.raises(VerificationError) as caught:
        load_pinned_root()
    assert str(caught.value).endswith(f"expected {'00' * 32}; reinstall the client")


def test_the_root_pem_given_is_used_in_place_of_the_pinned_one(tmp_path: Path) -> None:
    document, root = signed_document(tmp_path)
    assert verify_attestation(document, root_pem=root.decode()).root_sha256 == (
        __import__("hashlib").sha256(x509.load_pem_x509_certificate(root).public_bytes(
            serialization.Encoding.DER)).hexdigest())


# ---- the COSE_Sign1 envelope and the payload's form (decided before any signature) -------------


def att3_parts(att3: bytes) -> list:
    return cbor2.loads(att3)


SIGNATURE = bytes(96)


@pytest.mark.parametrize(("message", "reason"), [
    ([1, 2, 3], "the document is not a COSE_Sign1 array of 4 elements"),
    ({1: 1, 2: 2, 3: 3, 4: 4}, "the document is not a COSE_Sign1 array of 4 elements"),
    (["x", {}, b"p", SIGNATURE], "COSE_Sign1 protected header and payload must be byte strings"),
    ([b"", {}, "p", SIGNATURE], "COSE_Sign1 protected header and payload must be byte strings"),
    ([b"", [], b"p", SIGNATURE], "COSE_Sign1 unprotected header must be a map"),
    ([b"", {}, b"p", SIGNATURE[:95]], "COSE_Sign1 signature must be 96 bytes (ES384 r||s)"),
    ([b"", {}, b"p", "s" * 96], "COSE_Sign1 signature must be 96 bytes (ES384 r||s)"),
    ([cbor2.dumps({1: -7}), {}, b"p", SIGNATURE],
     "COSE protected header {1: -7} does not declare ES384 (alg -35); only ES384 is accepted"),
])
def test_a_malformed_envelope_is_refused_as_such(message: object, reason: str) -> None:
    assert refusal(cbor2.dumps(message)) == reason


def test_a_document_or_protected_header_that_is_not_cbor_is_refused_as_such() -> None:
    assert refusal(b"\xff").startswith("the document is not CBOR: ")
    assert refusal(cbor2.dumps([b"\xff", {}, b"p", SIGNATURE])).startswith(
        "COSE protected header is not CBOR: ")
    assert refusal(cbor2.dumps(cbor2.CBORTag(99, []))) == (
        "the document has CBOR tag 99, expected COSE_Sign1 (18) or none")


def payload_refusal(att3: bytes, **changes: object) -> str:
    payload = {**cbor2.loads(cbor2.loads(att3)[2]), **changes}
    return refusal(with_payload(att3, payload), at=own_time(att3))


ALTERED = ("the COSE signature does not verify with the leaf certificate's key: the document was "
           "altered after signing")


@pytest.mark.parametrize(("changes", "reason"), [
    ({"timestamp": 0}, "the attestation payload has no valid timestamp"),
    ({"timestamp": True}, "the attestation payload has no valid timestamp"),
    ({"timestamp": "x"}, "the attestation payload has no valid timestamp"),
    ({"pcrs": {}}, "the attestation payload has no pcrs map"),
    ({"pcrs": [1]}, "the attestation payload has no pcrs map"),
    ({"pcrs": {"0": bytes(48)}}, "PCR index '0' is out of range 0..31"),
    ({"pcrs": {32: bytes(48)}}, "PCR index 32 is out of range 0..31"),
    ({"pcrs": {0: bytes(47)}}, "PCR0 is not a 48-byte SHA-384 value"),
    ({"certificate": b""}, "the attestation payload has no signing certificate"),
    ({"cabundle": "x"}, "the attestation payload has no cabundle of DER certificates"),
    ({"cabundle": []}, "the attestation payload has no cabundle of DER certificates"),
    ({"cabundle": [b""]}, "the attestation payload has no cabundle of DER certificates"),
    ({"nonce": "x"}, "attestation field nonce must be bytes or null"),
])
def test_a_malformed_payload_is_refused_as_such(att3: bytes, changes: dict, reason: str) -> None:
    assert payload_refusal(att3, **changes) == reason


def test_the_smallest_timestamp_and_the_highest_pcr_index_are_well_formed(att3: bytes) -> None:
    # Well formed, so the refusal is the signature's: the payload was changed after signing.
    assert payload_refusal(att3, timestamp=1) == ALTERED
    pcrs = {**cbor2.loads(cbor2.loads(att3)[2])["pcrs"], 31: bytes(48)}
    assert payload_refusal(att3, pcrs=pcrs) == ALTERED


def test_a_certificate_that_is_not_der_is_named(att3: bytes) -> None:
    assert payload_refusal(att3, cabundle=[b"not der"]).startswith(
        "cabundle[0] is not a DER certificate: ")
    assert payload_refusal(att3, certificate=b"not der").startswith(
        "the leaf certificate is not a DER certificate: ")


# ---- the messages of verify_attestation's own decisions -----------------------------------------


def test_another_root_is_refused_naming_both_fingerprints(att3: bytes, tmp_path: Path) -> None:
    import hashlib

    _document, root_pem = signed_document(tmp_path)
    got = hashlib.sha256(cbor2.loads(cbor2.loads(att3)[2])["cabundle"][0]).hexdigest()
    want = hashlib.sha256(x509.load_pem_x509_certificate(root_pem).public_bytes(
        serialization.Encoding.DER)).hexdigest()
    assert refusal(att3, at=own_time(att3), root_pem=root_pem) == (
        f"the document's root certificate (SHA-256 {got}) is not the trusted root ({want}); "
        "a document from the local simulation needs --root with the development root")


def test_a_given_root_that_is_not_pem_is_refused(att3: bytes) -> None:
    assert refusal(att3, root_pem=b"not pem").startswith(
        "the given root is not a PEM certificate: ")


def test_an_expired_document_says_the_whole_second_to_verify_it_at(att3: bytes) -> None:
    timestamp = cbor2.loads(cbor2.loads(att3)[2])["timestamp"]
    made = dt.datetime.fromtimestamp(-(-timestamp // 1000), dt.UTC)
    assert timestamp % 1000  # the document's own time is not a whole second: it rounds up
    stamp = made.strftime("%Y-%m-%dT%H:%M:%SZ")
    message = refusal(att3, at=own_time(att3) + dt.timedelta(days=3650))
    assert message.endswith(f"; the document was made at {stamp}: --at {stamp} verifies it as "
                            "of then")


def test_a_debug_document_is_refused_saying_why(fixtures_dir: Path) -> None:
    document = (fixtures_dir / "nitro" / "att_1.cbor").read_bytes()
    assert refusal(document, at=own_time(document)) == (
        "the document comes from an enclave in debug mode (PCR0, PCR1 and PCR2 are all zero): "
        "its memory is visible to the host, so it proves nothing; pass --allow-debug only for "
        "development")


def test_a_wrong_nonce_names_both(att3: bytes) -> None:
    carried = cbor2.loads(cbor2.loads(att3)[2])["nonce"]
    assert refusal(att3, at=own_time(att3), nonce=b"\x01" * 4) == (
        f"nonce mismatch: expected 01010101, the document carries {carried.hex()}; the document "
        "is a replay or answers another request")


def test_a_missing_nonce_is_named_as_none(tmp_path: Path) -> None:
    document, root = signed_document(tmp_path)
    assert refusal(document, root_pem=root, nonce=b"\x01") == (
        "nonce mismatch: expected 01, the document carries none; the document is a replay or "
        "answers another request")


def test_the_result_carries_the_signed_fields(tmp_path: Path) -> None:
    document, root = signed_document(tmp_path)
    payload = cbor2.loads(cbor2.loads(document)[2])
    result = verify_attestation(document, root_pem=root)
    assert result.certificate == payload["certificate"]
    assert result.cabundle == payload["cabundle"]
    assert result.public_key == b"enclave public key"
    assert result.user_data == b"user"
