"""End to end: a bundle sealed under a key whose policy is the one the ThirdPartyStack synthesizes
opens only in an attested enclave with an allowed measurement, the right encryption context and a
non-debug document. The local KMS evaluates the policy; the simulated NSM attests."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import botocore.session
import pytest
from aws_cdk.assertions import Template
from aws_encryption_sdk.key_providers.kms import StrictAwsKmsMasterKeyProvider
from botocore.exceptions import ClientError
from runtime_harness import TEST_POLICY_BYTES as POLICY

from client.sim.measure import simulated_pcrs
from client.sim.template import pseudo_parameters, resolve_intrinsics
from constructs.enclave_key import EnclaveKey
from enclave.attested_kms import AttestedDecryptError, attested_decrypt
from enclave.bundle_format import UnsealError, bundle_encryption_context, esdk_client
from enclave.keyprovider import AttestedKmsMasterKeyProvider
from enclave.manifest import MANIFEST_NAME
from enclave.sealing import seal_directory, unseal_bundle
from tests.sim_support import (
    HOST_KEY,
    HOST_ROLE_ARN,
    OWNER_KEY,
    REGION,
    THIRD_PARTY_ACCOUNT,
    kms_client,
    running_kms,
    running_nsm,
    short_socket_dir,
)

pytestmark = pytest.mark.cdk  # the key policy comes from synthesizing EnclaveKey

PROJECT_ROOT = Path(__file__).resolve().parent.parent
APP_ID = "sample-inference"
APP_VERSION = "1.0.0"
CONTEXT = bundle_encryption_context(APP_ID, APP_VERSION)
def synthesized_key_policy(measurements: list[str]) -> dict:
    """The KeyPolicy of the AWS::KMS::Key that constructs/enclave_key.py synthesizes."""
    app = cdk.App()
    stack = cdk.Stack(app, "KeyUnderTest",
                      env=cdk.Environment(account=THIRD_PARTY_ACCOUNT, region=REGION))
    EnclaveKey(stack, "EnclaveKey", alias_name="alias/enclavekey",
               administrator_account=THIRD_PARTY_ACCOUNT, host_principal_arn=HOST_ROLE_ARN,
               app_id=APP_ID, allowed_measurements=measurements)
    resources = Template.from_stack(stack).to_json()["Resources"]
    (policy,) = [r["Properties"]["KeyPolicy"] for r in resources.values()
                 if r["Type"] == "AWS::KMS::Key"]
    resolved = resolve_intrinsics(policy, pseudo_parameters(account=THIRD_PARTY_ACCOUNT,
                                                            region=REGION))
    assert "Fn::" not in json.dumps(resolved), "unresolved intrinsic in the key policy"
    return resolved


@pytest.fixture(scope="module")
def allowed_pcrs() -> dict[int, bytes]:
    return simulated_pcrs(PROJECT_ROOT, policy=POLICY)


@pytest.fixture(scope="module")
def other_pcrs(tmp_path_factory) -> dict[int, bytes]:
    """A different image: the same runtime plus one extra file in the image definition."""
    root = tmp_path_factory.mktemp("other-image")
    for top in ("enclave", "containers"):
        source = PROJECT_ROOT / top
        if source.is_dir():
            for path in source.rglob("*"):
                if path.is_file() and "__pycache__" not in path.parts:
                    target = root / path.relative_to(PROJECT_ROOT)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(path.read_bytes())
    (root / "containers").mkdir(exist_ok=True)
    (root / "containers" / "extra-package.txt").write_text("something the owner did not build\n")
    return simulated_pcrs(root, policy=POLICY)


@pytest.fixture(scope="module")
def key_policy(allowed_pcrs) -> dict:
    return synthesized_key_policy([allowed_pcrs[0].hex()])


class World:
    def __init__(self, url: str, key_arn: str, allowed, debug, other) -> None:
        self.url, self.key_arn = url, key_arn
        self.owner = kms_client(url, OWNER_KEY)
        self.host = kms_client(url, HOST_KEY)
        self.allowed_nsm, self.debug_nsm, self.other_nsm = allowed, debug, other


@pytest.fixture(scope="module")
def world(tmp_path_factory, key_policy, allowed_pcrs, other_pcrs) -> Iterator[World]:
    state = tmp_path_factory.mktemp("sim-state")
    with running_kms(state) as url, short_socket_dir() as sockets, \
            running_nsm(sockets / "allowed", state, allowed_pcrs) as allowed, \
            running_nsm(sockets / "debug", state, allowed_pcrs, debug=True) as debug, \
            running_nsm(sockets / "other", state, other_pcrs) as other:
        owner = kms_client(url, OWNER_KEY)
        key = owner.create_key(Policy=json.dumps(key_policy),
                               Description="enclave key")["KeyMetadata"]
        owner.create_alias(AliasName="alias/enclavekey", TargetKeyId=key["KeyId"])
        yield World(url, key["Arn"], allowed, debug, other)


@pytest.fixture(scope="module")
def sealed_bundle(world: World, tmp_path_factory) -> bytes:
    """The sample application sealed by the owner through the ESDK's KMS provider."""
    app = tmp_path_factory.mktemp("app")
    (app / MANIFEST_NAME).write_text(json.dumps({
        "format": 1, "app_id": APP_ID, "app_version": APP_VERSION,
        "entrypoints": {"predict": {"command": ["python3", "main.py"], "args": []}}}))
    (app / "main.py").write_text("print('confidential model')\n")
    out = io.BytesIO()
    seal_directory(app, out, key_provider=owner_provider(world))
    return out.getvalue()


