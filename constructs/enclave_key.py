"""EnclaveKey: the Third Party's KMS key that releases data keys only to allowed enclave images.

Key policy statements (Sids are stable: `pipeline/allowlist.py` finds its lists by them):

- `EnableKeyAdministration`: the third party account (root, hence its IAM policies) administers
  and uses the key.
- `AllowAttestedEnclaveDecrypt`: the host role may `kms:Decrypt` only with an allowed
  `kms:RecipientAttestation:ImageSha384` (and PCR8 when pinned) and
  `kms:EncryptionContext:app_id` equal to the app id.
- `DenyDecryptWithoutAttestation`: the host role may not Decrypt without an attestation document
  (the parent instance itself, or anyone holding the role's credentials).
- `DenyDecryptUnlistedImage`: the host role may not Decrypt from an image not on the list
  (debug-mode enclaves attest with all-zero PCRs, which no list may hold).
- `DenyDecryptUnlistedSigner` (only with a pinned signer): nor from an image signed by another
  certificate (PCR8).
- `DenyHostAnyOtherKeyUse`: the host role may do nothing else with the key (no ReEncrypt, which
  would move a data key under a key the host controls without attestation; no grants).

The explicit Denies name the host principal, so no Allow (the root statement, a later grant, an
IAM policy in either account) can lift them. While no measurement is allowed the lists hold
`allowlist.PLACEHOLDER`, a non-hex string no attestation can carry: the Allow admits nothing.

A later `cdk deploy` rewrites the policy from the template; `MeasurementKeeper` (same module) then
re-merges the measurements the pipeline recorded (see docs/deploy-third-party.md).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import aws_cdk as cdk
import jsii
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs

from constructs import Construct
from pipeline import allowlist

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def measurement_record_parameter_name(app_id: str) -> str:
    """The SSM parameter the pipeline records added measurements in (outside CloudFormation)."""
    return f"/sealed-enclave/{app_id}/image-measurements"


class EnclaveKey(Construct):
    """KMS key with rotation and alias whose policy pins Decrypt to attested, allowed images.

    Attributes: `key` (kms.Key), `alias` (kms.Alias), `record_parameter_name` (str: where the
    pipeline records what it adds), `measurements_to_keep`. Pair it with a `MeasurementKeeper`
    so that a later deploy does not drop what the pipeline added.
    """

    def __init__(self, scope: Construct, construct_id: str, *, alias_name: str,
                 administrator_account: str, host_principal_arn: str, app_id: str,
                 allowed_measurements: Sequence[str] = (), allowed_signer_pcr8: str | None = None,
                 measurements_to_keep: int = 3) -> None:
        super().__init__(scope, construct_id)
        measurements = [allowlist.validate_measurement(m, "allowed measurement")
                        for m in allowed_measurements]
        if len(set(measurements)) != len(measurements):
            raise ValueError("allowed_measurements lists a measurement twice: expected each once")
        signer = (allowlist.validate_measurement(allowed_signer_pcr8, "allowed signer PCR8")
                  if allowed_signer_pcr8 else None)
        if measurements_to_keep < 1:
            raise ValueError(f"measurements_to_keep={measurements_to_keep}: expected at least 1")
        # The template keeps the newest N too, so the pipeline's first edit does not surprise.
        measurements = measurements[-measurements_to_keep:]
        self.record_parameter_name = measurement_record_parameter_name(app_id)

        self.key = kms.Key(
            self, "Key",
            description=f"Seals the {app_id} application for attested Nitro Enclaves",
            enable_key_rotation=True,
            removal_policy=cdk.RemovalPolicy.RETAIN,
            policy=key_policy(administrator_account=administrator_account,
                              host_principal_arn=host_principal_arn, app_id=app_id,
                              measurements=measurements, signer_pcr8=signer),
        )
        self.alias = self.key.add_alias(alias_name)
        self.measurements_to_keep = measurements_to_keep


def key_policy(*, administrator_account: str, host_principal_arn: str, app_id: str,
               measurements: Sequence[str], signer_pcr8: str | None) -> iam.PolicyDocument:
    host = iam.ArnPrincipal(host_principal_arn)
    images = list(measurements) or [allowlist.PLACEHOLDER]
    # Measurements under the operators of the KMS Developer Guide's Nitro Enclaves examples
    # (IgnoreCase: a hex digest's case carries no meaning); the app id is compared exactly.
    attestation: dict[str, object] = {allowlist.IMAGE_KEY: images}
    if signer_pcr8:
        attestation[allowlist.PCR8_KEY] = [signer_pcr8]
    equal, not_equal = allowlist.ALLOW_OPERATORS[0], allowlist.DENY_OPERATORS[0]
    statements = [
        iam.PolicyStatement(
            sid=allowlist.ADMIN_SID,
            principals=[iam.AccountPrincipal(administrator_account)],
            actions=["kms:*"], resources=["*"]),
        iam.PolicyStatement(
            sid=allowlist.ALLOW_SID, principals=[host], actions=["kms:Decrypt"], resources=["*"],
            conditions={equal: attestation,
                        "StringEquals": {allowlist.APP_ID_KEY: app_id}}),
        # Without an attestation document there is no ImageSha384 key: this is the parent
        # instance (or anything else holding the role's credentials) asking for plaintext.
        iam.PolicyStatement(
            sid=allowlist.DENY_NO_ATTESTATION_SID, effect=iam.Effect.DENY, principals=[host],
            actions=["kms:Decrypt"], resources=["*"],
            conditions={"Null": {allowlist.IMAGE_KEY: "true"}}),
        # Debug-mode enclaves attest with all-zero PCRs, which no list may contain.
        iam.PolicyStatement(
            sid=allowlist.DENY_UNLISTED_IMAGE_SID, effect=iam.Effect.DENY, principals=[host],
            actions=["kms:Decrypt"], resources=["*"],
            conditions={not_equal: {allowlist.IMAGE_KEY: list(images)}}),
    ]
    # ReEncrypt, GenerateDataKey, CreateGrant... carry no attestation: none is for the host.
    statements.append(iam.PolicyStatement(
        sid=allowlist.DENY_OTHER_USE_SID, effect=iam.Effect.DENY, principals=[host],
        not_actions=["kms:Decrypt"], resources=["*"]))
    if signer_pcr8:
        statements.append(iam.PolicyStatement(
            sid=allowlist.DENY_UNLISTED_SIGNER_SID, effect=iam.Effect.DENY, principals=[host],
            actions=["kms:Decrypt"], resources=["*"],
            conditions={not_equal: {allowlist.PCR8_KEY: [signer_pcr8]}}))
    return iam.PolicyDocument(statements=statements)


def _stage_handler_code() -> str:
    """Copy the allow-list package into a fresh directory for the Lambda asset.

    The asset holds `pipeline/allowlist.py` itself, so the deploy-time merge and the pipeline's
    edit run the very same code; the asset hash follows the file contents.
    """
    staging = Path(tempfile.mkdtemp(prefix="enclave-key-keeper-"))
    # CDK copies the asset into the cloud assembly during synth; the copy is ours to remove.
    atexit.register(shutil.rmtree, staging, ignore_errors=True)
    (staging / "pipeline").mkdir()
    for name in ("__init__.py", "allowlist.py", "measurement_resource.py"):
        shutil.copyfile(PROJECT_ROOT / "pipeline" / name, staging / "pipeline" / name)
    return str(staging)


@jsii.implements(cdk.IStableStringProducer)
class _PolicyDigest:
    """SHA-256 of the key's resolved template policy, computed at synth time (lazily, so
    statements added to the key after the keeper was built still count)."""

    def __init__(self, stack: cdk.Stack, cfn_key: kms.CfnKey) -> None:
        self._stack = stack
        self._cfn_key = cfn_key

    def produce(self) -> str:
        text = json.dumps(self._stack.resolve(self._cfn_key.key_policy), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


class MeasurementKeeper(Construct):
    """Custom resource that re-merges pipeline-recorded measurements after CloudFormation.

    It depends on the key and carries a digest of the key's template policy, so it runs (after
    the key) exactly when a deploy rewrote that policy, and on the first deploy.
    """

    def __init__(self, scope: Construct, construct_id: str, *, key: kms.Key,
                 record_parameter_name: str, keep: int,
                 log_encryption_key: kms.IKey | None = None) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        parameter_arn = stack.format_arn(service="ssm", resource="parameter",
                                         resource_name=record_parameter_name.lstrip("/"))
        self.log_group = logs.LogGroup(self, "Logs", retention=logs.RetentionDays.ONE_YEAR,
                                       encryption_key=log_encryption_key,
                                       removal_policy=cdk.RemovalPolicy.DESTROY)
        self.role = iam.Role(
            self, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="Re-merges recorded enclave image measurements into the key policy",
            inline_policies={"MergeMeasurements": iam.PolicyDocument(statements=[
                iam.PolicyStatement(actions=["kms:GetKeyPolicy", "kms:PutKeyPolicy"],
                                    resources=[key.key_arn]),
                iam.PolicyStatement(actions=["ssm:GetParameter"], resources=[parameter_arn]),
                iam.PolicyStatement(actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                                    resources=[self.log_group.log_group_arn]),
            ])})
        self.function = lambda_.Function(
            self, "Function",
            runtime=lambda_.Runtime.PYTHON_3_14,
            architecture=lambda_.Architecture.ARM_64,
            handler="pipeline.measurement_resource.handler",
            code=lambda_.Code.from_asset(_stage_handler_code()),
            role=self.role, log_group=self.log_group,
            timeout=cdk.Duration.minutes(1), memory_size=256,
            description="Keeps pipeline-added enclave measurements across cdk deploy",
        )
        cfn_key = key.node.default_child
        assert isinstance(cfn_key, kms.CfnKey)

        digest = _PolicyDigest(stack, cfn_key)
        self.resource = cdk.CustomResource(
            self, "Resource", service_token=self.function.function_arn,
            resource_type="Custom::EnclaveMeasurementKeeper",
            properties={
                "KeyId": key.key_arn,
                "RecordParameter": record_parameter_name,
                "Keep": str(keep),
                "TemplatePolicyDigest": cdk.Lazy.string(digest),
            })
