"""The host's sharing bucket: where the Third Party uploads sealed apps and enclave images.

The Third Party may only add objects under the agreed prefixes, only encrypted under this
bucket's own key, and may use that key only through S3 in this region. Everything it uploads
is therefore readable by the host account and by nobody the host account did not allow.
"""

from __future__ import annotations

from collections.abc import Sequence

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3

from constructs import Construct
from constructs.template_checks import acknowledge_checkov

THIRD_PARTY_SID = "EnableThirdPartyAccess"
THIRD_PARTY_PARTS_SID = "EnableThirdPartyMultipartParts"
THIRD_PARTY_KEY_SID = "AllowThirdPartyUploadsThroughS3"
JOBS_PREFIX = "jobs/"
RESULTS_PREFIX = "results/"


class SharingBucket(Construct):
    """Host CMK + SSE-KMS bucket + access-log bucket, with the third party's narrow upload grant.

    Attributes: `key` (the CMK), `alias`, `bucket`, `access_log_bucket`, `upload_prefixes`.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        bucket_name: str,
        third_party_account: str,
        upload_prefixes: Sequence[str],
        key_alias: str,
        noncurrent_version_expiration: cdk.Duration | None = None,
        access_log_expiration: cdk.Duration | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        if not upload_prefixes:
            raise ValueError("SharingBucket needs at least one upload prefix, such as "
                             "'encrypted-apps/'; got none")
        for prefix in upload_prefixes:
            if not prefix.endswith("/") or prefix.startswith("/") or "*" in prefix:
                raise ValueError(f"upload prefix {prefix!r} is invalid: expected a key prefix "
                                 "ending in '/' with no leading '/' and no '*'")
        self.upload_prefixes = tuple(upload_prefixes)
        stack = cdk.Stack.of(self)
        # Built from the fixed name rather than `bucket.bucket_arn`: the key policy must not
        # depend on the bucket, which already depends on the key (a cycle otherwise).
        bucket_arn = f"arn:{stack.partition}:s3:::{bucket_name}"

        self.key = kms.Key(
            self, "Key",
            description=f"Encrypts the sharing bucket {bucket_name}",
            enable_key_rotation=True,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        self.alias = self.key.add_alias(key_alias)
        # The third party can use this key only as S3 uses it on its behalf, in this region, for
        # this bucket: it can neither call KMS directly nor encrypt anything elsewhere with it.
        # Decrypt is needed because S3 reads the earlier parts back to complete a multipart upload
        # (large enclave images); the bucket policy gives the third party no GetObject, so this
        # cannot be used to read objects.
        self.key.add_to_resource_policy(iam.PolicyStatement(
            sid=THIRD_PARTY_KEY_SID,
            principals=[iam.AccountPrincipal(third_party_account)],
            actions=["kms:GenerateDataKey", "kms:Decrypt"],
            resources=["*"],
            conditions={
                "StringEquals": {
                    "kms:ViaService": f"s3.{stack.region}.amazonaws.com",
                    "kms:CallerAccount": third_party_account,
                },
                # With a bucket key the context is the bucket ARN, without one the object ARN.
                "StringLike": {"kms:EncryptionContext:aws:s3:arn": [bucket_arn, f"{bucket_arn}/*"]},
            },
        ))

        # Server access logs cannot be delivered to an SSE-KMS bucket: SSE-S3 here.
        self.access_log_bucket = s3.Bucket(
            self, "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            enforce_ssl=True,
            versioned=False,
            removal_policy=cdk.RemovalPolicy.RETAIN,
            lifecycle_rules=[s3.LifecycleRule(
                id="ExpireAccessLogs",
                expiration=access_log_expiration or cdk.Duration.days(365),
            )],
        )
        cdk.Validations.of(self.access_log_bucket).acknowledge(cdk.Acknowledgment(
            id="AwsSolutions-S1",
            reason="This bucket is the destination of the sharing bucket's server access logs; "
                   "logging it too would need a third bucket and add nothing an auditor uses.",
        ))
        acknowledge_checkov(
            self.access_log_bucket, "CKV_AWS_18",
            "This bucket is the destination of the sharing bucket's server access logs; "
            "logging it too would need a third bucket and add nothing an auditor uses.")
        acknowledge_checkov(
            self.access_log_bucket, "CKV_AWS_21",
            "Only S3's log delivery writes here, each log object once under a new name, and "
            "nothing overwrites or deletes them before the lifecycle expiry; versions would "
            "keep nothing more.")

        self.bucket = s3.Bucket(
            self, "Bucket",
            # The third party types this name into its pipeline configuration.
            bucket_name=bucket_name,
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.key,
            bucket_key_enabled=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            server_access_logs_bucket=self.access_log_bucket,
            server_access_logs_prefix=f"{bucket_name}/",
            removal_policy=cdk.RemovalPolicy.RETAIN,
            lifecycle_rules=[s3.LifecycleRule(
                id="ExpireNoncurrentVersions",
                noncurrent_version_expiration=(noncurrent_version_expiration
                                               or cdk.Duration.days(90)),
                abort_incomplete_multipart_upload_after=cdk.Duration.days(7),
            )],
        )

        third_party = iam.AccountPrincipal(third_party_account)
        upload_arns = [f"{bucket_arn}/{prefix}*" for prefix in self.upload_prefixes]
        # Uploads that name an encryption must name SSE-KMS under exactly this key, so the host
        # can always read what it receives and the third party cannot revoke it later.
        self.bucket.add_to_resource_policy(iam.PolicyStatement(
            sid=THIRD_PARTY_SID,
            principals=[third_party],
            actions=["s3:PutObject"],
            resources=upload_arns,
            conditions={"StringEquals": {
                "s3:x-amz-server-side-encryption": "aws:kms",
                "s3:x-amz-server-side-encryption-aws-kms-key-id": self.key.key_arn,
            }},
        ))
        # UploadPart and CompleteMultipartUpload carry no encryption header (the upload keeps
        # the encryption chosen at CreateMultipartUpload, which the statement above checked), so
        # they can only match a statement that requires the headers to be absent. A single PUT
        # with no header at all also lands here and gets the bucket default: this same key.
        # SSE-C headers are refused so no object can be sealed with a key the host lacks.
        self.bucket.add_to_resource_policy(iam.PolicyStatement(
            sid=THIRD_PARTY_PARTS_SID,
            principals=[third_party],
            actions=["s3:PutObject"],
            resources=upload_arns,
            conditions={"Null": {
                "s3:x-amz-server-side-encryption": "true",
                "s3:x-amz-server-side-encryption-aws-kms-key-id": "true",
                "s3:x-amz-server-side-encryption-customer-algorithm": "true",
            }},
        ))

    def grant_read_uploads(self, grantee: iam.IGrantable) -> None:
        """Let `grantee` list the bucket and read (and decrypt, via S3 only) the uploads."""
        stack = cdk.Stack.of(self)
        grantee.grant_principal.add_to_principal_policy(iam.PolicyStatement(
            actions=["s3:ListBucket"],
            resources=[self.bucket.bucket_arn],
        ))
        grantee.grant_principal.add_to_principal_policy(iam.PolicyStatement(
            actions=["s3:GetObject"],
            resources=[self.bucket.arn_for_objects(f"{prefix}*")
                       for prefix in self.upload_prefixes],
        ))
        if isinstance(grantee, Construct):
            # The only wildcards: "every object under an upload prefix" is what reading uploads
            # means, and the prefixes are the ones the third party may write to.
            cfn_bucket = self.bucket.node.default_child
            assert isinstance(cfn_bucket, s3.CfnBucket), self.bucket.node.path
            bucket_id = stack.get_logical_id(cfn_bucket)
            for prefix in self.upload_prefixes:
                cdk.Validations.of(grantee).acknowledge(cdk.Acknowledgment(
                    id=f"AwsSolutions-IAM5[Resource::<{bucket_id}.Arn>/{prefix}*]",
                    reason=f"Reads the third party's uploads: every object under '{prefix}' in "
                           "the sharing bucket, and nothing else in it.",
                ))
        # Decrypt only as S3 serves an object: the key cannot be used directly.
        grantee.grant_principal.add_to_principal_policy(iam.PolicyStatement(
            actions=["kms:Decrypt"],
            resources=[self.key.key_arn],
            conditions={"StringEquals": {"kms:ViaService": f"s3.{stack.region}.amazonaws.com"}},
        ))

    def grant_job_files(self, grantee: iam.IGrantable) -> None:
        """What a fleet agent needs of the bucket: read jobs and their inputs under `jobs/`,
        write results under `results/`, check whether a job's receipt is committed, and remove
        only its own attempt's uploads when another attempt committed first."""
        stack = cdk.Stack.of(self)
        bucket = self.bucket
        grants = {
            "s3:GetObject": [f"{JOBS_PREFIX}*", f"{RESULTS_PREFIX}*/receipt.json"],
            "s3:PutObject": [f"{RESULTS_PREFIX}*"],
            "s3:DeleteObject": [f"{RESULTS_PREFIX}*/attempts/*"],
        }
        for action, patterns in grants.items():
            grantee.grant_principal.add_to_principal_policy(iam.PolicyStatement(
                actions=[action], resources=[bucket.arn_for_objects(p) for p in patterns]))
        # Writes under SSE-KMS need a data key; only as S3 asks for one.
        grantee.grant_principal.add_to_principal_policy(iam.PolicyStatement(
            actions=["kms:GenerateDataKey"],
            resources=[self.key.key_arn],
            conditions={"StringEquals": {"kms:ViaService": f"s3.{stack.region}.amazonaws.com"}},
        ))
        if isinstance(grantee, Construct):
            cfn_bucket = bucket.node.default_child
            assert isinstance(cfn_bucket, s3.CfnBucket), bucket.node.path
            bucket_id = stack.get_logical_id(cfn_bucket)
            for pattern, reason in (
                (f"{JOBS_PREFIX}*", "Reads jobs and their inputs: every object under 'jobs/'."),
                (f"{RESULTS_PREFIX}*", "Writes job results: objects under 'results/' only."),
                (f"{RESULTS_PREFIX}*/receipt.json",
                 "Checks whether a job's result is committed: each job's receipt.json only."),
                (f"{RESULTS_PREFIX}*/attempts/*",
                 "Removes an attempt's uploads after another attempt committed first: "
                 "objects under results/<job>/attempts/ only."),
            ):
                cdk.Validations.of(grantee).acknowledge(cdk.Acknowledgment(
                    id=f"AwsSolutions-IAM5[Resource::<{bucket_id}.Arn>/{pattern}]",
                    reason=reason + " Job ids are chosen at submission, so no narrower ARN exists.",
                ))