class LocalEndpointSession(botocore.session.Session):
    """A botocore session whose clients talk to the local KMS endpoint."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.local_url = url

    def create_client(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["endpoint_url"] = self.local_url
        return super().create_client(*args, **kwargs)


def owner_provider(world: World) -> StrictAwsKmsMasterKeyProvider:
    """The ESDK's own KMS provider, pointed at the local endpoint with the owner's identity."""
    session = LocalEndpointSession(world.url)
    session.set_credentials(OWNER_KEY, "not-checked")
    return StrictAwsKmsMasterKeyProvider(key_ids=[world.key_arn], botocore_session=session)


def data_key(world: World, context: dict[str, str] = CONTEXT) -> tuple[bytes, bytes]:
    response = world.owner.generate_data_key(KeyId="alias/enclavekey", KeySpec="AES_256",
                                             EncryptionContext=context)
    return response["CiphertextBlob"], response["Plaintext"]


def denied_by(excinfo: pytest.ExceptionInfo[ClientError]) -> str:
    error = excinfo.value.response["Error"]
    assert error["Code"] == "AccessDeniedException", error
    return error["Message"]


# ---- the property ----------------------------------------------------------------------------


def test_policy_under_test_is_the_synthesized_one(key_policy: dict, allowed_pcrs) -> None:
    sids = [s.get("Sid") for s in key_policy["Statement"]]
    assert "AllowAttestedEnclaveDecrypt" in sids and "DenyDecryptWithoutAttestation" in sids
    assert allowed_pcrs[0].hex() in json.dumps(key_policy)


def test_allowed_enclave_unseals_the_bundle(world: World, sealed_bundle: bytes,
                                            tmp_path: Path) -> None:
    provider = AttestedKmsMasterKeyProvider(world.key_arn, world.host, world.allowed_nsm)
    manifest = unseal_bundle(io.BytesIO(sealed_bundle), tmp_path / "out", key_provider=provider,
                             expected_app_id=APP_ID)
    assert manifest.app_id == APP_ID
    assert (tmp_path / "out" / "main.py").read_text() == "print('confidential model')\n"


def test_allowed_enclave_gets_the_data_key(world: World) -> None:
    blob, plaintext = data_key(world)
    assert attested_decrypt(world.host, world.allowed_nsm, ciphertext_blob=blob,
                            encryption_context=CONTEXT, key_id=world.key_arn) == plaintext


def test_host_without_attestation_is_denied(world: World) -> None:
    blob, _ = data_key(world)
    with pytest.raises(ClientError) as caught:
        world.host.decrypt(CiphertextBlob=blob, KeyId=world.key_arn, EncryptionContext=CONTEXT)
    assert "DenyDecryptWithoutAttestation" in denied_by(caught)


def test_debug_mode_enclave_is_denied(world: World) -> None:
    blob, _ = data_key(world)
    with pytest.raises(ClientError) as caught:
        attested_decrypt(world.host, world.debug_nsm, ciphertext_blob=blob,
                         encryption_context=CONTEXT, key_id=world.key_arn)
    assert "DenyDecryptUnlistedImage" in denied_by(caught)


def test_enclave_with_a_measurement_not_on_the_list_is_denied(world: World) -> None:
    blob, _ = data_key(world)
    with pytest.raises(ClientError) as caught:
        attested_decrypt(world.host, world.other_nsm, ciphertext_blob=blob,
                         encryption_context=CONTEXT, key_id=world.key_arn)
    assert "DenyDecryptUnlistedImage" in denied_by(caught)


def test_allowed_enclave_with_the_wrong_encryption_context_is_denied(world: World) -> None:
    other_app = bundle_encryption_context("other-app", APP_VERSION)
    blob, _ = data_key(world, other_app)
    with pytest.raises(ClientError) as caught:
        attested_decrypt(world.host, world.allowed_nsm, ciphertext_blob=blob,
                         encryption_context=other_app, key_id=world.key_arn)
    assert "implicit deny" in denied_by(caught)


@pytest.mark.parametrize("nsm_name", ["debug_nsm", "other_nsm"])
def test_denied_enclave_cannot_unseal_the_bundle(world: World, sealed_bundle: bytes,
                                                 tmp_path: Path, nsm_name: str) -> None:
    provider = AttestedKmsMasterKeyProvider(world.key_arn, world.host, getattr(world, nsm_name))
    with pytest.raises(UnsealError):
        unseal_bundle(io.BytesIO(sealed_bundle), tmp_path / "out", key_provider=provider)
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())


# ---- the provider with the ESDK directly, and fail-closed unwrapping ------------------------


def test_esdk_message_from_the_kms_provider_decrypts_with_the_attested_provider(
        world: World) -> None:
    client = esdk_client()
    ciphertext, _ = client.encrypt(source=b"model weights", key_provider=owner_provider(world),
                                   encryption_context=CONTEXT)
    provider = AttestedKmsMasterKeyProvider(world.key_arn, world.host, world.allowed_nsm)
    plaintext, header = client.decrypt(source=ciphertext, key_provider=provider)
    assert plaintext == b"model weights"
    assert header.encryption_context["app_id"] == APP_ID


def test_attested_provider_refuses_to_encrypt(world: World) -> None:
    provider = AttestedKmsMasterKeyProvider(world.key_arn, world.host, world.allowed_nsm)
    with pytest.raises(Exception, match="only decrypts"):
        esdk_client().encrypt(source=b"x", key_provider=provider, encryption_context=CONTEXT)


def test_attested_provider_needs_a_key_arn(world: World) -> None:
    with pytest.raises(ValueError, match="must be a KMS key ARN"):
        AttestedKmsMasterKeyProvider("alias/enclavekey", world.host, world.allowed_nsm)


class PlaintextReturningKms:
    """A KMS (or a man in the middle) that ignores the Recipient and returns the plaintext."""

    def __init__(self) -> None:
        self.requests: list[dict] = []

    def decrypt(self, **request: Any) -> dict:
        self.requests.append(request)
        return {"KeyId": request["KeyId"], "Plaintext": b"\x01" * 32}


def test_plaintext_in_the_response_is_refused(world: World) -> None:
    kms = PlaintextReturningKms()
    with pytest.raises(AttestedDecryptError, match="Plaintext"):
        attested_decrypt(kms, world.allowed_nsm, ciphertext_blob=b"blob",
                         encryption_context=CONTEXT, key_id=world.key_arn)
    assert kms.requests[0]["Recipient"]["KeyEncryptionAlgorithm"] == "RSAES_OAEP_SHA_256"


def test_answer_for_another_key_is_refused(world: World) -> None:
    class OtherKeyKms:
        def decrypt(self, **request: Any) -> dict:
            return {"KeyId": request["KeyId"] + "-other", "CiphertextForRecipient": b"x"}
    with pytest.raises(AttestedDecryptError, match="not the requested"):
        attested_decrypt(OtherKeyKms(), world.allowed_nsm, ciphertext_blob=b"blob",
                         encryption_context=CONTEXT, key_id=world.key_arn)


class RecordingNsm:
    def __init__(self, inner) -> None:
        self.inner, self.public_keys = inner, []

    def attestation(self, **fields: Any) -> bytes:
        self.public_keys.append(fields["public_key"])
        return self.inner.attestation(**fields)


def test_each_call_uses_a_fresh_rsa_2048_recipient_key(world: World) -> None:
    from cryptography.hazmat.primitives.serialization import load_der_public_key
    nsm = RecordingNsm(world.allowed_nsm)
    blob, _ = data_key(world)
    for _ in range(2):
        attested_decrypt(world.host, nsm, ciphertext_blob=blob, encryption_context=CONTEXT,
                         key_id=world.key_arn)
    first, second = nsm.public_keys
    assert first != second
    assert load_der_public_key(first).key_size == 2048
