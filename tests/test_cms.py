"""CMS EnvelopedData unwrap: the enclaver vector, OpenSSL's own output, the real KMS samples."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from enclave.cms import CmsError, decrypt_enveloped_data, parse_enveloped_data, spki_sha256

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")
PLAINTEXT = b"attested data key \x00\x01\x02" * 3


@pytest.fixture(scope="module")
def vector_key(fixtures_dir: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_der_private_key(
        (fixtures_dir / "cms" / "enclaver_test_key.pk8.der").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@pytest.fixture(scope="module")
def vector(fixtures_dir: Path) -> bytes:
    return (fixtures_dir / "cms" / "enclaver_cms_vector.ber").read_bytes()


def test_enclaver_vector_decrypts_to_hello_world(vector: bytes, vector_key) -> None:
    assert decrypt_enveloped_data(vector, vector_key) == b"Hello, World"


def test_enclaver_vector_is_addressed_by_sha256_of_the_spki(vector: bytes, vector_key) -> None:
    info = parse_enveloped_data(vector)
    assert info.subject_key_identifier == spki_sha256(vector_key.public_key())


@pytest.mark.parametrize("name", ["kms_cms_sample_1.ber", "kms_cms_sample_2_ctx.ber"])
def test_real_kms_sample_parses(fixtures_dir: Path, name: str) -> None:
    info = parse_enveloped_data((fixtures_dir / "cms" / name).read_bytes())
    assert info.recipient_kind == "subject_key_identifier"
    assert len(info.subject_key_identifier or b"") == 32
    assert len(info.encrypted_key) == 256  # RSA-2048
    assert len(info.encrypted_content) % 16 == 0


@pytest.mark.parametrize("name", ["kms_cms_sample_1.ber", "kms_cms_sample_2_ctx.ber"])
def test_real_kms_sample_for_another_key_is_refused(fixtures_dir: Path, name: str,
                                                    vector_key) -> None:
    with pytest.raises(CmsError, match="addressed to key id"):
        decrypt_enveloped_data((fixtures_dir / "cms" / name).read_bytes(), vector_key)


def test_other_rsa_key_is_refused_before_decrypting(vector: bytes) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(CmsError, match="not\\s+to our key"):
        decrypt_enveloped_data(vector, other)


def test_flipped_ciphertext_byte_is_refused(vector: bytes, vector_key) -> None:
    info = parse_enveloped_data(vector)
    start = vector.index(info.encrypted_content)
    tampered = bytearray(vector)
    tampered[start + len(info.encrypted_content) - 1] ^= 0x01
    with pytest.raises(CmsError, match="padding"):
        decrypt_enveloped_data(bytes(tampered), vector_key)


def test_flipped_encrypted_key_byte_is_refused(vector: bytes, vector_key) -> None:
    info = parse_enveloped_data(vector)
    start = vector.index(info.encrypted_key)
    tampered = bytearray(vector)
    tampered[start + 10] ^= 0x01
    with pytest.raises(CmsError, match="RSAES-OAEP check failed"):
        decrypt_enveloped_data(bytes(tampered), vector_key)


def test_truncated_message_is_a_cms_error(vector: bytes, vector_key) -> None:
    with pytest.raises(CmsError):
        decrypt_enveloped_data(vector[:200], vector_key)


def test_not_enveloped_data_is_refused(vector_key) -> None:
    data = cms.ContentInfo({"content_type": "data", "content": b"x"}).dump()
    with pytest.raises(CmsError, match="expected enveloped_data"):
        decrypt_enveloped_data(data, vector_key)


def modified(vector: bytes, change) -> bytes:
    info = cms.ContentInfo.load(vector)
    enveloped = info["content"]
    change(enveloped)
    return cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump(
        force=True)


def with_key_transport(enveloped, algorithm: dict) -> None:
    ktri = enveloped["recipient_infos"][0].chosen
    replaced = cms.KeyTransRecipientInfo({
        "version": ktri["version"].native, "rid": ktri["rid"],
        "key_encryption_algorithm": algorithm, "encrypted_key": ktri["encrypted_key"].native})
    enveloped["recipient_infos"] = [cms.RecipientInfo(name="ktri", value=replaced)]


def test_two_recipients_are_refused(vector: bytes, vector_key) -> None:
    def duplicate(enveloped):
        ri = enveloped["recipient_infos"][0]
        enveloped["recipient_infos"] = [ri, ri]
    with pytest.raises(CmsError, match="2 recipients"):
        decrypt_enveloped_data(modified(vector, duplicate), vector_key)


def test_pkcs1v15_key_transport_is_refused(vector: bytes, vector_key) -> None:
    def downgrade(enveloped):
        with_key_transport(enveloped, {"algorithm": "rsaes_pkcs1v15"})
    with pytest.raises(CmsError, match="only RSAES-OAEP"):
        decrypt_enveloped_data(modified(vector, downgrade), vector_key)


def test_oaep_with_sha1_is_refused(vector: bytes, vector_key) -> None:
    def sha1(enveloped):
        with_key_transport(enveloped, {
            "algorithm": "rsaes_oaep",
            "parameters": {"hash_algorithm": {"algorithm": "sha1"},
                           "mask_gen_algorithm": {"algorithm": "mgf1",
                                                  "parameters": {"algorithm": "sha1"}}}})
    with pytest.raises(CmsError, match="only SHA-256"):
        decrypt_enveloped_data(modified(vector, sha1), vector_key)


def test_other_content_cipher_is_refused(vector: bytes, vector_key) -> None:
    def aes128(enveloped):
        algorithm = enveloped["encrypted_content_info"]["content_encryption_algorithm"]
        iv = algorithm["parameters"].native
        enveloped["encrypted_content_info"]["content_encryption_algorithm"] = {
            "algorithm": "aes128_cbc", "parameters": iv}
    with pytest.raises(CmsError, match="only aes256_cbc"):
        decrypt_enveloped_data(modified(vector, aes128), vector_key)


# ---- OpenSSL's own output ------------------------------------------------------------------


@pytest.fixture(scope="module")
def recipient(tmp_path_factory) -> tuple[rsa.RSAPrivateKey, x509.Certificate, Path]:
    """An RSA-2048 key and a certificate whose SKI is SHA-256 of its SPKI, as KMS computes it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cms-test-recipient")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(0x1234567)
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectKeyIdentifier(spki_sha256(key.public_key())),
                           critical=False)
            .sign(key, hashes.SHA256()))
    path = tmp_path_factory.mktemp("cms") / "cert.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def openssl_encrypt(cert_path: Path, plaintext: bytes, *extra: str) -> bytes:
    command = [OPENSSL or "openssl", "cms", "-encrypt", "-binary", "-recip", str(cert_path),
               "-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256",
               "-keyopt", "rsa_mgf1_md:sha256", "-aes-256-cbc", "-outform", "DER", *extra]
    return subprocess.run(command, input=plaintext, capture_output=True, check=True).stdout


