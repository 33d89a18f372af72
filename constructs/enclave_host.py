"""The enclave hosts: a launch template plus an Auto Scaling group of Nitro Enclaves parents.

Each host is a Graviton instance on the latest Amazon Linux 2023 (arm64), enclaves enabled,
IMDSv2 only, encrypted volumes, no inbound rule, reached through Session Manager. Its user data
(rendered from `templates/enclave_host_user_data.sh`) sizes the enclave allocator, limits
vsock-proxy to this region's KMS endpoint and installs the project's client package (its wheel
and hashed dependencies, `constructs/client_package.py`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3_assets as s3_assets

from constructs import Construct
from constructs.client_package import HOST_REQUIREMENTS, build_client_wheel

PROJECT_ROOT = Path(__file__).resolve().parent.parent
USER_DATA_TEMPLATE = Path(__file__).resolve().parent / "templates" / "enclave_host_user_data.sh"
# Resolved by CloudFormation at deploy time from the public SSM parameter: synth never calls
# AWS, and every deployment picks up the newest AL2023 arm64 image.
AL2023_ARM64_AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64"
NO_ENCLAVE_KEY_WARNING_ID = "sealed-enclave:EnclaveKeyArnMissing"

_PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")


def render_template(template: str, values: Mapping[str, str]) -> str:
    """Replace every `{{name}}` in `template`; the names used and given must match exactly."""
    wanted = set(_PLACEHOLDER.findall(template))
    missing, unused = wanted - set(values), set(values) - wanted
    if missing or unused:
        raise ValueError(f"user data template and values disagree: placeholders without a value "
                         f"{sorted(missing)}, values without a placeholder {sorted(unused)}")
    # One pass, so a value that happens to contain braces is never re-read as a placeholder.
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def render_user_data(
    *,
    region: str,
    enclave_cpu_count: int,
    enclave_memory_mib: int,
    host_config: Mapping[str, Any],
    client_wheel_url: str,
    client_wheel_file: str,
    client_wheel_sha256: str,
    host_requirements_url: str,
    job_queue_url: str = "",
    bucket: str = "",
    template: str | None = None,
) -> str:
    """The host's bootstrap script. Pure: tests call it with plain strings for the asset URLs."""
    text = template if template is not None else USER_DATA_TEMPLATE.read_text()
    return render_template(text, {
        "region": region,
        "memory_mib": str(int(enclave_memory_mib)),
        "cpu_count": str(int(enclave_cpu_count)),
        "kms_endpoint": kms_endpoint(region),
        "host_json": json.dumps(dict(host_config), indent=2, sort_keys=True),
        "client_wheel_url": client_wheel_url,
        "client_wheel_file": client_wheel_file,
        "client_wheel_hash": client_wheel_sha256,
        "host_requirements_url": host_requirements_url,
        "job_queue_url": job_queue_url,
        "bucket": bucket,
    })


def kms_endpoint(region: str) -> str:
    # The standard endpoint only: the FIPS one is added only by whoever needs it, as the enclave
    # runtime would also have to be pointed at it.
    return f"kms.{region}.amazonaws.com"


