"""SealingPipeline: on every commit to `main`, seal the application and build the enclave image.

CodePipeline V2 with a CodeCommit source (an EventBridge rule on the branch starts it), or a
CodeConnections source (GitHub, GitLab, Bitbucket; a push to the branch starts it), and two
CodeBuild actions running side by side, named as in the runbook:

- `application-encryptor` seals `src/<app>` under the enclave key and uploads the bundle to the
  host's bucket (SSE-KMS under the host key, expected bucket owner).
- `nitro-image-builder` (arm64, the only privileged project: docker needs it) builds the EIF,
  allows its PCR0 on the enclave key, records it for later deploys, and uploads EIF and
  measurements next to it.

Build specs live in `pipeline/buildspecs/*.yml` and are embedded in the projects; every value they
use arrives as an environment variable. Each build has its own role with only what its commands
call; logs, project artifacts and the pipeline's artifact bucket are encrypted with one rotating
key of this construct.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aws_cdk as cdk
import yaml
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_codecommit as codecommit
from aws_cdk import aws_codepipeline as codepipeline
from aws_cdk import aws_codepipeline_actions as actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3

from constructs import Construct

BUILDSPEC_DIR = Path(__file__).resolve().parent.parent / "pipeline" / "buildspecs"
ENCRYPTOR_NAME = "application-encryptor"
IMAGE_BUILDER_NAME = "nitro-image-builder"
BUILD_IMAGE = codebuild.LinuxArmBuildImage.AMAZON_LINUX_2023_STANDARD_3_0


def load_buildspec(name: str) -> dict[str, Any]:
    """The build spec `pipeline/buildspecs/<name>.yml` as a mapping."""
    path = BUILDSPEC_DIR / f"{name}.yml"
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(spec, dict) or "phases" not in spec:
        raise ValueError(f"{path} is not a CodeBuild build spec: expected a mapping with phases")
    return spec


class SealingPipeline(Construct):
    """Attributes: `pipeline`, `encryptor_project`, `image_builder_project`, `artifact_bucket`,
    `encryption_key`, `encryptor_role`, `image_builder_role`."""

    def __init__(self, scope: Construct, construct_id: str, *,
                 repository: codecommit.IRepository | None, enclave_key: kms.IKey,
                 app_directory: str,
                 app_id: str, host_account: str, host_bucket_name: str, host_bucket_key_arn: str,
                 encrypted_app_prefix: str, enclave_image_prefix: str, measurements_to_keep: int,
                 measurement_record_parameter: str, branch: str = "main",
                 enclave_port: int = 5005, vsock_proxy_port: int = 8000,
                 minimum_app_version: str | None = None,
                 connection_arn: str | None = None,
                 connection_repository: str | None = None) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        if (repository is None) == (connection_arn is None) or \
                (connection_arn is None) != (connection_repository is None):
            raise ValueError("SealingPipeline needs one source: a CodeCommit repository, or "
                             "connection_arn with connection_repository ('owner/name')")
        for name, prefix in (("encrypted_app_prefix", encrypted_app_prefix),
                             ("enclave_image_prefix", enclave_image_prefix)):
            if not prefix.endswith("/") or prefix.startswith("/"):
                raise ValueError(f"{name}={prefix!r}: expected a key prefix such as 'x/'")

        self.encryption_key = kms.Key(
            self, "ArtifactKey", enable_key_rotation=True,
            description="Encrypts the sealing pipeline's artifacts and build logs")
        # CloudWatch Logs encrypts with the key only for this account's log groups.
        self.encryption_key.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowCloudWatchLogs",
            principals=[iam.ServicePrincipal(f"logs.{stack.region}.amazonaws.com")],
            actions=["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                     "kms:Describe*"],
            resources=["*"],
            conditions={"ArnLike": {"kms:EncryptionContext:aws:logs:arn":
                                    f"arn:{stack.partition}:logs:{stack.region}:{stack.account}"
                                    ":log-group:*"}}))
        self.artifact_bucket = s3.Bucket(
            self, "ArtifactBucket",
            encryption=s3.BucketEncryption.KMS, encryption_key=self.encryption_key,
            bucket_key_enabled=True, enforce_ssl=True, versioned=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[s3.LifecycleRule(expiration=cdk.Duration.days(30),
                                              noncurrent_version_expiration=cdk.Duration.days(7))],
        )

        host_bucket_arn = f"arn:{stack.partition}:s3:::{host_bucket_name}"
        # Uploads with SSE-KMS under the host key need the key through S3 only; Decrypt too,
        # because S3 reads the data key back to complete a multipart upload.
        def host_key_via_s3() -> iam.PolicyStatement:
            return iam.PolicyStatement(
                actions=["kms:GenerateDataKey", "kms:Decrypt"], resources=[host_bucket_key_arn],
                conditions={"StringEquals": {
                    "kms:ViaService": f"s3.{stack.region}.amazonaws.com"}})

        record_parameter_arn = stack.format_arn(
            service="ssm", resource="parameter",
            resource_name=measurement_record_parameter.lstrip("/"))

        self.encryptor_role = iam.Role(
            self, "EncryptorRole", assumed_by=iam.ServicePrincipal("codebuild.amazonaws.com"),
            description=f"{ENCRYPTOR_NAME}: seal the application and upload it to the host",
            inline_policies={"SealAndUpload": iam.PolicyDocument(statements=[
                # Data keys only for this application's context: a manifest with another app
                # id fails here, at build time, instead of on every host later.
                iam.PolicyStatement(
                    actions=["kms:GenerateDataKey"], resources=[enclave_key.key_arn],
                    conditions={"StringEquals": {"kms:EncryptionContext:app_id": app_id}}),
                iam.PolicyStatement(actions=["s3:PutObject"],
                                    resources=[f"{host_bucket_arn}/{encrypted_app_prefix}*"]),
                host_key_via_s3(),
            ])})
        self.image_builder_role = iam.Role(
            self, "ImageBuilderRole", assumed_by=iam.ServicePrincipal("codebuild.amazonaws.com"),
            description=f"{IMAGE_BUILDER_NAME}: build the EIF, allow it, upload it to the host",
            inline_policies={"AllowImageAndUpload": iam.PolicyDocument(statements=[
                iam.PolicyStatement(actions=["kms:GetKeyPolicy", "kms:PutKeyPolicy"],
                                    resources=[enclave_key.key_arn]),
                iam.PolicyStatement(actions=["ssm:GetParameter", "ssm:PutParameter"],
                                    resources=[record_parameter_arn]),
                iam.PolicyStatement(actions=["s3:PutObject"],
                                    resources=[f"{host_bucket_arn}/{enclave_image_prefix}*"]),
                host_key_via_s3(),
            ])})

        self.runtime_policies: list[iam.Policy] = []
        common_env = {
            "APP_ID": app_id,
            "ENCLAVE_KEY_ARN": enclave_key.key_arn,
            "HOST_ACCOUNT": host_account,
            "HOST_BUCKET": host_bucket_name,
            "HOST_BUCKET_KEY_ARN": host_bucket_key_arn,
        }
        self.encryptor_project = self._project(
            "ApplicationEncryptor", ENCRYPTOR_NAME, role=self.encryptor_role, privileged=False,
            compute_type=codebuild.ComputeType.SMALL,
            environment={**common_env, "APP_DIRECTORY": app_directory,
                         "ENCRYPTED_APP_PREFIX": encrypted_app_prefix})
        self.image_builder_project = self._project(
            "NitroImageBuilder", IMAGE_BUILDER_NAME, role=self.image_builder_role,
            privileged=True, compute_type=codebuild.ComputeType.LARGE,
            environment={**common_env, "ENCLAVE_IMAGE_PREFIX": enclave_image_prefix,
                         # The region whose KMS endpoint the image resolves to the bridge.
                         "ENCLAVE_REGION": stack.region,
                         "MEASUREMENTS_TO_KEEP": str(measurements_to_keep),
                         "MEASUREMENT_RECORD_PARAMETER": measurement_record_parameter,
                         # Baked into the image; the host's settings carry the same two values.
                         "ENCLAVE_PORT": str(enclave_port),
                         "VSOCK_PROXY_PORT": str(vsock_proxy_port),
                         # The image's measured policy refuses bundles older than this ("": any).
                         "MINIMUM_APP_VERSION": minimum_app_version or ""})

        source = codepipeline.Artifact("Source")
        self.pipeline = codepipeline.Pipeline(
            self, "Pipeline",
            pipeline_type=codepipeline.PipelineType.V2,
            artifact_bucket=self.artifact_bucket,
            cross_account_keys=False,
            restart_execution_on_update=False,
            stages=[
                codepipeline.StageProps(stage_name="Source", actions=[
                    self._source_action(source, repository, branch, connection_arn,
                                        connection_repository)]),
                codepipeline.StageProps(stage_name="Build", actions=[
                    actions.CodeBuildAction(action_name=ENCRYPTOR_NAME, input=source,
                                            project=self.encryptor_project),
                    actions.CodeBuildAction(action_name=IMAGE_BUILDER_NAME, input=source,
                                            project=self.image_builder_project),
                ]),
            ],
        )

        if connection_arn and connection_arn.split(":")[2] == "codeconnections":
            # CDK grants codestar-connections:UseConnection; IAM matches the action's service
            # prefix to the resource's, so a codeconnections ARN needs the renamed action.
            self._source_role().add_to_principal_policy(iam.PolicyStatement(
                actions=["codeconnections:UseConnection"], resources=[connection_arn]))

    def _source_role(self) -> iam.IRole:
        role = self.pipeline.node.find_child("Source").node.find_child("Source") \
            .node.find_child("CodePipelineActionRole")
        assert isinstance(role, iam.Role), role.node.path
        return role

    @staticmethod
    def _source_action(output: codepipeline.Artifact, repository: codecommit.IRepository | None,
                       branch: str, connection_arn: str | None,
                       connection_repository: str | None) -> codepipeline.IAction:
        if repository is not None:
            return actions.CodeCommitSourceAction(
                action_name="Source", repository=repository, branch=branch, output=output,
                trigger=actions.CodeCommitTrigger.EVENTS)
        # GitHub, GitLab or Bitbucket through CodeConnections; a push to the branch starts it.
        assert connection_arn is not None and connection_repository is not None
        owner, name = connection_repository.rsplit("/", 1)
        return actions.CodeStarConnectionsSourceAction(
            action_name="Source", connection_arn=connection_arn, owner=owner, repo=name,
            branch=branch, output=output, trigger_on_push=True)

    @property
    def pipeline_policies(self) -> list[iam.Policy]:
        """The policies CodePipeline generates for its own role and the source action's role."""
        policies = []
        for role in (self.pipeline.role, self._source_role()):
            policy = role.node.find_child("DefaultPolicy")
            assert isinstance(policy, iam.Policy), role.node.path
            policies.append(policy)
        return policies

    def _project(self, construct_id: str, name: str, *, role: iam.Role, privileged: bool,
                 compute_type: codebuild.ComputeType,
                 environment: dict[str, str]) -> codebuild.PipelineProject:
        log_group = logs.LogGroup(self, f"{construct_id}Logs", encryption_key=self.encryption_key,
                                  retention=logs.RetentionDays.ONE_YEAR,
                                  removal_policy=cdk.RemovalPolicy.RETAIN)
        # The role gets exactly these statements; `without_policy_updates` below stops CDK from
        # adding its defaults (wildcard report groups, a second log group, artifact writes).
        runtime = iam.Policy(self, f"{construct_id}Runtime", statements=[
            iam.PolicyStatement(actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                                resources=[log_group.log_group_arn]),
            iam.PolicyStatement(actions=["s3:GetObject", "s3:GetObjectVersion"],
                                resources=[self.artifact_bucket.arn_for_objects("*")]),
            iam.PolicyStatement(actions=["s3:GetBucketAcl", "s3:GetBucketLocation"],
                                resources=[self.artifact_bucket.bucket_arn]),
            # The project's encryption key is the artifact key: read the source, and encrypt
            # whatever CodeBuild itself stores for the build.
            iam.PolicyStatement(actions=["kms:Decrypt", "kms:GenerateDataKey"],
                                resources=[self.encryption_key.key_arn]),
        ])
        role.attach_inline_policy(runtime)
        self.runtime_policies.append(runtime)
        project = codebuild.PipelineProject(
            self, construct_id,
            project_name=name,
            description=f"Sealing pipeline action {name}",
            role=role.without_policy_updates(),
            build_spec=codebuild.BuildSpec.from_object(load_buildspec(name)),
            encryption_key=self.encryption_key,
            environment=codebuild.BuildEnvironment(
                build_image=BUILD_IMAGE, compute_type=compute_type, privileged=privileged),
            environment_variables={
                key: codebuild.BuildEnvironmentVariable(value=value)
                for key, value in sorted(environment.items())},
            logging=codebuild.LoggingOptions(cloud_watch=codebuild.CloudWatchLoggingOptions(
                log_group=log_group)),
            timeout=cdk.Duration.minutes(60),
        )
        # CodePipeline starts a first run as soon as it exists: the policy must be there by then.
        project.node.add_dependency(runtime)
        return project
