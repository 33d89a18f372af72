"""HostStack (host account): the sharing bucket and the enclave hosts."""

from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2

from constructs import Construct
from constructs.enclave_host import EnclaveHost
from constructs.host_network import HostNetwork
from constructs.job_queue import JobQueue
from constructs.sharing_bucket import SharingBucket
from stacks.config import Config


def host_key_alias(config: Config) -> str:
    """The sharing bucket key's alias: one HostStack per third party, so it carries its name."""
    return f"alias/sealed-enclave-sharing-{config.third_party_name}"


class HostStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, *, config: Config,
                 **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.config = config
        prefixes = (config.encrypted_app_prefix, config.enclave_image_prefix)

        self.sharing = SharingBucket(
            self, "Sharing",
            bucket_name=config.host_bucket_name,
            third_party_account=config.third_party_account,
            upload_prefixes=prefixes,
            key_alias=host_key_alias(config),
        )
        self.jobs = JobQueue(
            self, "Jobs",
            encryption_key=self.sharing.key,
            max_receive_count=config.job_max_receive_count,
        )
        self.network = HostNetwork(
            self, "Network",
            vpc_id=config.vpc_id,
            private_subnet_ids=config.private_subnet_ids,
            availability_zones=config.availability_zones,
            # A created VPC spans every named zone, or the region's first two.
            max_azs=len(config.availability_zones) or 2,
        )
        self.host = EnclaveHost(
            self, "EnclaveHost",
            vpc=self.network.vpc,
            vpc_subnets=self.network.subnets,
            instance_type=ec2.InstanceType(config.instance_type),
            host_count=config.host_count,
            host_count_max=config.host_count_max,
            job_queue_url=self.jobs.queue.queue_url,
            bucket_name=config.host_bucket_name,
            enclave_cpu_count=config.enclave_cpu_count,
            enclave_memory_mib=config.enclave_memory_mib,
            enclave_key_arn=config.enclave_key_arn,
            # Fixed: the third party's enclave key policy names this role.
            role_name=config.host_role_name,
            vsock_proxy_port=config.vsock_proxy_port,
            enclave_port=config.enclave_port,
            host_config={
                "bucket": config.host_bucket_name,
                "encrypted_app_prefix": config.encrypted_app_prefix,
                "enclave_image_prefix": config.enclave_image_prefix,
                "app_id": config.app_id,
            },
        )
        self.sharing.grant_read_uploads(self.host.role)
        self.sharing.grant_job_files(self.host.role)
        self.jobs.grant_consume(self.host.role)
        self.jobs.scale_on_backlog(self.host.auto_scaling_group,
                                   backlog_per_host=config.job_backlog_per_host)
        self.network.allow_endpoints_from(self.host.security_group)

        # Output ids are the names the runbook and the third party's configuration refer to.
        outputs = {
            "BucketName": (self.sharing.bucket.bucket_name, "Sharing bucket (HostBucketName)"),
            "BucketArn": (self.sharing.bucket.bucket_arn, "Sharing bucket ARN"),
            "KeyArn": (self.sharing.key.key_arn,
                       "Sharing bucket key: the third party's HostEncryptionKeyArn"),
            "KeyAlias": (self.sharing.alias.alias_name, "Alias of the sharing bucket key"),
            "AutoScalingGroupName": (self.host.auto_scaling_group.auto_scaling_group_name,
                                     "Enclave hosts' Auto Scaling group"),
            "JobQueueUrl": (self.jobs.queue.queue_url,
                            "Job queue: `sealed-client jobs submit --queue-url`"),
            "DeadLetterQueueUrl": (self.jobs.dead_letter_queue.queue_url,
                                   "Jobs refused JobMaxReceiveCount times"),
            "RoleArn": (self.host.role.role_arn,
                        "Enclave host role: the principal the third party's enclave key trusts"),
        }
        for output_id, (value, description) in outputs.items():
            cdk.CfnOutput(self, output_id, value=value, description=description)

    @property
    def availability_zones(self) -> list[str]:
        """Zones for a created VPC: the configured ones, else the region's first two as
        CloudFormation resolves them (Fn::GetAZs). CDK's default for a stack with an account
        and region is a context lookup, and synth must never call AWS."""
        config: Config | None = getattr(self, "config", None)
        if config is not None and config.availability_zones:
            return list(config.availability_zones)
        return [cdk.Fn.select(index, cdk.Fn.get_azs()) for index in range(2)]
