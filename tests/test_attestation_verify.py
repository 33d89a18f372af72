"""verify_attestation against the three real Nitro documents and tampered copies built here.

What the real documents carry (module id, timestamp, PCRs, nonce) was read once from the fixture
files with cbor2 alone, outside the verifier, and is written here as literals; the README of
`../shared/fixtures/` lists the same timestamps and PCR0s.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from client.attestation import load_pinned_root, verify_attestation
from client.errors import VerificationError

# AWS Nitro Enclaves Root-G1, SHA-256 over the DER, as AWS publishes it.
NITRO_ROOT_G1_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"

# att_1: a debug-mode enclave (PCR0-2 and 8 all zero), public_key sent as b"".
ATT1_MODULE_ID = "i-0809849710bf1b61b-enc017cc45400406a27"
ATT1_TIME = dt.datetime(2021, 10, 28, 17, 2, 2, 77000, tzinfo=dt.UTC)  # 1635440522077 ms
ATT1_NONCE = bytes.fromhex("54caa7fdd9c1de6f1206e4900d57b61eb759d628")

ATT3_MODULE_ID = "i-0ec0e572c8263d8ff-enc0185c4fd382eeb25"
ATT3_TIME = dt.datetime(2023, 1, 18, 13, 7, 19, 280000, tzinfo=dt.UTC)  # 1674047239280 ms
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
ATT3_NONCE = bytes.fromhex(
    "20c7790006cf23c55e652556b7771140b95b5f59a64122af7e44c4ca9a5b89a62d9feb32c89596fb196a44fe"
    "33c417e5bd2a80fb6b21345d402eddc038ea6d16f395b3ac926cdc6894252b4e364053a70d8e084f1bebe60a"
    "dec7456b20609448c7b35b045e637fe02159ae13fe9341cabb950deb9e0c984b3bdfdbe07610d33a6372918a"
    "24386df5da66fc7c76a020ce3b2106ab69b985fff395eeb8c9d470e67c6ad8bb5997a27efd820bb161985993"
    "b96f2f9bdea36258ab4deaf0af3c8c146cbaee0d45625c817c91c07856f660a274b0025a0f2782cfc1c0e601"
    "5a32c3ceb06a593addb52363036d6cf26b2bda183550920e0b6edef89754a93da40dc613")
ATT3_USER_DATA_PREFIX = bytes.fromhex("3076301006072a8648ce3d0201")  # a DER P-384 public key

ATT4_MODULE_ID = "i-020b6af9246d90e92-enc0183d09086c24190"
ATT4_TIME = dt.datetime(2022, 10, 13, 8, 58, 2, 136000, tzinfo=dt.UTC)  # 1665651482136 ms
ATT4_PCR0 = ("f4d48b81a460c9916d1e685119074bf24660afd3e34fae9f"
             "ca0a0d28d9d5599936332687e6f66fc890ac8cf150142d8b")

KNOWN = {  # name: (module id, own time, PCR0)
    "att_3": (ATT3_MODULE_ID, ATT3_TIME, ATT3_PCRS[0]),
    "att_4": (ATT4_MODULE_ID, ATT4_TIME, ATT4_PCR0),
}


def load(fixtures_dir: Path, name: str) -> bytes:
    return (fixtures_dir / "nitro" / f"{name}.cbor").read_bytes()


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
    kwargs.setdefault("at", ATT3_TIME)
    return verify_attestation(document, **kwargs)


def test_document_rebuilt_from_its_own_parts_verifies(att3: bytes) -> None:
    # The tampering below re-encodes the COSE array around the parts it changes: unchanged parts
    # re-encoded must still verify, so a failure below comes from the one change made.
    protected, _, payload, signature = parts(att3)
    assert verify3(rebuild(protected, payload, signature)).module_id == ATT3_MODULE_ID


@pytest.mark.parametrize("name", ["att_3", "att_4"])
def test_real_document_verifies_at_its_own_timestamp(fixtures_dir: Path, name: str) -> None:
    module_id, made, pcr0 = KNOWN[name]
    result = verify_attestation(load(fixtures_dir, name), at=made)
    assert result.module_id == module_id
    assert result.timestamp == made
    assert result.pcrs[0].hex() == pcr0
    assert result.digest == "SHA384"
    assert result.debug_mode is False
    assert result.root_sha256 == NITRO_ROOT_G1_SHA256


def test_real_document_reports_its_nonce_and_user_data(att3: bytes) -> None:
    result = verify3(att3)
    assert result.nonce == ATT3_NONCE
    assert result.user_data is not None and result.user_data.startswith(ATT3_USER_DATA_PREFIX)
    assert result.public_key is None
    assert {i: result.pcrs[i].hex() for i in ATT3_PCRS} == ATT3_PCRS
    assert sorted(result.pcrs) == list(range(16))


def test_debug_document_verifies_only_with_allow_debug(fixtures_dir: Path) -> None:
    result = verify_attestation(load(fixtures_dir, "att_1"), at=ATT1_TIME, allow_debug=True)
    assert result.debug_mode is True
    assert result.module_id == ATT1_MODULE_ID
    assert result.timestamp == ATT1_TIME
    assert result.pcrs[0] == result.pcrs[1] == result.pcrs[2] == bytes(48)


def test_debug_document_is_rejected_by_default(fixtures_dir: Path) -> None:
    with pytest.raises(VerificationError, match="debug mode"):
        verify_attestation(load(fixtures_dir, "att_1"), at=ATT1_TIME)


def test_debug_document_is_rejected_even_with_its_pcrs_expected(fixtures_dir: Path) -> None:
    with pytest.raises(VerificationError, match="debug mode"):
        verify_attestation(load(fixtures_dir, "att_1"), at=ATT1_TIME,
                           expected_pcrs={0: bytes(48)}, nonce=ATT1_NONCE)


@pytest.mark.parametrize("name", ["att_1", "att_3", "att_4"])
def test_real_document_fails_today_because_its_chain_expired(fixtures_dir: Path,
                                                             name: str) -> None:
    with pytest.raises(VerificationError, match="not at"):
        verify_attestation(load(fixtures_dir, name), allow_debug=True)


def test_expired_time_after_the_leaf_is_rejected(att3: bytes) -> None:
    with pytest.raises(VerificationError, match="leaf certificate"):
        verify3(att3, at=ATT3_TIME + dt.timedelta(hours=4))


def test_time_before_the_leaf_is_rejected(att3: bytes) -> None:
    with pytest.raises(VerificationError, match="leaf certificate"):
        verify3(att3, at=ATT3_TIME - dt.timedelta(seconds=10))


def test_naive_time_is_refused(att3: bytes) -> None:
    with pytest.raises(VerificationError, match="time zone"):
        verify3(att3, at=ATT3_TIME.replace(tzinfo=None))


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
    assert verify3(att3, nonce=ATT3_NONCE).nonce == ATT3_NONCE


def test_wrong_nonce_is_rejected(att3: bytes) -> None:
    with pytest.raises(VerificationError, match="nonce mismatch"):
        verify3(att3, nonce=flip_bit(ATT3_NONCE, 0))


def test_nonce_expected_but_document_has_none_is_rejected(fixtures_dir: Path) -> None:
    # att_4 carries a nonce and sends user_data as CBOR null: the null field is tolerated...
    document = load(fixtures_dir, "att_4")
    assert verify_attestation(document, at=ATT4_TIME).user_data is None
    with pytest.raises(VerificationError, match="nonce mismatch"):
        verify_attestation(document, at=ATT4_TIME, nonce=b"\x01" * 16)


def test_empty_optional_fields_are_reported_as_absent(fixtures_dir: Path) -> None:
    document = load(fixtures_dir, "att_1")
    assert cbor2.loads(parts(document)[2])["public_key"] == b""
    result = verify_attestation(document, at=ATT1_TIME, allow_debug=True)
    assert result.public_key is None


def test_cose_tag_18_is_accepted(att3: bytes) -> None:
    tagged = cbor2.dumps(cbor2.CBORTag(18, parts(att3)))
    assert verify_attestation(tagged, at=ATT3_TIME).module_id == ATT3_MODULE_ID


def test_flipped_bit_in_payload_breaks_the_signature(att3: bytes) -> None:
    protected, _, payload, signature = parts(att3)
    # the last byte is inside the nonce, so the payload still parses and only the signature fails
    with pytest.raises(VerificationError, match="COSE signature does not verify"):
        verify3(rebuild(protected, flip_bit(payload, len(payload) - 1), signature))


@pytest.mark.parametrize("offset", [0, 47, 95])
def test_flipped_bit_in_signature_is_rejected(att3: bytes, offset: int) -> None:
    protected, _, payload, signature = parts(att3)
    with pytest.raises(VerificationError, match="COSE signature"):
        verify3(rebuild(protected, payload, flip_bit(signature, offset)))


@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_flipped_bit_in_protected_header_is_rejected(att3: bytes, offset: int) -> None:
    protected, _, payload, signature = parts(att3)
    with pytest.raises(VerificationError):
        verify3(rebuild(flip_bit(protected, offset), payload, signature))


def test_protected_header_reencoded_with_same_meaning_breaks_the_signature(att3: bytes) -> None:
    # {1: -35} as a 2-byte-length integer: same map, different bytes, so not what was signed
    protected, _, payload, signature = parts(att3)
    assert protected == bytes.fromhex("a1013822")
    with pytest.raises(VerificationError, match="COSE signature"):
        verify3(rebuild(bytes.fromhex("a101390022"), payload, signature))


def with_payload_field(document: bytes, name: str, value: object) -> bytes:
    """The document with one payload field replaced (the signature then no longer matches, but
    the payload's shape is checked first, so the message names the field)."""
    protected, _, payload, signature = parts(document)
    fields = cbor2.loads(payload)
    fields[name] = value
    return rebuild(protected, cbor2.dumps(fields), signature)


@pytest.mark.parametrize(("name", "value", "message"), [
    ("module_id", "", "no module_id"),
    ("module_id", b"i-0ec0e572c8263d8ff", "no module_id"),
    ("digest", "SHA256", "digest is 'SHA256', expected SHA384"),
    ("timestamp", 0, "no valid timestamp"),
    ("timestamp", True, "no valid timestamp"),
    ("timestamp", "1674047239280", "no valid timestamp"),
    ("pcrs", {}, "no pcrs map"),
    ("pcrs", {0: bytes(32)}, "PCR0 is not a 48-byte SHA-384 value"),
    ("pcrs", {0: "00" * 48}, "PCR0 is not a 48-byte SHA-384 value"),
    ("pcrs", {32: bytes(48)}, "PCR index 32 is out of range"),
    ("pcrs", {"0": bytes(48)}, "PCR index '0' is out of range"),
    ("certificate", b"", "no signing certificate"),
    ("cabundle", [], "no cabundle"),
    ("cabundle", ["not der"], "no cabundle"),
    ("nonce", "a nonce", "nonce must be bytes or null"),
    ("user_data", 7, "user_data must be bytes or null"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 20 else None)
def test_malformed_payload_field_is_rejected(att3: bytes, name: str, value: object,
                                             message: str) -> None:
    with pytest.raises(VerificationError, match=re.escape(message)):
        verify_attestation(with_payload_field(att3, name, value), at=ATT3_TIME)


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
        verify3(rebuild(protected, tampered, signature))


def test_reordered_cabundle_is_rejected(att3: bytes) -> None:
    protected, _, payload, signature = parts(att3)
    fields = cbor2.loads(payload)
    bundle = fields["cabundle"]
    fields["cabundle"] = [bundle[0], bundle[2], bundle[1], *bundle[3:]]
    with pytest.raises(VerificationError, match=r"cabundle\[1\]"):
        verify3(rebuild(protected, cbor2.dumps(fields), signature))


def test_cabundle_without_the_root_is_rejected(att3: bytes) -> None:
    protected, _, payload, signature = parts(att3)
    fields = cbor2.loads(payload)
    fields["cabundle"] = fields["cabundle"][1:]
    with pytest.raises(VerificationError, match="not the trusted root"):
        verify3(rebuild(protected, cbor2.dumps(fields), signature))


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


def test_pinned_root_is_the_aws_nitro_root_g1(fixtures_dir: Path) -> None:
    published = x509.load_pem_x509_certificate(
        (fixtures_dir / "nitro" / "aws_nitro_root_g1.pem").read_bytes())
    pinned = load_pinned_root()
    assert pinned == published
    assert pinned.fingerprint(hashes.SHA256()).hex() == NITRO_ROOT_G1_SHA256


def test_garbage_is_a_verification_error_not_a_crash() -> None:
    for junk in (b"", b"\x84", b"\xa0", cbor2.dumps([1, 2, 3, 4])):
        with pytest.raises(VerificationError):
            verify_attestation(junk)


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
