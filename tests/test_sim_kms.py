"""The local KMS endpoint, driven through boto3 over real HTTP on loopback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from runtime_harness import TEST_POLICY_BYTES as POLICY

from client.sim import pki as sim_pki
from client.sim.kms.envelope import envelope_for_recipient
from client.sim.measure import simulated_pcrs
from client.sim.nsm import build_attestation_document
from enclave.cms import decrypt_enveloped_data, parse_enveloped_data, spki_sha256
from tests.sim_support import (
    HOST_KEY,
    HOST_SESSION_ARN,
    OWNER_KEY,
    STRANGER_KEY,
    kms_client,
    running_kms,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
IMAGE = "kms:RecipientAttestation:ImageSha384"
# measured once: the tree may change while the suite runs, and policy and document must agree
PCRS = simulated_pcrs(PROJECT_ROOT, policy=POLICY)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def url(state: Path) -> Iterator[str]:
    with running_kms(state) as endpoint:
        yield endpoint


@pytest.fixture
def owner(url: str):
    return kms_client(url, OWNER_KEY)


@pytest.fixture
def host(url: str):
    return kms_client(url, HOST_KEY)


def code(excinfo: pytest.ExceptionInfo[ClientError]) -> str:
    return excinfo.value.response["Error"]["Code"]


def recipient_policy(image: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "Owner", "Effect": "Allow", "Principal": {"AWS": "111111111111"},
         "Action": "kms:*", "Resource": "*"},
        {"Sid": "Host", "Effect": "Allow", "Principal": {"AWS": HOST_SESSION_ARN},
         "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*",
         "Condition": {"StringEqualsIgnoreCase": {IMAGE: image},
                       "ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["app_id"]}}},
    ]})


def attestation_for(state: Path, key: rsa.RSAPrivateKey, *, debug: bool = False) -> bytes:
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return build_attestation_document(sim_pki.load_or_create(state),
                                      pcrs={i: bytes(48) for i in PCRS} if debug else PCRS,
                                      module_id="i-test-enc1", public_key=spki)


def recipient(document: bytes) -> dict:
    return {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": document}


@pytest.fixture
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# ---- key management -------------------------------------------------------------------------


def test_create_key_alias_and_describe(owner) -> None:
    key = owner.create_key(Description="d")["KeyMetadata"]
    assert key["Arn"] == f"arn:aws:kms:us-east-1:111111111111:key/{key['KeyId']}"
    owner.create_alias(AliasName="alias/enclavekey", TargetKeyId=key["KeyId"])
    described = owner.describe_key(KeyId="alias/enclavekey")["KeyMetadata"]
    assert described["Arn"] == key["Arn"] and described["Description"] == "d"
    aliases = owner.list_aliases(KeyId=key["Arn"])["Aliases"]
    assert [a["AliasName"] for a in aliases] == ["alias/enclavekey"]


def test_duplicate_alias_is_refused(owner) -> None:
    key = owner.create_key()["KeyMetadata"]
    owner.create_alias(AliasName="alias/a", TargetKeyId=key["KeyId"])
    with pytest.raises(ClientError) as caught:
        owner.create_alias(AliasName="alias/a", TargetKeyId=key["KeyId"])
    assert code(caught) == "AlreadyExistsException"


def test_put_and_get_key_policy_round_trip(owner) -> None:
    key = owner.create_key()["KeyMetadata"]
    policy = recipient_policy("ab" * 48)
    owner.put_key_policy(KeyId=key["KeyId"], PolicyName="default", Policy=policy)
    assert owner.get_key_policy(KeyId=key["KeyId"], PolicyName="default")["Policy"] == policy


def test_malformed_policy_is_refused(owner) -> None:
    key = owner.create_key()["KeyMetadata"]
    with pytest.raises(ClientError) as caught:
        owner.put_key_policy(KeyId=key["KeyId"], PolicyName="default", Policy="{not json")
    assert code(caught) == "MalformedPolicyDocumentException"


def test_unregistered_access_key_is_refused(url: str) -> None:
    with pytest.raises(ClientError) as caught:
        kms_client(url, "AKIAUNKNOWN00000000").create_key()
    assert code(caught) == "UnrecognizedClientException"


def test_other_account_cannot_use_a_default_policy_key(owner, url: str) -> None:
    key = owner.create_key()["KeyMetadata"]
    with pytest.raises(ClientError) as caught:
        kms_client(url, STRANGER_KEY).describe_key(KeyId=key["Arn"])
    assert code(caught) == "AccessDeniedException"


def test_unknown_key_is_not_found(owner) -> None:
    with pytest.raises(ClientError) as caught:
        owner.describe_key(KeyId="alias/none")
    assert code(caught) == "NotFoundException"


# ---- data ------------------------------------------------------------------------------------


def test_encrypt_decrypt_round_trip_with_context(owner) -> None:
    key = owner.create_key()["KeyMetadata"]
    blob = owner.encrypt(KeyId=key["KeyId"], Plaintext=b"secret",
                         EncryptionContext={"app_id": "a"})["CiphertextBlob"]
    response = owner.decrypt(CiphertextBlob=blob, EncryptionContext={"app_id": "a"})
    assert response["Plaintext"] == b"secret" and response["KeyId"] == key["Arn"]


def test_decrypt_with_another_context_fails(owner) -> None:
    key = owner.create_key()["KeyMetadata"]
    blob = owner.encrypt(KeyId=key["KeyId"], Plaintext=b"secret",
                         EncryptionContext={"app_id": "a"})["CiphertextBlob"]
    with pytest.raises(ClientError) as caught:
        owner.decrypt(CiphertextBlob=blob, EncryptionContext={"app_id": "b"})
    assert code(caught) == "InvalidCiphertextException"


def test_decrypt_with_the_wrong_key_id_is_incorrect_key(owner) -> None:
    first, second = (owner.create_key()["KeyMetadata"] for _ in range(2))
    blob = owner.encrypt(KeyId=first["KeyId"], Plaintext=b"x")["CiphertextBlob"]
    with pytest.raises(ClientError) as caught:
        owner.decrypt(CiphertextBlob=blob, KeyId=second["Arn"])
    assert code(caught) == "IncorrectKeyException"


def test_generate_data_key_returns_a_key_that_decrypts(owner) -> None:
    key = owner.create_key()["KeyMetadata"]
    response = owner.generate_data_key(KeyId=key["Arn"], KeySpec="AES_256")
    assert len(response["Plaintext"]) == 32
    assert owner.decrypt(CiphertextBlob=response["CiphertextBlob"])["Plaintext"] == \
        response["Plaintext"]


def test_state_is_shared_by_separate_servers(owner, state: Path) -> None:
    key = owner.create_key()["KeyMetadata"]
    blob = owner.encrypt(KeyId=key["KeyId"], Plaintext=b"shared")["CiphertextBlob"]
    with running_kms(state) as second_url:
        assert kms_client(second_url, OWNER_KEY).decrypt(CiphertextBlob=blob)["Plaintext"] == \
            b"shared"


def test_module_entry_point_prints_its_port_and_serves(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "client.sim.kms", "--port", "0", "--state", str(tmp_path)],
        stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)
    try:
        port = int(process.stdout.readline())
        from client.sim.kms.state import register_principal
        register_principal(tmp_path, OWNER_KEY, "arn:aws:iam::111111111111:role/X")
        client = kms_client(f"http://127.0.0.1:{port}", OWNER_KEY)
        assert client.create_key()["KeyMetadata"]["KeyId"]
    finally:
        process.terminate()
        process.wait(timeout=10)


# ---- Recipient -------------------------------------------------------------------------------


@pytest.fixture
def attested_key(owner) -> dict:
    image = PCRS[0].hex().upper()  # the IgnoreCase operator under test
    return owner.create_key(Policy=recipient_policy(image))["KeyMetadata"]


def test_decrypt_with_recipient_returns_cms_and_no_plaintext(owner, host, attested_key, state,
                                                             rsa_key) -> None:
    blob = owner.encrypt(KeyId=attested_key["KeyId"], Plaintext=b"data key",
                         EncryptionContext={"app_id": "a"})["CiphertextBlob"]
    response = host.decrypt(CiphertextBlob=blob, EncryptionContext={"app_id": "a"},
                            Recipient=recipient(attestation_for(state, rsa_key)))
    assert "Plaintext" not in response
    envelope = response["CiphertextForRecipient"]
    assert parse_enveloped_data(envelope).subject_key_identifier == \
        spki_sha256(rsa_key.public_key())
    assert decrypt_enveloped_data(envelope, rsa_key) == b"data key"


def test_generate_data_key_with_recipient_returns_cms_and_no_plaintext(host, attested_key,
                                                                       state, rsa_key) -> None:
    response = host.generate_data_key(KeyId=attested_key["Arn"], KeySpec="AES_256",
                                      EncryptionContext={"app_id": "a"},
                                      Recipient=recipient(attestation_for(state, rsa_key)))
    assert "Plaintext" not in response
    assert len(decrypt_enveloped_data(response["CiphertextForRecipient"], rsa_key)) == 32


def test_decrypt_without_recipient_is_refused_by_the_policy(owner, host, attested_key) -> None:
    blob = owner.encrypt(KeyId=attested_key["KeyId"], Plaintext=b"k",
                         EncryptionContext={"app_id": "a"})["CiphertextBlob"]
    with pytest.raises(ClientError) as caught:
        host.decrypt(CiphertextBlob=blob, EncryptionContext={"app_id": "a"})
    assert code(caught) == "AccessDeniedException"


def test_extra_encryption_context_key_fails_for_all_values(owner, host, attested_key, state,
                                                          rsa_key) -> None:
    context = {"app_id": "a", "extra": "x"}
    blob = owner.encrypt(KeyId=attested_key["KeyId"], Plaintext=b"k",
                         EncryptionContext=context)["CiphertextBlob"]
    with pytest.raises(ClientError) as caught:
        host.decrypt(CiphertextBlob=blob, EncryptionContext=context,
                     Recipient=recipient(attestation_for(state, rsa_key)))
    assert code(caught) == "AccessDeniedException"


def test_debug_document_reaches_the_policy_and_is_refused_there(owner, host, attested_key,
                                                                state, rsa_key) -> None:
    blob = owner.encrypt(KeyId=attested_key["KeyId"], Plaintext=b"k",
                         EncryptionContext={"app_id": "a"})["CiphertextBlob"]
    with pytest.raises(ClientError) as caught:
        host.decrypt(CiphertextBlob=blob, EncryptionContext={"app_id": "a"},
                     Recipient=recipient(attestation_for(state, rsa_key, debug=True)))
    assert code(caught) == "AccessDeniedException"


def test_tampered_attestation_document_is_refused(owner, host, attested_key, state,
                                                  rsa_key) -> None:
    blob = owner.encrypt(KeyId=attested_key["KeyId"], Plaintext=b"k",
                         EncryptionContext={"app_id": "a"})["CiphertextBlob"]
    protected, unprotected, payload, signature = cbor2.loads(attestation_for(state, rsa_key))
    fields = cbor2.loads(payload)
    fields["pcrs"][0] = bytes(48)  # claim another image without re-signing
    forged = cbor2.dumps([protected, unprotected, cbor2.dumps(fields), signature])
    with pytest.raises(ClientError) as caught:
        host.decrypt(CiphertextBlob=blob, EncryptionContext={"app_id": "a"},
                     Recipient=recipient(forged))
    assert code(caught) == "ValidationException"
    assert "signature" in caught.value.response["Error"]["Message"]


def test_document_from_another_development_root_is_refused(owner, host, attested_key,
                                                           tmp_path: Path, rsa_key) -> None:
    blob = owner.encrypt(KeyId=attested_key["KeyId"], Plaintext=b"k",
                         EncryptionContext={"app_id": "a"})["CiphertextBlob"]
    foreign = attestation_for(tmp_path / "another-state", rsa_key)
    with pytest.raises(ClientError) as caught:
        host.decrypt(CiphertextBlob=blob, EncryptionContext={"app_id": "a"},
                     Recipient=recipient(foreign))
    assert code(caught) == "ValidationException"


def test_other_recipient_algorithm_is_refused(owner, host, attested_key, state,
                                              rsa_key) -> None:
    blob = owner.encrypt(KeyId=attested_key["KeyId"], Plaintext=b"k",
                         EncryptionContext={"app_id": "a"})["CiphertextBlob"]
    with pytest.raises(ClientError) as caught:
        host.decrypt(CiphertextBlob=blob, EncryptionContext={"app_id": "a"},
                     Recipient={"KeyEncryptionAlgorithm": "RSAES_PKCS1_V1_5",
                                "AttestationDocument": attestation_for(state, rsa_key)})
    assert code(caught) in ("ValidationException", "ParamValidationError")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_openssl_decrypts_the_envelope_the_local_kms_builds(tmp_path: Path, rsa_key) -> None:
    spki = rsa_key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "env.der").write_bytes(envelope_for_recipient(b"interop", spki))
    (tmp_path / "key.pem").write_bytes(rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    result = subprocess.run(["openssl", "cms", "-decrypt", "-inform", "DER", "-in",
                             str(tmp_path / "env.der"), "-inkey", str(tmp_path / "key.pem")],
                            capture_output=True, check=True)
    assert result.stdout == b"interop"


def test_requests_leave_nothing_of_the_credentials_on_stderr_or_disk(owner, state: Path,
                                                                     capfd) -> None:
    owner.create_key()
    with pytest.raises(ClientError):
        owner.create_key(Policy="{broken")
    captured = capfd.readouterr()
    assert "not-checked" not in captured.out + captured.err  # the secret key boto3 signs with
    for path in state.rglob("*"):
        if path.is_file():
            assert b"not-checked" not in path.read_bytes()


# ---- key ARNs: region and account, as KMS checks them --------------------------------------


def test_key_arn_of_another_region_is_an_invalid_arn(owner) -> None:
    key = owner.create_key()["KeyMetadata"]
    elsewhere = key["Arn"].replace(":us-east-1:", ":eu-west-1:")
    with pytest.raises(ClientError) as caught:
        owner.encrypt(KeyId=elsewhere, Plaintext=b"x")
    assert code(caught) == "NotFoundException"
    assert caught.value.response["Error"]["Message"] == "Invalid arn eu-west-1"


def test_key_arn_of_another_account_does_not_exist(owner) -> None:
    key = owner.create_key()["KeyMetadata"]
    foreign = key["Arn"].replace(":111111111111:", ":999999999999:")
    with pytest.raises(ClientError) as caught:
        owner.encrypt(KeyId=foreign, Plaintext=b"x")
    assert code(caught) == "NotFoundException"
    assert caught.value.response["Error"]["Message"] == f"Key '{foreign}' does not exist"


def test_key_is_not_found_from_another_regions_endpoint(owner, url: str) -> None:
    import boto3

    key = owner.create_key()["KeyMetadata"]
    west = boto3.client("kms", endpoint_url=url, region_name="eu-west-1",
                        aws_access_key_id=OWNER_KEY, aws_secret_access_key="not-checked")
    with pytest.raises(ClientError) as caught:
        west.describe_key(KeyId=key["KeyId"])
    assert code(caught) == "NotFoundException"


@pytest.mark.parametrize(("replace", "expected"), [
    ((":us-east-1:", ":eu-west-1:"), "does not exist"),  # the SDK asks eu-west-1's endpoint
    ((":111111111111:", ":999999999999:"), "does not exist"),
])
def test_sealing_under_a_key_arn_kms_would_refuse_fails(owner, url: str, tmp_path: Path,
                                                        monkeypatch, capsys, replace,
                                                        expected) -> None:
    """The Third Party's own command: `envelope_encryptor.py encrypt -k ARN` against this KMS."""
    import envelope_encryptor

    key = owner.create_key()["KeyMetadata"]
    app = tmp_path / "app"
    app.mkdir()
    (app / "manifest.json").write_text(json.dumps({
        "format": 1, "app_id": "demo-app", "app_version": "1.0.0",
        "entrypoints": {"run": {"command": ["python3", "main.py"]}}}))
    (app / "main.py").write_text("print('hi')\n")
    for name, value in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": OWNER_KEY,
                        "AWS_SECRET_ACCESS_KEY": "not-checked", "AWS_REGION": "us-east-1",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    wrong = key["Arn"].replace(*replace)
    code_ = envelope_encryptor.main(["encrypt", "-d", str(app), "-k", wrong,
                                     "-o", str(tmp_path / "app.sealed")])
    err = capsys.readouterr().err
    assert code_ == envelope_encryptor.ExitStatus.AWS_ERROR, err
    assert "NotFoundException" in err and expected in err
    assert not (tmp_path / "app.sealed").exists()
