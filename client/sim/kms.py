"""A local KMS endpoint: the KMS JSON 1.1 protocol over HTTP on loopback, for the simulation.

boto3 talks to it with `endpoint_url=http://127.0.0.1:<port>`, exactly as it talks to
`kms.<region>.amazonaws.com` in production (`X-Amz-Target: TrentService.<Operation>`, JSON bodies,
blobs in base64, errors as `{"__type": ..., "message": ...}` with status 400). Operations:
CreateKey, CreateAlias, ListAliases, DescribeKey, GetKeyPolicy, PutKeyPolicy, GenerateDataKey,
Encrypt, Decrypt — the last two with or without `Recipient`.

What it enforces, like KMS: every key-scoped call is evaluated against the key policy
(`client/sim/policy.py`) for the calling principal, with the condition keys KMS sets:
`kms:EncryptionContext:<k>`, `kms:EncryptionContextKeys`, `kms:CallerAccount`, `aws:PrincipalArn`,
and, for a `Recipient`, `kms:RecipientAttestation:ImageSha384` (PCR0, lowercase hex) and
`kms:RecipientAttestation:PCR<n>`. The attestation document is verified against the development
root (debug documents included, so the policy is what refuses their zero PCRs), and the answer to a
`Recipient` is real CMS EnvelopedData to the document's public key (`CiphertextForRecipient`, no
`Plaintext`), so the enclave's production code path runs unchanged. Keys are regional and
belong to the local KMS's one account, as in KMS: a key ARN naming another region than the
endpoint's is `NotFoundException: Invalid arn <region>`, and one naming another account (or a key
created in another region) `NotFoundException: Key '<arn>' does not exist`.

What it does not do: SigV4 signatures are not verified (there are no secrets to check them
against). Callers are identified by the access key id in the Authorization header, mapped to
principal ARNs in `<state>/principals.json` ({"AKID...": "arn:aws:iam::...:role/..."}); an
unknown access key is refused. Key material lives in `<state>/kms/keys.json` (mode 0600), shared by
every process using the same state dir. Nothing here protects real data.

Ciphertext blobs: b"SIMKMS1" || len(key id) (1 byte) || key id || 12-byte nonce || AES-256-GCM
ciphertext+tag, with AAD = key id || canonical JSON of the encryption context.

    python -m client.sim.kms --port 0 --state DIR    (prints the bound port)
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import datetime as dt
import fcntl
import hashlib
import http.server
import json
import os
import re
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from asn1crypto import cms
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import MGF1, OAEP
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from client.attestation import verify_attestation
from client.errors import VerificationError
from client.sim import pki as sim_pki
from client.sim.policy import PolicyError, Request, evaluate

DEFAULT_ACCOUNT = "111111111111"
DEFAULT_REGION = "us-east-1"
BLOB_MAGIC = b"SIMKMS1"
MAX_BODY_BYTES = 1024 * 1024
MAX_PLAINTEXT_BYTES = 4096
RECIPIENT_ALGORITHM = "RSAES_OAEP_SHA_256"
CREDENTIAL_RE = re.compile(r"Credential=([A-Z0-9]+)/\d{8}/([a-z0-9-]+)/kms/aws4_request")
IMAGE_KEY = "kms:RecipientAttestation:ImageSha384"
_thread_lock = threading.Lock()


class KmsFault(Exception):
    """An error answered to the caller as `{"__type": kind, "message": message}`."""

    def __init__(self, kind: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


# ---- state ---------------------------------------------------------------------------------


def register_principal(state_dir: Path, access_key_id: str, principal_arn: str) -> None:
    """Map an access key id to the principal ARN the simulation treats its caller as."""
    path = Path(state_dir) / "principals.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(Path(state_dir)):
        principals = json.loads(path.read_text()) if path.exists() else {}
        principals[access_key_id] = principal_arn
        _atomic_write(path, json.dumps(principals, indent=2, sort_keys=True).encode())


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    (state_dir / "kms").mkdir(parents=True, exist_ok=True, mode=0o700)
    with _thread_lock, open(state_dir / "kms" / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


class KmsState:
    """keys.json: {"account", "keys": {id: {...}}, "aliases": {name: id}}; read per request."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / "kms" / "keys.json"

    def load(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"account": DEFAULT_ACCOUNT, "keys": {}, "aliases": {}}
        return json.loads(self.path.read_text())

    def save(self, data: dict[str, Any]) -> None:
        _atomic_write(self.path, json.dumps(data, indent=2, sort_keys=True).encode())

    def principals(self) -> dict[str, str]:
        path = self.state_dir / "principals.json"
        return json.loads(path.read_text()) if path.exists() else {}


