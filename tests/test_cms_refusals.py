"""More of what enclave/cms.py refuses in a KMS CiphertextForRecipient, each a change to the real
test vector (tests/test_cms.py has the vector, the OpenSSL envelopes and the main refusals)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from enclave.cms import MAX_ENVELOPE_BYTES, CmsError, decrypt_enveloped_data
from tests.test_cms import modified, vector, vector_key, with_key_transport  # noqa: F401

SHA256_OAEP = {"hash_algorithm": {"algorithm": "sha256"},
               "mask_gen_algorithm": {"algorithm": "mgf1",
                                      "parameters": {"algorithm": "sha256"}}}


def content_algorithm(enveloped, **changes) -> None:
    algorithm = enveloped["encrypted_content_info"]["content_encryption_algorithm"]
    enveloped["encrypted_content_info"]["content_encryption_algorithm"] = {
        "algorithm": algorithm["algorithm"].native, "parameters": algorithm["parameters"].native,
        **changes}


def test_an_oversized_message_is_refused_before_parsing(vector_key):  # noqa: F811
    with pytest.raises(CmsError, match=f"exceeds {MAX_ENVELOPE_BYTES}"):
        decrypt_enveloped_data(bytes(MAX_ENVELOPE_BYTES + 1), vector_key)


def test_oaep_without_parameters_is_refused_as_the_sha1_default(vector, vector_key):  # noqa: F811
    def bare(enveloped):
        with_key_transport(enveloped, {"algorithm": "rsaes_oaep"})
    with pytest.raises(CmsError, match="the default \\(SHA-1\\) is not accepted"):
        decrypt_enveloped_data(modified(vector, bare), vector_key)


def test_oaep_with_a_label_is_refused(vector, vector_key):  # noqa: F811
    def labelled(enveloped):
        with_key_transport(enveloped, {"algorithm": "rsaes_oaep", "parameters": {
            **SHA256_OAEP, "p_source_algorithm": {"algorithm": "p_specified",
                                                  "parameters": b"label"}}})
    with pytest.raises(CmsError, match="non-empty label"):
        decrypt_enveloped_data(modified(vector, labelled), vector_key)


def test_inner_content_other_than_data_is_refused(vector, vector_key):  # noqa: F811
    def signed(enveloped):
        enveloped["encrypted_content_info"]["content_type"] = "signed_data"
    with pytest.raises(CmsError, match="'signed_data', expected data"):
        decrypt_enveloped_data(modified(vector, signed), vector_key)


def test_an_iv_of_the_wrong_length_is_refused(vector, vector_key):  # noqa: F811
    def short_iv(enveloped):
        content_algorithm(enveloped, parameters=bytes(8))
    with pytest.raises(CmsError, match="16-byte IV"):
        decrypt_enveloped_data(modified(vector, short_iv), vector_key)


def test_detached_content_is_refused(vector, vector_key):  # noqa: F811
    def detached(enveloped):
        info = enveloped["encrypted_content_info"]
        enveloped["encrypted_content_info"] = {
            "content_type": "data",
            "content_encryption_algorithm": info["content_encryption_algorithm"]}
    with pytest.raises(CmsError, match="no encrypted content"):
        decrypt_enveloped_data(modified(vector, detached), vector_key)


def test_content_that_is_not_whole_aes_blocks_is_refused(vector, vector_key):  # noqa: F811
    def cut(enveloped):
        content = enveloped["encrypted_content_info"]["encrypted_content"].native
        enveloped["encrypted_content_info"]["encrypted_content"] = content[:-1]
    with pytest.raises(CmsError, match="whole number of AES blocks"):
        decrypt_enveloped_data(modified(vector, cut), vector_key)


def test_a_private_key_that_is_not_rsa_is_refused(vector):  # noqa: F811
    with pytest.raises(CmsError, match="must be RSA"):
        decrypt_enveloped_data(vector, ec.generate_private_key(ec.SECP384R1()))  # type: ignore[arg-type]
