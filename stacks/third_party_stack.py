"""ThirdPartyStack (third party account): the enclave key, the source repository, the pipeline."""

from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_s3 as s3

from constructs import Construct
from constructs.enclave_key import EnclaveKey, MeasurementKeeper
from constructs.sealing_pipeline import SealingPipeline
from constructs.source_repository import SourceRepository
from constructs.template_checks import acknowledge_checkov, acknowledge_custom_resource_function
from stacks.config import Config


class ThirdPartyStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, *, config: Config,
                 **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.config = config
        self.enclave_key = EnclaveKey(
            self, "EnclaveKey",
            alias_name=config.enclave_key_alias,
            administrator_account=config.third_party_account,
            host_principal_arn=config.host_role_arn,
            app_id=config.app_id,
            allowed_measurements=config.allowed_measurements,
            allowed_signer_pcr8=config.allow_pcr8,
            measurements_to_keep=config.measurements_to_keep,
        )
        # CodeCommit (created and seeded, or imported) unless a CodeConnections source is given.
        self.source = None if config.source_connection_arn else SourceRepository(
            self, "SourceRepository",
            repository_name=config.repository_name,
            app_directory=config.app_directory,
            app_id=config.app_id,
            use_existing=config.use_existing_repository,
        )
        self.pipeline = SealingPipeline(
            self, "SealingPipeline",
            repository=self.source.repository if self.source else None,
            connection_arn=config.source_connection_arn,
            connection_repository=config.source_repository,
            branch=config.source_branch,
            enclave_key=self.enclave_key.key,
            app_directory=config.app_directory,
            app_id=config.app_id,
            host_account=config.host_account,
            host_bucket_name=config.host_bucket_name,
            host_bucket_key_arn=config.host_bucket_key_arn,
            encrypted_app_prefix=config.encrypted_app_prefix,
            enclave_image_prefix=config.enclave_image_prefix,
            measurements_to_keep=config.measurements_to_keep,
            measurement_record_parameter=self.enclave_key.record_parameter_name,
            enclave_port=config.enclave_port,
            vsock_proxy_port=config.vsock_proxy_port,
            minimum_app_version=config.minimum_app_version,
        )
        # Runs after every deploy that rewrote the key policy; see docs/deploy-third-party.md.
        self.measurement_keeper = MeasurementKeeper(
            self, "MeasurementKeeper",
            key=self.enclave_key.key,
            record_parameter_name=self.enclave_key.record_parameter_name,
            keep=config.measurements_to_keep,
            log_encryption_key=self.pipeline.encryption_key,
        )
        self._acknowledge_findings()

        cdk.CfnOutput(self, "EnclaveKeyArn", value=self.enclave_key.key.key_arn,
                      description="Give this to the host (context EnclaveKeyArn)")
        cdk.CfnOutput(self, "EnclaveKeyAlias", value=self.enclave_key.alias.alias_name)
        if self.source:
            cdk.CfnOutput(self, "RepositoryCloneUrlGrc",
                          value=self.source.repository.repository_clone_url_grc)
        else:
            cdk.CfnOutput(self, "SourceRepository", value=config.source_repository or "",
                          description="Connected repository the pipeline builds from")
        cdk.CfnOutput(self, "PipelineName", value=self.pipeline.pipeline.pipeline_name)
        cdk.CfnOutput(self, "MeasurementRecordParameter",
                      value=self.enclave_key.record_parameter_name)

    def _acknowledge_findings(self) -> None:
        """The few cdk-nag findings this stack accepts, each on one resource, with the reason."""
        sealing = self.pipeline
        artifacts_unlogged = ("Pipeline artifacts are transient source snapshots (expire after "
                              "30 days) read only by this pipeline's roles; CloudTrail records "
                              "their access.")
        _resource(sealing.artifact_bucket).acknowledge(cdk.Acknowledgment(
            id="AwsSolutions-S1", reason=artifacts_unlogged))
        acknowledge_checkov(sealing.artifact_bucket, "CKV_AWS_18", artifacts_unlogged)
        acknowledge_custom_resource_function(
            self.measurement_keeper.function,
            "The measurement keeper re-merges recorded measurements after a deploy")
        for role, prefix in ((sealing.encryptor_role, self.config.encrypted_app_prefix),
                             (sealing.image_builder_role, self.config.enclave_image_prefix)):
            _resource(role).acknowledge(cdk.Acknowledgment(
                id="AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::"
                   f"{self.config.host_bucket_name}/{prefix}*]",
                reason="Uploads go to build-named objects under the one agreed prefix of the "
                       "host's bucket; the host's bucket policy enforces the same prefix."))
        cfn_artifact_bucket = sealing.artifact_bucket.node.default_child
        assert isinstance(cfn_artifact_bucket, s3.CfnBucket), sealing.artifact_bucket.node.path
        artifact_objects = ("AwsSolutions-IAM5[Resource::<"
                            f"{self.get_logical_id(cfn_artifact_bucket)}.Arn>/*]")
        for runtime in sealing.runtime_policies:
            _resource(runtime).acknowledge(cdk.Acknowledgment(
                id=artifact_objects,
                reason="A build reads the source artifact CodePipeline names at run time, "
                       "anywhere in this pipeline's own artifact bucket (read only)."))
        pipeline_grants = {
            "Action::s3:Abort*": "abort its own multipart artifact uploads",
            "Action::s3:DeleteObject*": "replace its own artifacts",
            "Action::s3:GetBucket*": "locate its own artifact bucket",
            "Action::s3:GetObject*": "read its own artifacts and their versions",
            "Action::s3:List*": "list its own artifact bucket",
            "Action::kms:GenerateDataKey*": "encrypt artifacts with the artifact key",
            "Action::kms:ReEncrypt*": "re-encrypt artifacts under the artifact key",
            artifact_objects[len("AwsSolutions-IAM5["):-1]: "write artifacts under any execution",
        }
        for policy in sealing.pipeline_policies:
            for finding, purpose in pipeline_grants.items():
                _resource(policy).acknowledge(cdk.Acknowledgment(
                    id=f"AwsSolutions-IAM5[{finding}]",
                    reason=f"CodePipeline's generated grant lets the pipeline {purpose}; it is "
                           "scoped to this pipeline's artifact bucket and key."))


def _resource(construct: Construct) -> cdk.Validations:
    """Validations of the one CloudFormation resource behind `construct`, so that an
    acknowledgement never reaches a sibling (a bucket's policy, a role's default policy)."""
    child = construct.node.default_child
    assert isinstance(child, cdk.CfnResource), construct.node.path
    return cdk.Validations.of(child)