# ---- the CMS answer to a Recipient ---------------------------------------------------------


def envelope_for_recipient(plaintext: bytes, public_key_der: bytes) -> bytes:
    """CMS EnvelopedData as KMS builds it: one KeyTransRecipientInfo v2 identified by
    SHA-256(DER SPKI), RSAES-OAEP-SHA256/MGF1-SHA256, AES-256-CBC content."""
    public_key = serialization.load_der_public_key(public_key_der)
    if not isinstance(public_key, rsa.RSAPublicKey) or public_key.key_size < 2048:
        raise KmsFault("ValidationException",
                       "the attestation document's public_key must be an RSA key of at least "
                       "2048 bits in DER SubjectPublicKeyInfo form")
    spki = public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    content_key, iv = os.urandom(32), os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(content_key), modes.CBC(iv)).encryptor()
    encrypted_content = encryptor.update(padded) + encryptor.finalize()
    encrypted_key = public_key.encrypt(
        content_key, OAEP(mgf=MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(),
                          label=None))
    recipient = cms.KeyTransRecipientInfo({
        "version": "v2",
        "rid": cms.RecipientIdentifier(name="subject_key_identifier",
                                       value=hashlib.sha256(spki).digest()),
        "key_encryption_algorithm": {
            "algorithm": "rsaes_oaep",
            "parameters": {
                "hash_algorithm": {"algorithm": "sha256"},
                "mask_gen_algorithm": {"algorithm": "mgf1",
                                       "parameters": {"algorithm": "sha256"}},
                "p_source_algorithm": {"algorithm": "p_specified", "parameters": b""},
            },
        },
        "encrypted_key": encrypted_key,
    })
    enveloped = cms.EnvelopedData({
        "version": "v2",
        "recipient_infos": [cms.RecipientInfo(name="ktri", value=recipient)],
        "encrypted_content_info": {
            "content_type": "data",
            "content_encryption_algorithm": {"algorithm": "aes256_cbc", "parameters": iv},
            "encrypted_content": encrypted_content,
        },
    })
    return cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump()


# ---- ciphertext blobs ----------------------------------------------------------------------


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


# ---- the service ---------------------------------------------------------------------------