class EnclaveHost(Construct):
    """Attributes: `role`, `security_group`, `launch_template`, `auto_scaling_group`,
    `user_data_script` (the rendered text, tokens included), `assets`."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc,
        instance_type: ec2.InstanceType,
        host_count: int,
        enclave_cpu_count: int,
        enclave_memory_mib: int,
        enclave_key_arn: str | None,
        role_name: str | None = None,
        vpc_subnets: ec2.SubnetSelection | None = None,
        vsock_proxy_port: int = 8000,
        enclave_port: int = 5005,
        host_config: Mapping[str, Any] | None = None,
        root_volume_gib: int = 30,
        machine_image: ec2.IMachineImage | None = None,
        host_count_max: int | None = None,
        job_queue_url: str | None = None,
        bucket_name: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        if host_count < 0:
            raise ValueError(f"host_count={host_count} is invalid: expected 0 or more")
        host_count_max = host_count if host_count_max is None else host_count_max
        if host_count_max < max(host_count, 1):
            raise ValueError(f"host_count_max={host_count_max} is invalid: expected at least "
                             f"host_count ({host_count}) and at least 1")
        if enclave_cpu_count < 2 or enclave_cpu_count % 2:
            raise ValueError(f"enclave_cpu_count={enclave_cpu_count} is invalid: expected an even "
                             "number of 2 or more (enclaves take whole cores)")
        if enclave_memory_mib < 64:
            raise ValueError(f"enclave_memory_mib={enclave_memory_mib} is invalid: expected at "
                             "least 64 (and at least 4 x the enclave image size)")
        region = cdk.Stack.of(self).region

        self.role = iam.Role(
            self, "Role",
            role_name=role_name,
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="Enclave host: reads the sharing bucket; decrypts only with the third "
                        "party's enclave key, whose policy admits only attested enclaves",
            managed_policies=[
                iam.ManagedPolicy.from_aws_managed_policy_name("AmazonSSMManagedInstanceCore"),
            ],
        )
        cdk.Validations.of(self.role).acknowledge(cdk.Acknowledgment(
            id="AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/"
               "AmazonSSMManagedInstanceCore]",
            reason="Session Manager is the hosts' only way in (no SSH, no inbound rule); AWS "
                   "maintains this policy's minimal SSM agent permissions as the agent changes.",
        ))
        if enclave_key_arn:
            # The enclave's KMS calls are signed with this role's credentials; the third party's
            # key policy releases the data key only to an attested enclave with an allowed
            # measurement, so the parent instance itself cannot use this grant to decrypt.
            self.role.add_to_policy(iam.PolicyStatement(
                sid="DecryptWithEnclaveKeyOnly",
                actions=["kms:Decrypt"],
                resources=[enclave_key_arn],
            ))
        else:
            cdk.Annotations.of(self).add_warning_v2(
                NO_ENCLAVE_KEY_WARNING_ID,
                "EnclaveKeyArn is not set, so the host role gets no kms:Decrypt and enclaves "
                "cannot unseal applications. Deploy ThirdPartyStack (or ask the third party for "
                "its enclave key ARN), then redeploy with -c EnclaveKeyArn=arn:aws:kms:<region>:"
                "<third-party-account>:key/<id>.")

        # The client package and its hashed dependencies, each one file uploaded as is.
        wheel = build_client_wheel()
        self.assets = {
            "wheel": s3_assets.Asset(self, "ClientWheel", path=str(wheel.path)),
            "requirements": s3_assets.Asset(self, "ClientRequirements",
                                            path=str(HOST_REQUIREMENTS)),
        }
        # Exactly these two objects of the CDK assets bucket: no wildcard.
        self.role.add_to_policy(iam.PolicyStatement(
            sid="ReadClientAssets",
            actions=["s3:GetObject"],
            resources=[f"arn:{cdk.Aws.PARTITION}:s3:::{asset.s3_bucket_name}/{asset.s3_object_key}"
                       for asset in self.assets.values()],
        ))

        self.security_group = ec2.SecurityGroup(
            self, "SecurityGroup",
            vpc=vpc,
            description="Enclave host: no inbound rule (Session Manager only); HTTPS out",
            allow_all_outbound=False,
        )
        # HTTPS is the only egress the host needs: AWS endpoints, package repositories, PyPI.
        # DNS, NTP and IMDS go to link-local or VPC resolver addresses security groups ignore.
        self.security_group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443),
                                            "HTTPS to AWS endpoints and package repositories")

        settings = {
            "region": region,
            "kms_endpoint": kms_endpoint(region),
            "enclave_key_arn": enclave_key_arn,
            "vsock_proxy_port": vsock_proxy_port,
            "enclave_port": enclave_port,
            "enclave_cpu_count": enclave_cpu_count,
            "enclave_memory_mib": enclave_memory_mib,
            **dict(host_config or {}),
        }
        self.user_data_script = render_user_data(
            region=region,
            enclave_cpu_count=enclave_cpu_count,
            enclave_memory_mib=enclave_memory_mib,
            host_config=settings,
            client_wheel_url=self.assets["wheel"].s3_object_url,
            client_wheel_file=wheel.file_name,
            client_wheel_sha256=wheel.sha256,
            host_requirements_url=self.assets["requirements"].s3_object_url,
            job_queue_url=job_queue_url or "",
            bucket=bucket_name or "",
        )
        user_data = ec2.UserData.custom(self.user_data_script)

        self.launch_template = ec2.LaunchTemplate(
            self, "LaunchTemplate",
            instance_type=instance_type,
            machine_image=machine_image or ec2.MachineImage.from_ssm_parameter(
                AL2023_ARM64_AMI_PARAMETER, os=ec2.OperatingSystemType.LINUX),
            role=self.role,
            security_group=self.security_group,
            user_data=user_data,
            nitro_enclave_enabled=True,
            require_imdsv2=True,
            # 1: only processes on the parent itself (the client, the vsock-proxy unit) use IMDS;
            # nothing runs in containers on the host, and the enclave has no path to IMDS at all.
            http_put_response_hop_limit=1,
            block_devices=[ec2.BlockDevice(
                device_name="/dev/xvda",
                volume=ec2.BlockDeviceVolume.ebs(
                    root_volume_gib, encrypted=True, delete_on_termination=True,
                    volume_type=ec2.EbsDeviceVolumeType.GP3),
            )],
        )

        self.auto_scaling_group = autoscaling.AutoScalingGroup(
            self, "Group",
            vpc=vpc,
            vpc_subnets=vpc_subnets or ec2.SubnetSelection(
                subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            launch_template=self.launch_template,
            # Between the configured bounds; the job queue's backlog moves it (JobQueue).
            min_capacity=host_count,
            max_capacity=host_count_max,
            # A new launch template version (new AMI, new user data) replaces hosts one by one.
            update_policy=autoscaling.UpdatePolicy.rolling_update(),
        )
        cdk.Validations.of(self.auto_scaling_group).acknowledge(cdk.Acknowledgment(
            id="AwsSolutions-AS3",
            reason="Launches and terminations (scaling on the job backlog included) are in the "
                   "group's activity history and EventBridge; no one subscribes to a topic.",
        ))