@needs_openssl
@pytest.mark.parametrize("recipient_id", ["keyid", "issuer_serial"])
@pytest.mark.parametrize("encoding", ["der", "stream_ber"])
def test_openssl_envelope_decrypts(recipient, recipient_id: str, encoding: str) -> None:
    key, cert, cert_path = recipient
    extra = (["-keyid"] if recipient_id == "keyid" else []) + (
        ["-stream"] if encoding == "stream_ber" else [])
    ber = openssl_encrypt(cert_path, PLAINTEXT, *extra)
    if encoding == "stream_ber":
        assert ber[1] == 0x80  # indefinite length: this really is BER, not DER
    info = parse_enveloped_data(ber)
    assert info.recipient_kind == ("subject_key_identifier" if recipient_id == "keyid"
                                   else "issuer_and_serial_number")
    assert decrypt_enveloped_data(ber, key, certificate=cert) == PLAINTEXT


@needs_openssl
def test_openssl_envelope_of_empty_plaintext_decrypts(recipient) -> None:
    key, _, cert_path = recipient
    assert decrypt_enveloped_data(openssl_encrypt(cert_path, b"", "-keyid"), key) == b""


@needs_openssl
def test_openssl_issuer_serial_envelope_for_another_certificate_is_refused(recipient) -> None:
    key, cert, cert_path = recipient
    ber = openssl_encrypt(cert_path, PLAINTEXT)
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(cert.issuer)
             .public_key(other_key.public_key()).serial_number(99)
             .not_valid_before(cert.not_valid_before_utc).not_valid_after(cert.not_valid_after_utc)
             .sign(other_key, hashes.SHA256()))
    with pytest.raises(CmsError, match="another certificate"):
        decrypt_enveloped_data(ber, key, certificate=other)


@needs_openssl
def test_openssl_issuer_serial_envelope_with_wrong_key_fails_oaep(recipient) -> None:
    _, _, cert_path = recipient
    ber = openssl_encrypt(cert_path, PLAINTEXT)
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(CmsError, match="RSAES-OAEP check failed"):
        decrypt_enveloped_data(ber, other_key)


@needs_openssl
def test_openssl_pkcs1v15_envelope_is_refused(recipient) -> None:
    key, _, cert_path = recipient
    command = [OPENSSL or "openssl", "cms", "-encrypt", "-binary", "-recip", str(cert_path),
               "-aes-256-cbc", "-outform", "DER"]
    ber = subprocess.run(command, input=PLAINTEXT, capture_output=True, check=True).stdout
    with pytest.raises(CmsError, match="only RSAES-OAEP"):
        decrypt_enveloped_data(ber, key)