class LocalKms:
    """Operation handlers: `call(operation, body, access_key_id, region) -> response dict`."""

    OPERATIONS = ("CreateKey", "CreateAlias", "ListAliases", "DescribeKey", "GetKeyPolicy",
                  "PutKeyPolicy", "GenerateDataKey", "Encrypt", "Decrypt")

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.state = KmsState(self.state_dir)
        self.root_pem = sim_pki.load_root_pem(self.state_dir)

    def call(self, operation: str, body: dict[str, Any], access_key_id: str | None,
             region: str) -> dict[str, Any]:
        if operation not in self.OPERATIONS:
            raise KmsFault("UnsupportedOperationException",
                           f"the local KMS does not implement {operation}; it supports "
                           f"{', '.join(self.OPERATIONS)}")
        with _locked(self.state_dir):
            principals = self.state.principals()
            if not access_key_id or access_key_id not in principals:
                raise KmsFault("UnrecognizedClientException",
                               f"access key {access_key_id or '(none)'} is not registered in "
                               f"{self.state_dir / 'principals.json'}; register it with "
                               "client.sim.kms.register_principal")
            data = self.state.load()
            caller = principals[access_key_id]
            handler = getattr(self, "_" + re.sub(r"(?<!^)([A-Z])", r"_\1", operation).lower())
            response = handler(data, body, caller, region)
            self.state.save(data)
            return response

    # -- helpers

    def _resolve(self, data: dict[str, Any], key_ref: Any, region: str) -> dict[str, Any]:
        """The key `key_ref` names in `region`, refusing what KMS refuses.

        KMS keys are regional and belong to one account: an ARN naming another region than the
        endpoint's is `NotFoundException: Invalid arn <region>`; a key or alias of another
        account, or a key created in another region, does not exist here.
        """
        if not isinstance(key_ref, str) or not key_ref:
            raise KmsFault("ValidationException", "KeyId is required")
        account = data.get("account", DEFAULT_ACCOUNT)
        key_id = key_ref
        if key_ref.startswith("arn:"):
            parts = key_ref.split(":", 5)
            if len(parts) != 6 or parts[2] != "kms" or not parts[5].startswith(("key/",
                                                                                "alias/")):
                raise KmsFault("NotFoundException", f"Invalid arn {key_ref}")
            if parts[3] != region:
                raise KmsFault("NotFoundException", f"Invalid arn {parts[3]}")
            if parts[4] != account:
                what = "Alias" if parts[5].startswith("alias/") else "Key"
                raise KmsFault("NotFoundException", f"{what} '{key_ref}' does not exist")
            key_id = parts[5].split("/", 1)[1] if parts[5].startswith("key/") else parts[5]
        if key_id.startswith("alias/"):
            alias = data["aliases"].get(key_id)
            if alias is None or data["keys"][alias]["arn"].split(":")[3] != region:
                raise KmsFault("NotFoundException",
                               f"Alias arn:aws:kms:{region}:{account}:{key_id} is not found.")
            key_id = alias
        key = data["keys"].get(key_id)
        if key is None or key["arn"].split(":")[3] != region:
            raise KmsFault("NotFoundException",
                           f"Key 'arn:aws:kms:{region}:{account}:key/{key_id}' does not exist")
        return key

    def _authorize(self, key: dict[str, Any], caller: str, action: str,
                   context: dict[str, Any] | None = None) -> None:
        full = {"aws:PrincipalArn": caller, "kms:CallerAccount": _account_of(caller)}
        full.update(context or {})
        try:
            decision = evaluate(json.loads(key["policy"]), Request(caller, action, key["arn"],
                                                                   full))
        except PolicyError as exc:
            raise KmsFault("AccessDeniedException",
                           f"the key policy of {key['arn']} cannot be evaluated by the local KMS "
                           f"({exc}); access is refused") from None
        if not decision.allowed:
            raise KmsFault("AccessDeniedException",
                           f"{caller} is not authorized to perform {action} on {key['arn']}: "
                           f"{decision.reason}")

    @staticmethod
    def _context(body: dict[str, Any]) -> dict[str, str]:
        context = body.get("EncryptionContext") or {}
        if not isinstance(context, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in context.items()):
            raise KmsFault("ValidationException", "EncryptionContext must map strings to strings")
        return context

    @staticmethod
    def _context_keys(context: dict[str, str]) -> dict[str, Any]:
        keys: dict[str, Any] = {f"kms:EncryptionContext:{k}": v for k, v in context.items()}
        keys["kms:EncryptionContextKeys"] = sorted(context) or None
        return keys

    def _recipient(self, body: dict[str, Any]) -> tuple[bytes, dict[str, Any]] | None:
        """(recipient public key, attestation condition keys), or None without a Recipient."""
        recipient = body.get("Recipient")
        if recipient is None:
            return None
        if not isinstance(recipient, dict):
            raise KmsFault("ValidationException", "Recipient must be a structure")
        algorithm = recipient.get("KeyEncryptionAlgorithm")
        if algorithm != RECIPIENT_ALGORITHM:
            raise KmsFault("ValidationException", f"KeyEncryptionAlgorithm {algorithm!r} is not "
                                                  f"supported; use {RECIPIENT_ALGORITHM}")
        document = _b64(recipient.get("AttestationDocument"), "Recipient.AttestationDocument")
        try:
            # debug documents pass here on purpose: refusing them is the key policy's job
            result = verify_attestation(document, root_pem=self.root_pem, allow_debug=True)
        except VerificationError as exc:
            raise KmsFault("ValidationException",
                           f"the attestation document is not valid: {exc}") from None
        if not result.public_key:
            raise KmsFault("ValidationException",
                           "the attestation document carries no public_key to encrypt to")
        keys: dict[str, Any] = {IMAGE_KEY: result.pcrs[0].hex()}
        keys.update({f"kms:RecipientAttestation:PCR{i}": v.hex()
                     for i, v in result.pcrs.items()})
        return result.public_key, keys

    def _metadata(self, key: dict[str, Any]) -> dict[str, Any]:
        return {"AWSAccountId": key["account"], "KeyId": key["id"], "Arn": key["arn"],
                "CreationDate": key["created"], "Enabled": True,
                "Description": key.get("description", ""), "KeyUsage": "ENCRYPT_DECRYPT",
                "KeyState": "Enabled", "Origin": "AWS_KMS", "KeyManager": "CUSTOMER",
                "KeySpec": "SYMMETRIC_DEFAULT", "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT",
                "EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"], "MultiRegion": False}

    # -- operations

    def _create_key(self, data, body, caller, region):
        key_id = str(uuid.uuid4())
        account = data.get("account", DEFAULT_ACCOUNT)
        policy = body.get("Policy") or json.dumps({"Version": "2012-10-17", "Statement": [{
            "Sid": "Enable IAM User Permissions", "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{account}:root"}, "Action": "kms:*",
            "Resource": "*"}]})
        _parse_policy(policy)
        key = {"id": key_id, "arn": f"arn:aws:kms:{region}:{account}:key/{key_id}",
               "account": account, "created": dt.datetime.now(dt.UTC).timestamp(),
               "description": body.get("Description", ""), "policy": policy,
               "material": base64.b64encode(os.urandom(32)).decode()}
        data["keys"][key_id] = key
        return {"KeyMetadata": self._metadata(key)}

    def _create_alias(self, data, body, caller, region):
        name = body.get("AliasName")
        if not isinstance(name, str) or not re.fullmatch(r"alias/[A-Za-z0-9/_-]{1,250}", name):
            raise KmsFault("ValidationException", f"AliasName {name!r} must be alias/<name>")
        if name.startswith("alias/aws/"):
            raise KmsFault("NotAuthorizedException", "alias/aws/ is reserved for AWS")
        if name in data["aliases"]:
            raise KmsFault("AlreadyExistsException", f"alias {name} already exists")
        key = self._resolve(data, body.get("TargetKeyId"), region)
        self._authorize(key, caller, "kms:CreateAlias")
        data["aliases"][name] = key["id"]
        return {}

    def _list_aliases(self, data, body, caller, region):
        account = data.get("account", DEFAULT_ACCOUNT)
        aliases = [{"AliasName": name, "AliasArn": f"arn:aws:kms:{region}:{account}:{name}",
                    "TargetKeyId": key_id} for name, key_id in sorted(data["aliases"].items())]
        if body.get("KeyId"):
            wanted = self._resolve(data, body["KeyId"], region)["id"]
            aliases = [a for a in aliases if a["TargetKeyId"] == wanted]
        return {"Aliases": aliases, "Truncated": False}

    def _describe_key(self, data, body, caller, region):
        key = self._resolve(data, body.get("KeyId"), region)
        self._authorize(key, caller, "kms:DescribeKey")
        return {"KeyMetadata": self._metadata(key)}

    def _get_key_policy(self, data, body, caller, region):
        key = self._resolve(data, body.get("KeyId"), region)
        self._authorize(key, caller, "kms:GetKeyPolicy")
        return {"Policy": key["policy"], "PolicyName": "default"}

    def _put_key_policy(self, data, body, caller, region):
        key = self._resolve(data, body.get("KeyId"), region)
        if body.get("PolicyName", "default") != "default":
            raise KmsFault("ValidationException", "PolicyName must be default")
        self._authorize(key, caller, "kms:PutKeyPolicy")
        policy = body.get("Policy")
        _parse_policy(policy)
        key["policy"] = policy
        return {}

    def _generate_data_key(self, data, body, caller, region):
        key = self._resolve(data, body.get("KeyId"), region)
        context = self._context(body)
        size = {"AES_256": 32, "AES_128": 16}.get(body.get("KeySpec") or "", None)
        size = size or body.get("NumberOfBytes")
        if not isinstance(size, int) or not 1 <= size <= 1024:
            raise KmsFault("ValidationException", "give KeySpec AES_256/AES_128 or NumberOfBytes "
                                                  "1..1024")
        recipient = self._recipient(body)
        conditions = self._context_keys(context)
        if recipient:
            conditions.update(recipient[1])
        self._authorize(key, caller, "kms:GenerateDataKey", conditions)
        plaintext = os.urandom(size)
        response = {"KeyId": key["arn"], "CiphertextBlob": _b64e(
            seal_blob(key["id"], base64.b64decode(key["material"]), plaintext, context))}
        if recipient:
            response["CiphertextForRecipient"] = _b64e(
                envelope_for_recipient(plaintext, recipient[0]))
        else:
            response["Plaintext"] = _b64e(plaintext)
        return response

    def _encrypt(self, data, body, caller, region):
        key = self._resolve(data, body.get("KeyId"), region)
        context = self._context(body)
        plaintext = _b64(body.get("Plaintext"), "Plaintext")
        if not 1 <= len(plaintext) <= MAX_PLAINTEXT_BYTES:
            raise KmsFault("ValidationException",
                           f"Plaintext must be 1..{MAX_PLAINTEXT_BYTES} bytes")
        self._authorize(key, caller, "kms:Encrypt", self._context_keys(context))
        blob = seal_blob(key["id"], base64.b64decode(key["material"]), plaintext, context)
        return {"KeyId": key["arn"], "CiphertextBlob": _b64e(blob),
                "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}

    def _decrypt(self, data, body, caller, region):
        blob = _b64(body.get("CiphertextBlob"), "CiphertextBlob")
        key = self._resolve(data, blob_key_id(blob), region)
        if body.get("KeyId") and self._resolve(data, body["KeyId"], region)["id"] != key["id"]:
            raise KmsFault("IncorrectKeyException",
                           "the ciphertext was encrypted under another key than KeyId")
        context = self._context(body)
        recipient = self._recipient(body)
        conditions = self._context_keys(context)
        if recipient:
            conditions.update(recipient[1])
        self._authorize(key, caller, "kms:Decrypt", conditions)
        plaintext = open_blob(key["id"], base64.b64decode(key["material"]), blob, context)
        response = {"KeyId": key["arn"], "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}
        if recipient:
            response["CiphertextForRecipient"] = _b64e(
                envelope_for_recipient(plaintext, recipient[0]))
        else:
            response["Plaintext"] = _b64e(plaintext)
        return response


def _parse_policy(policy: Any) -> dict[str, Any]:
    if not isinstance(policy, str) or len(policy) > 32768:
        raise KmsFault("MalformedPolicyDocumentException", "Policy must be a JSON string of at "
                                                           "most 32 KiB")
    try:
        parsed = json.loads(policy)
    except json.JSONDecodeError as exc:
        raise KmsFault("MalformedPolicyDocumentException", f"Policy is not JSON: {exc}") from None
    if not isinstance(parsed, dict) or "Statement" not in parsed:
        raise KmsFault("MalformedPolicyDocumentException", "Policy has no Statement")
    return parsed


def _account_of(arn: str) -> str | None:
    parts = arn.split(":")
    return parts[4] if len(parts) > 5 else None


def _b64(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise KmsFault("ValidationException", f"{name} is required (base64)")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KmsFault("ValidationException", f"{name} is not valid base64") from None


def _b64e(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---- HTTP ----------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    server: KmsHttpServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        operation, outcome = "?", "ok"
        try:
            target = self.headers.get("X-Amz-Target", "")
            operation = target.split(".", 1)[-1] or "?"
            if not target.startswith("TrentService."):
                raise KmsFault("UnknownOperationException",
                               f"X-Amz-Target {target!r} is not TrentService.<Operation>")
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 <= length <= MAX_BODY_BYTES:
                raise KmsFault("ValidationException", "request body too large")
            raw = self.rfile.read(length)
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise KmsFault("SerializationException", "the request body is not a JSON object")
            match = CREDENTIAL_RE.search(self.headers.get("Authorization", ""))
            access_key = match.group(1) if match else None
            region = match.group(2) if match else DEFAULT_REGION
            response = self.server.kms.call(target.split(".", 1)[1], body, access_key, region)
            self._reply(200, response)
        except KmsFault as fault:
            outcome = fault.kind
            self._reply(fault.status, {"__type": fault.kind, "message": str(fault)})
        except (ValueError, json.JSONDecodeError) as exc:
            self._reply(400, {"__type": "SerializationException", "message": str(exc)})
        except Exception as exc:  # the server keeps serving; the caller learns it failed
            outcome = "KMSInternalException"
            self._reply(500, {"__type": "KMSInternalException",
                              "message": f"local KMS failure: {type(exc).__name__}: {exc}"})
        finally:
            # One audit line per request (operation and outcome, never keys or data), as
            # CloudTrail would record it: the simulation's log shows what reached KMS.
            print(f"request {operation} {outcome}", flush=True)

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        # silent: request lines carry nothing useful and headers carry credentials
        return


class KmsHttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], kms: LocalKms) -> None:
        self.kms = kms
        super().__init__(address, _Handler)


def make_kms_server(host: str, port: int, *, state_dir: Path) -> KmsHttpServer:
    """A ready-to-serve local KMS bound to (host, port); port 0 picks a free one
    (`server.server_address[1]`). Call `serve_forever()`; stop with `shutdown()`."""
    return KmsHttpServer((host, port), LocalKms(Path(state_dir)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.sim.kms",
                                     description="Local KMS endpoint for the simulation.")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any)")
    parser.add_argument("--state", required=True, help="simulation state directory")
    parser.add_argument("--tls-certificate", metavar="PEM",
                        help="serve HTTPS with this certificate (the emulated enclave's KMS)")
    parser.add_argument("--tls-key", metavar="PEM", help="private key of --tls-certificate")
    args = parser.parse_args(argv)
    server = make_kms_server("127.0.0.1", args.port, state_dir=Path(args.state))
    if args.tls_certificate:
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(args.tls_certificate, args.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
