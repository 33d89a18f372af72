"""verify_attestation against the three real Nitro documents and tampered copies built here."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from client.attestation import AWS_NITRO_ROOT_G1_SHA256, load_pinned_root, verify_attestation
from client.errors import VerificationError

ATT3_PCRS = {
    0: "d265a83faa7b4fa0d73b82b6d06253e894445922937d0ee5"
       "a74fe4891da9817611a71e71b98e5329232902de3cf419af",
    1: "bcdf05fefccaa8e55bf2c8d6dee9e79bbff31e34bf28a99a"
       "a19e6b29c37ee80b214a414b7607236edf26fcb78654e63f",
    2: "e4f634d24ad83b7f6e49fe283bafdb220f6252fb4a278a85"
       "8e19d15b7cd0f263b9168ed0bacefb4444266df9f9a77f24",
    8: "97c5395a83c0d6a04d53ff962663c714c178c24500bf97f7"
       "8456ed3721d922cf3f940614da4bb90107c439bc4a1443ca",
}


def load(fixtures_dir: Path, name: str) -> bytes:
    return (fixtures_dir / "nitro" / f"{name}.cbor").read_bytes()


def own_time(document: bytes) -> dt.datetime:
    payload = cbor2.loads(cbor2.loads(document)[2])
    return dt.datetime.fromtimestamp(payload["timestamp"] / 1000, dt.UTC)


def parts(document: bytes) -> list:
    return cbor2.loads(document)


def rebuild(protected: bytes, payload: bytes, signature: bytes) -> bytes:
    return cbor2.dumps([protected, {}, payload, signature])


def flip_bit(data: bytes, offset: int) -> bytes:
    changed = bytearray(data)
    changed[offset] ^= 0x01
    return bytes(changed)


@pytest.fixture
def att3(fixtures_dir: Path) -> bytes:
    return load(fixtures_dir, "att_3")


def verify3(document: bytes, **kwargs):
    kwargs.setdefault("at", own_time(document))
    return verify_attestation(document, **kwargs)


def test_rebuild_of_unchanged_parts_is_byte_identical(att3: bytes) -> None:
    # guards the tampering helpers below: a change they make is the only change
    protected, _, payload, signature = parts(att3)
    assert rebuild(protected, payload, signature) == att3


@pytest.mark.parametrize("name", ["att_3", "att_4"])
def test_real_document_verifies_at_its_own_timestamp(fixtures_dir: Path, name: str) -> None:
    document = load(fixtures_dir, name)
    result = verify_attestation(document, at=own_time(document))
    assert result.module_id.startswith("i-")
    assert result.debug_mode is False
    assert result.root_sha256 == AWS_NITRO_ROOT_G1_SHA256
    assert result.timestamp == own_time(document)


def test_debug_document_verifies_only_with_allow_debug(fixtures_dir: Path) -> None:
    document = load(fixtures_dir, "att_1")
    result = verify_attestation(document, at=own_time(document), allow_debug=True)
    assert result.debug_mode is True


def test_debug_document_is_rejected_by_default(fixtures_dir: Path) -> None:
    document = load(fixtures_dir, "att_1")
    with pytest.raises(VerificationError, match="debug mode"):
        verify_attestation(document, at=own_time(document))


@pytest.mark.parametrize("name", ["att_1", "att_3", "att_4"])
def test_real_document_fails_today_because_its_chain_expired(fixtures_dir: Path,
                                                             name: str) -> None:
    with pytest.raises(VerificationError, match="not at"):
        verify_attestation(load(fixtures_dir, name), allow_debug=True)


def test_expired_time_after_the_leaf_is_rejected(att3: bytes) -> None:
    with pytest.raises(VerificationError, match="leaf certificate"):
        verify3(att3, at=own_time(att3) + dt.timedelta(hours=4))


def test_time_before_the_leaf_is_rejected(att3: bytes) -> None:
    with pytest.raises(VerificationError, match="leaf certificate"):
        verify3(att3, at=own_time(att3) - dt.timedelta(seconds=10))


def test_naive_time_is_refused(att3: bytes) -> None:
    with pytest.raises(VerificationError, match="time zone"):
        verify3(att3, at=own_time(att3).replace(tzinfo=None))


def test_expected_pcrs_that_match_pass(att3: bytes) -> None:
    expected = {i: bytes.fromhex(v) for i, v in ATT3_PCRS.items()}
    result = verify3(att3, expected_pcrs=expected)
    assert result.pcrs_checked == [0, 1, 2, 8]
    assert result.pcrs[8] == expected[8]


def test_wrong_pcr0_is_rejected(att3: bytes) -> None:
    wrong = flip_bit(bytes.fromhex(ATT3_PCRS[0]), 47)
    with pytest.raises(VerificationError, match="PCR0 is .*expected"):
        verify3(att3, expected_pcrs={0: wrong})


def test_expected_pcr_absent_from_the_document_is_rejected(att3: bytes) -> None:
    with pytest.raises(VerificationError, match="PCR20 is expected but absent"):
        verify3(att3, expected_pcrs={20: bytes(48)})


def test_matching_nonce_passes(att3: bytes) -> None:
    nonce = cbor2.loads(parts(att3)[2])["nonce"]
    assert verify3(att3, nonce=nonce).nonce == nonce


def test_wrong_nonce_is_rejected(att3: bytes) -> None:
    nonce = cbor2.loads(parts(att3)[2])["nonce"]
    with pytest.raises(VerificationError, match="nonce mismatch"):
        verify3(att3, nonce=flip_bit(nonce, 0))


def test_nonce_expected_but_document_has_none_is_rejected(fixtures_dir: Path) -> None:
    document = load(fixtures_dir, "att_4")
    payload = cbor2.loads(parts(document)[2])
    assert payload["user_data"] is None  # the null optional field is tolerated...
    with pytest.raises(VerificationError, match="nonce mismatch"):
        verify_attestation(document, at=own_time(document), nonce=b"\x01" * 16)


def test_empty_optional_fields_are_reported_as_absent(fixtures_dir: Path) -> None:
    document = load(fixtures_dir, "att_1")
    assert cbor2.loads(parts(document)[2])["public_key"] == b""
    result = verify_attestation(document, at=own_time(document), allow_debug=True)
    assert result.public_key is None


def test_cose_tag_18_is_accepted(att3: bytes) -> None:
    tagged = cbor2.dumps(cbor2.CBORTag(18, parts(att3)))
    assert verify_attestation(tagged, at=own_time(att3)).module_id


def test_flipped_bit_in_payload_breaks_the_signature(att3: bytes) -> None:
    protected, _, payload, signature = parts(att3)
    # the last byte is inside the nonce, so the payload still parses and only the signature fails
    with pytest.raises(VerificationError, match="COSE signature does not verify"):
        verify3(rebuild(protected, flip_bit(payload, len(payload) - 1), signature),
                at=own_time(att3))


@pytest.mark.parametrize("offset", [0, 47, 95])
def test_flipped_bit_in_signature_is_rejected(att3: bytes, offset: int) -> None:
    protected, _, payload, signature = parts(att3)
    with pytest.raises(VerificationError, match="COSE signature"):
        verify3(rebuild(protected, payload, flip_bit(signature, offset)), at=own_time(att3))


@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_flipped_bit_in_protected_header_is_rejected(att3: bytes, offset: int) -> None:
    protected, _, payload, signature = parts(att3)
    with pytest.raises(VerificationError):
        verify3(rebuild(flip_bit(protected, offset), payload, signature), at=own_time(att3))


def test_protected_header_reencoded_with_same_meaning_breaks_the_signature(att3: bytes) -> None:
    # {1: -35} as a 2-byte-length integer: same map, different bytes, so not what was signed
    protected, _, payload, signature = parts(att3)
    assert protected == bytes.fromhex("a1013822")
    with pytest.raises(VerificationError, match="COSE signature"):
        verify3(rebuild(bytes.fromhex("a101390022"), payload, signature), at=own_time(att3))


def certificate_names(document: bytes) -> list[str]:
    payload = cbor2.loads(parts(document)[2])
    return [f"cabundle[{i}]" for i in range(len(payload["cabundle"]))] + ["leaf"]


@pytest.mark.parametrize("index", range(5))
@pytest.mark.parametrize("where", ["tbs", "signature"])
def test_flipped_bit_in_each_certificate_is_rejected(att3: bytes, index: int, where: str) -> None:
    protected, _, payload, signature = parts(att3)
    fields = cbor2.loads(payload)
    certs = [*fields["cabundle"], fields["certificate"]]
    assert len(certs) == 5
    der = certs[index]
    offset = 40 if where == "tbs" else len(der) - 5
    start = payload.index(der)
    tampered = payload[:start] + flip_bit(der, offset) + payload[start + len(der):]
    pattern = r"trusted root|cabundle\[0\]" if index == 0 else (
        r"leaf certificate" if index == 4 else rf"cabundle\[{index}\]")
    with pytest.raises(VerificationError, match=pattern):
        verify3(rebuild(protected, tampered, signature), at=own_time(att3))


def test_reordered_cabundle_is_rejected(att3: bytes) -> None:
    protected, _, payload, signature = parts(att3)
    fields = cbor2.loads(payload)
    bundle = fields["cabundle"]
    fields["cabundle"] = [bundle[0], bundle[2], bundle[1], *bundle[3:]]
    with pytest.raises(VerificationError, match=r"cabundle\[1\]"):
        verify3(rebuild(protected, cbor2.dumps(fields), signature), at=own_time(att3))


def test_cabundle_without_the_root_is_rejected(att3: bytes) -> None:
    protected, _, payload, signature = parts(att3)
    fields = cbor2.loads(payload)
    fields["cabundle"] = fields["cabundle"][1:]
    with pytest.raises(VerificationError, match="not the trusted root"):
        verify3(rebuild(protected, cbor2.dumps(fields), signature), at=own_time(att3))


def self_signed_root_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not-aws")])
    now = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=9000))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA384()))
    return cert.public_bytes(serialization.Encoding.PEM)


def test_a_different_root_is_rejected(att3: bytes) -> None:
    with pytest.raises(VerificationError, match="not the trusted root"):
        verify3(att3, root_pem=self_signed_root_pem())


def test_pinned_root_matches_its_fingerprint() -> None:
    cert = load_pinned_root()
    assert cert.fingerprint(hashes.SHA256()).hex() == AWS_NITRO_ROOT_G1_SHA256


def test_garbage_is_a_verification_error_not_a_crash() -> None:
    for junk in (b"", b"\x84", b"\xa0", cbor2.dumps([1, 2, 3, 4])):
        with pytest.raises(VerificationError):
            verify_attestation(junk)


def test_certificate_names_cover_every_certificate(att3: bytes) -> None:
    assert certificate_names(att3) == ["cabundle[0]", "cabundle[1]", "cabundle[2]",
                                       "cabundle[3]", "leaf"]


# ---- chain rules, with development chains built here ---------------------------------------


def development_document(tmp_path: Path, *, leaf_usage_signs: bool = True,
                         intermediate_is_ca: bool = True) -> tuple[bytes, bytes]:
    """A document signed through a development chain, with one rule optionally broken."""
    import dataclasses

    from client.sim import pki as sim_pki
    from client.sim.nsm import build_attestation_document

    pki = sim_pki.load_or_create(tmp_path)
    root_key = serialization.load_pem_private_key((pki.directory / "root.key").read_bytes(), None)
    now = dt.datetime.now(dt.UTC)

    def issue(subject: str, key, issuer, issuer_key, *, ca: bool, signs: bool = True):
        usage = x509.KeyUsage(digital_signature=signs, content_commitment=False,
                              key_encipherment=False, data_encipherment=False,
                              key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                              encipher_only=False, decipher_only=False)
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                .issuer_name(issuer.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1))
                .not_valid_after(now + dt.timedelta(hours=1))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                .add_extension(usage, critical=True)
                .sign(issuer_key, hashes.SHA384()))

    inter_key = ec.generate_private_key(ec.SECP384R1())
    intermediate = issue("test intermediate", inter_key, pki.root, root_key,
                         ca=intermediate_is_ca)
    leaf_key = ec.generate_private_key(ec.SECP384R1())
    leaf = issue("test leaf", leaf_key, intermediate, inter_key, ca=False,
                 signs=leaf_usage_signs)
    custom = dataclasses.replace(pki, intermediate=intermediate, leaf=leaf, leaf_key=leaf_key)
    pcrs = {i: bytes([i + 1]) * 48 for i in range(16)}
    return build_attestation_document(custom, pcrs=pcrs, module_id="i-t-enc1"), pki.root_pem


def test_development_chain_built_here_verifies(tmp_path: Path) -> None:
    document, root = development_document(tmp_path)
    assert verify_attestation(document, root_pem=root).module_id == "i-t-enc1"


def test_leaf_whose_key_usage_forbids_signing_is_rejected(tmp_path: Path) -> None:
    document, root = development_document(tmp_path, leaf_usage_signs=False)
    with pytest.raises(VerificationError, match="key usage"):
        verify_attestation(document, root_pem=root)


def test_intermediate_that_is_not_a_ca_is_rejected(tmp_path: Path) -> None:
    document, root = development_document(tmp_path, intermediate_is_ca=False)
    with pytest.raises(VerificationError, match="not a CA"):
        verify_attestation(document, root_pem=root)


def test_document_without_pcr0_is_rejected(tmp_path: Path) -> None:
    from client.sim import pki as sim_pki
    from client.sim.nsm import build_attestation_document

    pki = sim_pki.load_or_create(tmp_path)
    pcrs = {i: bytes([i + 1]) * 48 for i in range(1, 16)}
    document = build_attestation_document(pki, pcrs=pcrs, module_id="i-t-enc1")
    with pytest.raises(VerificationError, match="no PCR0"):
        verify_attestation(document, root_pem=pki.root_pem)
