"""The local KMS's operations: each call resolves the key, evaluates its key policy for the
caller with the condition keys KMS sets, and answers as KMS does."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client.attestation import verify_attestation
from client.errors import VerificationError
from client.sim import pki as sim_pki
from client.sim.kms.blobs import blob_key_id, open_blob, seal_blob
from client.sim.kms.envelope import envelope_for_recipient
from client.sim.kms.fault import KmsFault
from client.sim.kms.state import DEFAULT_ACCOUNT, KmsState, locked
from client.sim.policy import PolicyError, Request, evaluate

MAX_PLAINTEXT_BYTES = 4096
RECIPIENT_ALGORITHM = "RSAES_OAEP_SHA_256"
IMAGE_KEY = "kms:RecipientAttestation:ImageSha384"
# An operation: (state, request body, caller's principal ARN, endpoint region) -> response.
Handler = Callable[[dict[str, Any], dict[str, Any], str, str], dict[str, Any]]


class LocalKms:
    """Operation handlers: `call(operation, body, access_key_id, region) -> response dict`."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.state = KmsState(self.state_dir)
        self.root_pem = sim_pki.load_root_pem(self.state_dir)
        self._handlers: dict[str, Handler] = {
            "CreateKey": self._create_key, "CreateAlias": self._create_alias,
            "ListAliases": self._list_aliases, "DescribeKey": self._describe_key,
            "GetKeyPolicy": self._get_key_policy, "PutKeyPolicy": self._put_key_policy,
            "GenerateDataKey": self._generate_data_key, "Encrypt": self._encrypt,
            "Decrypt": self._decrypt,
        }

    def call(self, operation: str, body: dict[str, Any], access_key_id: str | None,
             region: str) -> dict[str, Any]:
        if operation not in self._handlers:
            raise KmsFault("UnsupportedOperationException",
                           f"the local KMS does not implement {operation}; it supports "
                           f"{', '.join(self._handlers)}")
        with locked(self.state_dir):
            principals = self.state.principals()
            if not access_key_id or access_key_id not in principals:
                raise KmsFault("UnrecognizedClientException",
                               f"access key {access_key_id or '(none)'} is not registered in "
                               f"{self.state_dir / 'principals.json'}; register it with "
                               "client.sim.kms.state.register_principal")
            data = self.state.load()
            caller = principals[access_key_id]
            response = self._handlers[operation](data, body, caller, region)
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
        key: dict[str, Any] | None = data["keys"].get(key_id)
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

    def _create_key(self, data: dict[str, Any], body: dict[str, Any], caller: str,
                    region: str) -> dict[str, Any]:
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

    def _create_alias(self, data: dict[str, Any], body: dict[str, Any], caller: str,
                      region: str) -> dict[str, Any]:
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

    def _list_aliases(self, data: dict[str, Any], body: dict[str, Any], caller: str,
                      region: str) -> dict[str, Any]:
        account = data.get("account", DEFAULT_ACCOUNT)
        aliases = [{"AliasName": name, "AliasArn": f"arn:aws:kms:{region}:{account}:{name}",
                    "TargetKeyId": key_id} for name, key_id in sorted(data["aliases"].items())]
        if body.get("KeyId"):
            wanted = self._resolve(data, body["KeyId"], region)["id"]
            aliases = [a for a in aliases if a["TargetKeyId"] == wanted]
        return {"Aliases": aliases, "Truncated": False}

    def _describe_key(self, data: dict[str, Any], body: dict[str, Any], caller: str,
                      region: str) -> dict[str, Any]:
        key = self._resolve(data, body.get("KeyId"), region)
        self._authorize(key, caller, "kms:DescribeKey")
        return {"KeyMetadata": self._metadata(key)}

    def _get_key_policy(self, data: dict[str, Any], body: dict[str, Any], caller: str,
                        region: str) -> dict[str, Any]:
        key = self._resolve(data, body.get("KeyId"), region)
        self._authorize(key, caller, "kms:GetKeyPolicy")
        return {"Policy": key["policy"], "PolicyName": "default"}

    def _put_key_policy(self, data: dict[str, Any], body: dict[str, Any], caller: str,
                        region: str) -> dict[str, Any]:
        key = self._resolve(data, body.get("KeyId"), region)
        if body.get("PolicyName", "default") != "default":
            raise KmsFault("ValidationException", "PolicyName must be default")
        self._authorize(key, caller, "kms:PutKeyPolicy")
        policy = body.get("Policy")
        _parse_policy(policy)
        key["policy"] = policy
        return {}

    def _generate_data_key(self, data: dict[str, Any], body: dict[str, Any], caller: str,
                           region: str) -> dict[str, Any]:
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

    def _encrypt(self, data: dict[str, Any], body: dict[str, Any], caller: str,
                 region: str) -> dict[str, Any]:
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

    def _decrypt(self, data: dict[str, Any], body: dict[str, Any], caller: str,
                 region: str) -> dict[str, Any]:
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
