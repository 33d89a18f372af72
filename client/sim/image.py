"""The simulated image build: the enclave key, the measured image policy, the allow list.

In production the Third Party's pipeline knows its enclave key, writes the image policy into the
image (`python -m enclave.policy write`), builds the EIF and allows its PCR0 on the key
(`python -m pipeline.allowlist add`). `simulate up` plays that part here, against the local KMS:

1. the enclave key: the one given (`--key-arn`), else the key behind the configured alias
   (`EncryptionKeyAlias`, from an earlier `simulate up`), else a new key with the policy taken
   from the synthesized ThirdPartyStack template, and the alias;
2. the image policy pinning that key, the app id(s) and the minimum version;
3. PCR0 of the simulated image, which measures that policy (client/sim/measure.py);
4. that PCR0 added to the key's allow list with the pipeline's own function, as the third party,
   when simulate up made or reused the key (a key given by ARN is left as it is).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.errors import UsageError
from client.sim.template import TemplateError, key_policy_from_template
from enclave.policy import ImagePolicy, PolicyError

ENCLAVE_KEY_LOGICAL_ID = "EnclaveKey"


@dataclass(frozen=True)
class EnclaveKey:
    arn: str
    alias: str | None
    created: bool
    managed: bool  # made or reused by simulate up: its allow list is ours to extend


def kms_client_for(principal: dict[str, str], region: str, endpoint: str) -> Any:
    import boto3

    return boto3.client("kms", region_name=region, endpoint_url=endpoint,
                        aws_access_key_id=principal["access_key_id"],
                        aws_secret_access_key=principal["secret_access_key"],
                        aws_session_token=principal["session_token"])


def ensure_enclave_key(kms: Any, *, key_arn: str | None, alias: str, template: Path,
                       account: str, region: str) -> EnclaveKey:
    if key_arn:
        try:
            arn = kms.describe_key(KeyId=key_arn)["KeyMetadata"]["Arn"]
        except Exception as exc:
            raise UsageError(f"--key-arn {key_arn}: the local KMS has no such key ({exc}); "
                             "omit --key-arn to let simulate up create the enclave key") from exc
        return EnclaveKey(arn, None, created=False, managed=False)
    for entry in kms.list_aliases()["Aliases"]:
        if entry["AliasName"] == alias and entry.get("TargetKeyId"):
            arn = kms.describe_key(KeyId=entry["TargetKeyId"])["KeyMetadata"]["Arn"]
            return EnclaveKey(arn, alias, created=False, managed=True)
    try:
        policy = key_policy_from_template(template, logical_id_prefix=ENCLAVE_KEY_LOGICAL_ID,
                                          account=account, region=region)
    except TemplateError as exc:
        raise UsageError(f"{exc} (the enclave key's policy comes from the synthesized "
                         "ThirdPartyStack; or pass --template PATH)") from exc
    arn = kms.create_key(Policy=json.dumps(policy),
                         Description="enclave key (local simulation)")["KeyMetadata"]["Arn"]
    kms.create_alias(AliasName=alias, TargetKeyId=arn)
    return EnclaveKey(arn, alias, created=True, managed=True)


def image_policy(*, key_arn: str, app_ids: list[str], minimum_app_version: str | None,
                 region: str) -> ImagePolicy:
    try:
        return ImagePolicy(region=region, kms_key_arns=(key_arn,), app_ids=tuple(app_ids),
                           minimum_app_version=minimum_app_version)
    except PolicyError as exc:
        raise UsageError(f"image policy: {exc}") from exc


def allow_measurement(kms: Any, key_arn: str, pcr0: str, keep: int) -> bool:
    """Add PCR0 to the key's allow list with the pipeline's tool; True if the policy changed."""
    from pipeline.allowlist import AllowListError, Measurements, add_to_key

    try:
        changed, _allowed = add_to_key(kms, key_arn, Measurements(pcr0=pcr0), keep=keep)
    except AllowListError as exc:
        raise UsageError(f"cannot allow the simulated image on {key_arn}: {exc}") from exc
    return changed
