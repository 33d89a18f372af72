"""The enclave hosts' network: private subnets only, nothing can connect in.

By default a new VPC: instances sit in private subnets with no public address; a NAT gateway
gives them outbound HTTPS (PyPI for the client's pinned packages) and interface endpoints keep
KMS, Session Manager and S3 traffic inside the VPC. Or an existing VPC, imported by id with its
private subnets and zones (no lookup: synth never calls AWS); its owner provides the egress.
"""

from __future__ import annotations

from collections.abc import Sequence

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs

from constructs import Construct
from constructs.template_checks import acknowledge_custom_resource_function

# Interface endpoints for what the host calls: KMS (the enclave's decrypt, through vsock-proxy)
# and the three Session Manager services. S3 is a gateway endpoint (free, and the AL2023
# package repositories are S3 buckets).
INTERFACE_ENDPOINTS = {
    "Kms": ec2.InterfaceVpcEndpointAwsService.KMS,
    "Ssm": ec2.InterfaceVpcEndpointAwsService.SSM,
    "SsmMessages": ec2.InterfaceVpcEndpointAwsService.SSM_MESSAGES,
    "Ec2Messages": ec2.InterfaceVpcEndpointAwsService.EC2_MESSAGES,
}


class HostNetwork(Construct):
    """Attributes: `vpc` (ec2.IVpc), `subnets` (the private subnet selection), `created` (bool),
    `endpoint_security_group` (None for an imported VPC)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc_id: str | None = None,
        private_subnet_ids: Sequence[str] = (),
        availability_zones: Sequence[str] = (),
        max_azs: int = 2,
    ) -> None:
        super().__init__(scope, construct_id)
        if vpc_id:
            if not private_subnet_ids or len(private_subnet_ids) != len(availability_zones):
                raise ValueError(
                    f"importing VPC {vpc_id} needs one private subnet id per availability zone; "
                    f"got {len(private_subnet_ids)} subnet(s) for "
                    f"{len(availability_zones)} zone(s)")
            self.vpc: ec2.IVpc = ec2.Vpc.from_vpc_attributes(
                self, "Vpc",
                vpc_id=vpc_id,
                availability_zones=list(availability_zones),
                private_subnet_ids=list(private_subnet_ids),
            )
            self.endpoint_security_group: ec2.SecurityGroup | None = None
        else:
            self.vpc = self._create_vpc(max_azs)
        self.subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS)

    def allow_endpoints_from(self, peer: ec2.ISecurityGroup) -> None:
        """Let members of `peer` reach the interface endpoints (HTTPS); nobody else can."""
        if self.endpoint_security_group is not None:
            self.endpoint_security_group.add_ingress_rule(
                peer, ec2.Port.tcp(443), "HTTPS from the enclave hosts")

    def _create_vpc(self, max_azs: int) -> ec2.Vpc:
        # The zones are the stack's `availability_zones` (HostStack overrides it so that no
        # context lookup, hence no AWS call, happens at synth).
        vpc = ec2.Vpc(
            self, "Vpc",
            max_azs=max_azs,
            # One NAT gateway: outbound only, and the hosts tolerate a zone's NAT being down.
            nat_gateways=1,
            subnet_configuration=[
                # Holds only the NAT gateway; no instance is ever placed here.
                ec2.SubnetConfiguration(name="Egress", subnet_type=ec2.SubnetType.PUBLIC,
                                        cidr_mask=26, map_public_ip_on_launch=False),
                ec2.SubnetConfiguration(name="Hosts", cidr_mask=22,
                                        subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            ],
        )
        vpc.add_gateway_endpoint("S3", service=ec2.GatewayVpcEndpointAwsService.S3)
        # One group for all endpoints, opened only to the hosts' group (`allow_endpoints_from`)
        # rather than to the whole VPC range as the default would.
        self.endpoint_security_group = ec2.SecurityGroup(
            self, "EndpointSecurityGroup", vpc=vpc, allow_all_outbound=False,
            description="Interface endpoints: HTTPS from the enclave hosts only")
        for name, service in INTERFACE_ENDPOINTS.items():
            vpc.add_interface_endpoint(
                name, service=service, private_dns_enabled=True, open=False,
                security_groups=[self.endpoint_security_group],
                subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            )
        stack = cdk.Stack.of(self)
        flow_log_key = kms.Key(self, "FlowLogKey", enable_key_rotation=True,
                               removal_policy=cdk.RemovalPolicy.RETAIN,
                               description="Encrypts the enclave hosts' VPC flow logs")
        # CloudWatch Logs encrypts with the key only for this account's log groups.
        flow_log_key.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowCloudWatchLogs",
            principals=[iam.ServicePrincipal(f"logs.{stack.region}.amazonaws.com")],
            actions=["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                     "kms:Describe*"],
            resources=["*"],
            conditions={"ArnLike": {"kms:EncryptionContext:aws:logs:arn":
                                    f"arn:{stack.partition}:logs:{stack.region}:{stack.account}"
                                    ":log-group:*"}}))
        flow_logs = logs.LogGroup(self, "FlowLogs", retention=logs.RetentionDays.ONE_YEAR,
                                  encryption_key=flow_log_key,
                                  removal_policy=cdk.RemovalPolicy.RETAIN)
        vpc.add_flow_log("FlowLog",
                         destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs),
                         traffic_type=ec2.FlowLogTrafficType.ALL)
        # The stack-wide provider CDK adds to empty the default security group.
        provider = stack.node.try_find_child("Custom::VpcRestrictDefaultSGCustomResourceProvider")
        handler = provider.node.try_find_child("Handler") if provider else None
        if isinstance(handler, cdk.CfnResource):
            acknowledge_custom_resource_function(
                handler, "CDK's handler that removes the default security group's rules once")
        return vpc
