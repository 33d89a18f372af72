"""HostStack template: each security property has a test that fails if the property is dropped."""

from __future__ import annotations

import json
from fnmatch import fnmatchcase
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk.assertions import Annotations, Match, Template
from host_app import REMOVE, build_host_stack, only, resources_of_type

from constructs.enclave_host import (
    AL2023_ARM64_AMI_PARAMETER,
    NO_ENCLAVE_KEY_WARNING_ID,
    EnclaveHost,
)
from constructs.host_network import HostNetwork
from constructs.sharing_bucket import (
    THIRD_PARTY_KEY_SID,
    THIRD_PARTY_PARTS_SID,
    THIRD_PARTY_SID,
    SharingBucket,
)

pytestmark = pytest.mark.cdk

BUCKET_NAME = "example-host-sharing-bucket-222222222222"
ENCLAVE_KEY_ARN = "arn:aws:kms:us-east-1:111111111111:key/00000000-0000-4000-8000-000000000002"
PREFIXES = ("encrypted-apps/", "enclave-images/")


def partition_arn(suffix: str) -> dict:
    return {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, suffix]]}


THIRD_PARTY_ROOT = partition_arn(":iam::111111111111:root")


@pytest.fixture(scope="module")
def default_stack():
    return build_host_stack()


@pytest.fixture(scope="module")
def template(default_stack) -> Template:
    return Template.from_stack(default_stack[1])


# Every non-security setting changed at once, to show each one reaches the template.
CUSTOM = {"HostBucketName": "another-sharing-bucket", "HostRoleName": "custom-host-role",
          "InstanceType": "m7g.2xlarge", "EnclaveCpuCount": 4, "HostCountMin": 3,
          "AvailabilityZones": ["us-east-1b", "us-east-1c"]}


@pytest.fixture(scope="module")
def custom_stack():
    return build_host_stack(**CUSTOM)


@pytest.fixture(scope="module")
def customized(custom_stack) -> Template:
    return Template.from_stack(custom_stack[1])


@pytest.fixture(scope="module")
def no_enclave_key():
    _, stack = build_host_stack(EnclaveKeyArn=REMOVE)
    return Template.from_stack(stack), Annotations.from_stack(stack)


@pytest.fixture(scope="module")
def imported_stack():
    return build_host_stack(
        VpcId="vpc-0123456789abcdef0",
        PrivateSubnetIds=["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"],
        AvailabilityZones=["us-east-1a", "us-east-1b"])


@pytest.fixture(scope="module")
def imported_vpc(imported_stack) -> Template:
    return Template.from_stack(imported_stack[1])


def logical_id(template: Template, resource_type: str, path_fragment: str = "") -> str:
    matches = {k: v for k, v in resources_of_type(template, resource_type).items()
               if path_fragment in k}
    return only(matches)[0]


def sharing_bucket_id(template: Template) -> str:
    return logical_id(template, "AWS::S3::Bucket", "SharingBucket")


def sharing_key_id(template: Template) -> str:
    return logical_id(template, "AWS::KMS::Key", "SharingKey")


def bucket_policy_statements(template: Template) -> list[dict]:
    bucket = sharing_bucket_id(template)
    policies = [p for p in resources_of_type(template, "AWS::S3::BucketPolicy").values()
                if p["Properties"]["Bucket"] == {"Ref": bucket}]
    return only(dict(enumerate(policies)))[1]["Properties"]["PolicyDocument"]["Statement"]


def statement_with_sid(statements: list[dict], sid: str) -> dict:
    return only({i: s for i, s in enumerate(statements) if s.get("Sid") == sid})[1]


def host_role_statements(template: Template) -> list[dict]:
    role = logical_id(template, "AWS::IAM::Role", "EnclaveHostRole")
    statements: list[dict] = []
    for policy in resources_of_type(template, "AWS::IAM::Policy").values():
        if {"Ref": role} in policy["Properties"].get("Roles", []):
            statements += policy["Properties"]["PolicyDocument"]["Statement"]
    for inline in resources_of_type(template, "AWS::IAM::Role")[role]["Properties"].get(
            "Policies", []):
        statements += inline["PolicyDocument"]["Statement"]
    return statements


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


# ---- sharing bucket -------------------------------------------------------------------------

def test_bucket_is_sse_kms_with_the_sharing_key_and_a_bucket_key(template):
    template.has_resource_properties("AWS::S3::Bucket", {
        "BucketName": BUCKET_NAME,
        "BucketEncryption": {"ServerSideEncryptionConfiguration": [{
            "BucketKeyEnabled": True,
            "ServerSideEncryptionByDefault": {
                "SSEAlgorithm": "aws:kms",
                "KMSMasterKeyID": {"Fn::GetAtt": [sharing_key_id(template), "Arn"]},
            },
        }]},
    })


def test_bucket_name_comes_from_config(customized):
    template = customized
    bucket = resources_of_type(template, "AWS::S3::Bucket")[sharing_bucket_id(template)]
    assert bucket["Properties"]["BucketName"] == "another-sharing-bucket"


def test_bucket_is_versioned_owner_enforced_and_private(template):
    bucket = resources_of_type(template, "AWS::S3::Bucket")[sharing_bucket_id(template)]
    properties = bucket["Properties"]
    assert properties["VersioningConfiguration"] == {"Status": "Enabled"}
    assert properties["OwnershipControls"] == {
        "Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    assert properties["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True,
        "IgnorePublicAcls": True, "RestrictPublicBuckets": True}


def test_bucket_and_key_are_retained_when_the_stack_is_deleted(template):
    for resource_type in ("AWS::S3::Bucket", "AWS::KMS::Key"):
        for resource in resources_of_type(template, resource_type).values():
            assert resource["DeletionPolicy"] == "Retain"


def test_noncurrent_versions_and_incomplete_uploads_expire(template):
    template.has_resource_properties("AWS::S3::Bucket", {
        "BucketName": BUCKET_NAME,
        "LifecycleConfiguration": {"Rules": Match.array_with([Match.object_like({
            "NoncurrentVersionExpiration": {"NoncurrentDays": 90},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
            "Status": "Enabled",
        })])},
    })


def test_access_logs_go_to_a_separate_sse_s3_bucket(template):
    buckets = resources_of_type(template, "AWS::S3::Bucket")
    sharing = buckets[sharing_bucket_id(template)]["Properties"]
    target = sharing["LoggingConfiguration"]["DestinationBucketName"]
    assert target != {"Ref": sharing_bucket_id(template)}
    log_bucket = buckets[target["Ref"]]["Properties"]
    assert log_bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0][
        "ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}
    assert log_bucket["PublicAccessBlockConfiguration"]["RestrictPublicBuckets"] is True


@pytest.mark.parametrize("bucket_fragment", ["SharingBucket", "SharingAccessLogs"])
def test_every_bucket_denies_requests_without_tls(template, bucket_fragment):
    bucket = logical_id(template, "AWS::S3::Bucket", bucket_fragment)
    policy = only({k: p for k, p in resources_of_type(template, "AWS::S3::BucketPolicy").items()
                   if p["Properties"]["Bucket"] == {"Ref": bucket}})[1]
    assert {
        "Action": "s3:*", "Effect": "Deny", "Principal": {"AWS": "*"},
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        "Resource": [{"Fn::GetAtt": [bucket, "Arn"]},
                     {"Fn::Join": ["", [{"Fn::GetAtt": [bucket, "Arn"]}, "/*"]]}],
    } in policy["Properties"]["PolicyDocument"]["Statement"]


def test_third_party_may_only_put_objects_under_the_agreed_prefixes(template):
    statement = statement_with_sid(bucket_policy_statements(template), THIRD_PARTY_SID)
    assert statement["Effect"] == "Allow"
    assert statement["Principal"] == {"AWS": THIRD_PARTY_ROOT}
    assert statement["Action"] == "s3:PutObject"
    assert sorted(map(str, statement["Resource"])) == sorted(
        str(partition_arn(f":s3:::{BUCKET_NAME}/{prefix}*")) for prefix in PREFIXES)


def test_third_party_uploads_must_name_sse_kms_with_this_exact_key(template):
    statement = statement_with_sid(bucket_policy_statements(template), THIRD_PARTY_SID)
    assert statement["Condition"] == {"StringEquals": {
        "s3:x-amz-server-side-encryption": "aws:kms",
        "s3:x-amz-server-side-encryption-aws-kms-key-id": {
            "Fn::GetAtt": [sharing_key_id(template), "Arn"]},
    }}


def test_multipart_parts_are_allowed_only_without_any_encryption_header(template):
    statement = statement_with_sid(bucket_policy_statements(template), THIRD_PARTY_PARTS_SID)
    assert statement["Action"] == "s3:PutObject"
    assert statement["Principal"] == {"AWS": THIRD_PARTY_ROOT}
    assert statement["Resource"] == statement_with_sid(
        bucket_policy_statements(template), THIRD_PARTY_SID)["Resource"]
    assert statement["Condition"] == {"Null": {
        "s3:x-amz-server-side-encryption": "true",
        "s3:x-amz-server-side-encryption-aws-kms-key-id": "true",
        "s3:x-amz-server-side-encryption-customer-algorithm": "true",
    }}


def test_no_other_bucket_statement_allows_anything(template):
    allows = [s for s in bucket_policy_statements(template) if s["Effect"] == "Allow"]
    assert sorted(s.get("Sid") for s in allows) == sorted([THIRD_PARTY_SID, THIRD_PARTY_PARTS_SID])


def test_sharing_key_rotates_and_has_an_alias(template):
    key = sharing_key_id(template)
    template.has_resource_properties("AWS::KMS::Key", {"EnableKeyRotation": True})
    template.has_resource_properties("AWS::KMS::Alias", {
        "AliasName": "alias/sealed-enclave-sharing-example-ml-vendor",
        "TargetKeyId": {"Fn::GetAtt": [key, "Arn"]},
    })


def key_policy_statements(template: Template) -> list[dict]:
    key = resources_of_type(template, "AWS::KMS::Key")[sharing_key_id(template)]
    return key["Properties"]["KeyPolicy"]["Statement"]


def test_third_party_uses_the_sharing_key_only_through_s3_in_this_region(template):
    statement = statement_with_sid(key_policy_statements(template), THIRD_PARTY_KEY_SID)
    assert statement["Principal"] == {"AWS": THIRD_PARTY_ROOT}
    assert statement["Condition"]["StringEquals"] == {
        "kms:ViaService": "s3.us-east-1.amazonaws.com",
        "kms:CallerAccount": "111111111111",
    }


def test_third_party_key_use_is_bound_to_this_bucket(template):
    statement = statement_with_sid(key_policy_statements(template), THIRD_PARTY_KEY_SID)
    assert statement["Condition"]["StringLike"] == {"kms:EncryptionContext:aws:s3:arn": [
        partition_arn(f":s3:::{BUCKET_NAME}"), partition_arn(f":s3:::{BUCKET_NAME}/*")]}


def test_third_party_key_actions_are_only_those_s3_uploads_need(template):
    statement = statement_with_sid(key_policy_statements(template), THIRD_PARTY_KEY_SID)
    assert sorted(as_list(statement["Action"])) == ["kms:Decrypt", "kms:GenerateDataKey"]


def test_only_the_host_account_and_the_third_party_appear_in_the_key_policy(template):
    principals = [s["Principal"] for s in key_policy_statements(template)]
    assert principals == [{"AWS": partition_arn(":iam::222222222222:root")},
                          {"AWS": THIRD_PARTY_ROOT}]


# ---- host role ------------------------------------------------------------------------------

def test_host_role_has_the_fixed_name_the_enclave_key_policy_names(template):
    template.has_resource_properties("AWS::IAM::Role", {
        "RoleName": "sealed-enclave-host-example-ml-vendor",
        "AssumeRolePolicyDocument": {"Statement": [Match.object_like({
            "Principal": {"Service": "ec2.amazonaws.com"}})]},
    })


def test_host_role_name_comes_from_config(customized):
    customized.has_resource_properties("AWS::IAM::Role", {"RoleName": "custom-host-role"})


def _kms_statements(statements: list[dict]) -> list[dict]:
    return [s for s in statements if s["Effect"] == "Allow" and any(
        a == "*" or a.startswith("kms:") for a in as_list(s["Action"]))]


def test_no_iam_policy_in_the_stack_allows_kms_on_every_resource(template):
    # Key policies use "Resource": "*" to mean "this key"; IAM policies must name the key.
    for policy in resources_of_type(template, "AWS::IAM::Policy").values():
        for statement in _kms_statements(policy["Properties"]["PolicyDocument"]["Statement"]):
            assert "*" not in as_list(statement["Resource"]), statement


def test_host_role_decrypts_with_the_enclave_key_only_by_its_arn(template):
    decrypts = [s for s in _kms_statements(host_role_statements(template))
                if "kms:Decrypt" in as_list(s["Action"]) and "Condition" not in s]
    assert decrypts == [{"Sid": "DecryptWithEnclaveKeyOnly", "Effect": "Allow",
                         "Action": "kms:Decrypt", "Resource": ENCLAVE_KEY_ARN}]


def test_host_role_uses_the_sharing_key_only_through_s3_and_sqs(template):
    """S3 reads and (results) writes, and reading the job queue's messages; never directly."""
    key_arn = {"Fn::GetAtt": [sharing_key_id(template), "Arn"]}
    statements = [s for s in _kms_statements(host_role_statements(template))
                  if s["Resource"] == key_arn]
    assert sorted(statements, key=json.dumps) == sorted([
        {"Effect": "Allow", "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
         "Resource": key_arn,
         "Condition": {"StringEquals": {"kms:ViaService": "s3.us-east-1.amazonaws.com"}}},
        {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": key_arn,
         "Condition": {"StringEquals": {"kms:ViaService": "sqs.us-east-1.amazonaws.com"}}},
    ], key=json.dumps)


def test_host_role_has_no_other_kms_permission(template):
    kms = _kms_statements(host_role_statements(template))
    assert len(kms) == 3  # the enclave key; the sharing key through S3; through SQS
    assert sorted(a for s in kms for a in as_list(s["Action"])) == [
        "kms:Decrypt", "kms:Decrypt", "kms:Decrypt", "kms:GenerateDataKey"]


def test_without_enclave_key_arn_there_is_no_enclave_decrypt(no_enclave_key):
    template, _ = no_enclave_key
    kms = _kms_statements(host_role_statements(template))
    assert sorted(json.dumps(s.get("Condition")) for s in kms) == sorted(json.dumps(
        {"StringEquals": {"kms:ViaService": f"{service}.us-east-1.amazonaws.com"}})
        for service in ("s3", "sqs"))


def test_without_enclave_key_arn_synth_warns_how_to_set_it(no_enclave_key):
    _, annotations = no_enclave_key
    annotations.has_warning("/HostStack/EnclaveHost", Match.string_like_regexp(
        r"EnclaveKeyArn is not set.*-c EnclaveKeyArn=arn:aws:kms:.*" + NO_ENCLAVE_KEY_WARNING_ID))


def test_with_enclave_key_arn_there_is_no_warning(default_stack):
    _, stack = default_stack
    Annotations.from_stack(stack).has_no_warning("*", Match.string_like_regexp("EnclaveKeyArn"))


def test_host_role_reads_only_uploads_jobs_and_committed_receipts(template):
    bucket_arn = {"Fn::GetAtt": [sharing_bucket_id(template), "Arn"]}
    gets = [s for s in host_role_statements(template)
            if "s3:GetObject" in as_list(s["Action"]) and s.get("Sid") != "ReadClientAssets"]
    readable = [f"/{prefix}*" for prefix in PREFIXES] + ["/jobs/*", "/results/*/receipt.json"]
    assert gets == [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": [
        {"Fn::Join": ["", [bucket_arn, path]]} for path in sorted(readable)]}]
    assert {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": bucket_arn} in (
        host_role_statements(template))


def test_host_role_writes_only_results_and_deletes_only_attempt_uploads(template):
    bucket_arn = {"Fn::GetAtt": [sharing_bucket_id(template), "Arn"]}
    writes = [s for s in host_role_statements(template)
              if any(a.startswith(("s3:Put", "s3:Delete")) for a in as_list(s["Action"]))]
    assert sorted(writes, key=json.dumps) == sorted([
        {"Effect": "Allow", "Action": "s3:PutObject",
         "Resource": {"Fn::Join": ["", [bucket_arn, "/results/*"]]}},
        {"Effect": "Allow", "Action": "s3:DeleteObject",
         "Resource": {"Fn::Join": ["", [bucket_arn, "/results/*/attempts/*"]]}},
    ], key=json.dumps)


def test_host_role_has_no_wildcard_action(template):
    for statement in host_role_statements(template):
        for action in as_list(statement["Action"]):
            assert "*" not in action, statement


def test_host_role_consumes_the_job_queue_and_cannot_send_or_purge(template):
    queue = logical_id(template, "AWS::SQS::Queue", "JobsQueue")
    sqs = [s for s in host_role_statements(template)
           if any(a.startswith("sqs:") for a in as_list(s["Action"]))]
    assert sqs == [{"Effect": "Allow", "Resource": {"Fn::GetAtt": [queue, "Arn"]}, "Action": [
        "sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:GetQueueAttributes",
        "sqs:GetQueueUrl", "sqs:ReceiveMessage"]}]


def test_host_role_reads_exactly_the_client_asset_objects(template):
    statement = statement_with_sid(host_role_statements(template), "ReadClientAssets")
    assert statement["Action"] == "s3:GetObject"
    suffixes = sorted(resource["Fn::Join"][1][-1] for resource in statement["Resource"])
    for suffix in suffixes:
        assert suffix.startswith(":s3:::cdk-hnb659fds-assets-222222222222-us-east-1/")
        assert "*" not in suffix
    # The client's wheel and its hashed requirements, each one file as is (no zip).
    assert sorted(suffix.rsplit(".", 1)[1] for suffix in suffixes) == ["txt", "whl"]


def test_host_role_has_session_manager_access(template):
    role = resources_of_type(template, "AWS::IAM::Role")[
        logical_id(template, "AWS::IAM::Role", "EnclaveHostRole")]
    assert role["Properties"]["ManagedPolicyArns"] == [
        partition_arn(":iam::aws:policy/AmazonSSMManagedInstanceCore")]


# ---- hosts ----------------------------------------------------------------------------------

def launch_template_data(template: Template) -> dict:
    return only(resources_of_type(template, "AWS::EC2::LaunchTemplate"))[1]["Properties"][
        "LaunchTemplateData"]


def host_security_group_id(template: Template) -> str:
    return logical_id(template, "AWS::EC2::SecurityGroup", "EnclaveHostSecurityGroup")


def test_host_security_group_has_no_inbound_rule(template):
    group_id = host_security_group_id(template)
    group = resources_of_type(template, "AWS::EC2::SecurityGroup")[group_id]
    assert "SecurityGroupIngress" not in group["Properties"]
    for ingress in resources_of_type(template, "AWS::EC2::SecurityGroupIngress").values():
        assert ingress["Properties"]["GroupId"] != {"Fn::GetAtt": [group_id, "GroupId"]}


def test_host_security_group_allows_only_https_out(template):
    group = resources_of_type(template, "AWS::EC2::SecurityGroup")[host_security_group_id(template)]
    assert group["Properties"]["SecurityGroupEgress"] == [{
        "CidrIp": "0.0.0.0/0", "IpProtocol": "tcp", "FromPort": 443, "ToPort": 443,
        "Description": "HTTPS to AWS endpoints and package repositories"}]


def test_launch_template_uses_the_host_security_group(template):
    assert launch_template_data(template)["SecurityGroupIds"] == [
        {"Fn::GetAtt": [host_security_group_id(template), "GroupId"]}]


def test_imdsv2_is_required_with_a_hop_limit_of_one(template):
    assert launch_template_data(template)["MetadataOptions"] == {
        "HttpTokens": "required", "HttpPutResponseHopLimit": 1}


def test_nitro_enclaves_are_enabled(template):
    assert launch_template_data(template)["EnclaveOptions"] == {"Enabled": True}


def test_every_volume_is_encrypted(template):
    mappings = launch_template_data(template)["BlockDeviceMappings"]
    assert mappings and all(m["Ebs"]["Encrypted"] is True for m in mappings)
    assert not resources_of_type(template, "AWS::EC2::Volume")


def test_image_is_latest_al2023_arm64_from_the_public_ssm_parameter(template):
    image = launch_template_data(template)["ImageId"]
    parameter = template.to_json()["Parameters"][image["Ref"]]
    assert parameter == {"Type": "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>",
                         "Default": AL2023_ARM64_AMI_PARAMETER}
    assert AL2023_ARM64_AMI_PARAMETER.endswith("al2023-ami-kernel-default-arm64")


def test_instance_type_is_the_configured_graviton_type(customized):
    assert launch_template_data(customized)["InstanceType"] == "m7g.2xlarge"


def test_group_size_comes_from_config(customized):
    group = only(resources_of_type(customized, "AWS::AutoScaling::AutoScalingGroup"))[1]
    assert (group["Properties"]["MinSize"], group["Properties"]["MaxSize"]) == ("3", "3")


def test_group_launches_the_latest_launch_template_version(template):
    lt_id = only(resources_of_type(template, "AWS::EC2::LaunchTemplate"))[0]
    template.has_resource_properties("AWS::AutoScaling::AutoScalingGroup", {
        "LaunchTemplate": {"LaunchTemplateId": {"Ref": lt_id},
                           "Version": {"Fn::GetAtt": [lt_id, "LatestVersionNumber"]}},
        "MinSize": "1", "MaxSize": "3",
    })


def test_hosts_run_only_in_private_subnets_without_public_addresses(template):
    group = only(resources_of_type(template, "AWS::AutoScaling::AutoScalingGroup"))[1]
    subnets = resources_of_type(template, "AWS::EC2::Subnet")
    for ref in group["Properties"]["VPCZoneIdentifier"]:
        subnet = subnets[ref["Ref"]]["Properties"]
        assert subnet["MapPublicIpOnLaunch"] is False
        tags = {t["Key"]: t["Value"] for t in subnet["Tags"]}
        assert tags["aws-cdk:subnet-type"] == "Private"
    assert "NetworkInterfaces" not in launch_template_data(template)


# ---- network --------------------------------------------------------------------------------

@pytest.mark.parametrize("service", ["kms", "ssm", "ssmmessages", "ec2messages"])
def test_created_vpc_has_a_private_interface_endpoint(template, service):
    template.has_resource_properties("AWS::EC2::VPCEndpoint", {
        "ServiceName": f"com.amazonaws.us-east-1.{service}",
        "VpcEndpointType": "Interface",
        "PrivateDnsEnabled": True,
    })


def test_created_vpc_has_an_s3_gateway_endpoint(template):
    template.has_resource_properties("AWS::EC2::VPCEndpoint", {
        "ServiceName": {"Fn::Join": ["", ["com.amazonaws.", {"Ref": "AWS::Region"}, ".s3"]]},
        "VpcEndpointType": "Gateway",
    })


def test_interface_endpoints_accept_https_only_from_the_hosts(template):
    hosts = {"Fn::GetAtt": [host_security_group_id(template), "GroupId"]}
    endpoint_group = logical_id(template, "AWS::EC2::SecurityGroup", "EndpointSecurityGroup")
    ingresses = list(resources_of_type(template, "AWS::EC2::SecurityGroupIngress").values())
    assert [i["Properties"] for i in ingresses] == [{
        "GroupId": {"Fn::GetAtt": [endpoint_group, "GroupId"]},
        "SourceSecurityGroupId": hosts, "IpProtocol": "tcp", "FromPort": 443, "ToPort": 443,
        "Description": "HTTPS from the enclave hosts"}]
    group = resources_of_type(template, "AWS::EC2::SecurityGroup")[endpoint_group]["Properties"]
    assert "SecurityGroupIngress" not in group


def test_created_vpc_logs_its_flows(template):
    template.has_resource_properties("AWS::EC2::FlowLog", {
        "ResourceType": "VPC", "TrafficType": "ALL",
        "LogDestinationType": "cloud-watch-logs"})


def test_flow_logs_are_encrypted_with_a_rotating_key_only_cloudwatch_logs_may_use(template):
    key_id = logical_id(template, "AWS::KMS::Key", "FlowLogKey")
    template.has_resource_properties("AWS::Logs::LogGroup", {
        "KmsKeyId": {"Fn::GetAtt": [key_id, "Arn"]}})
    key = resources_of_type(template, "AWS::KMS::Key")[key_id]["Properties"]
    assert key["EnableKeyRotation"] is True
    (logs,) = [s for s in key["KeyPolicy"]["Statement"] if s.get("Sid") == "AllowCloudWatchLogs"]
    assert logs["Principal"] == {"Service": "logs.us-east-1.amazonaws.com"}
    assert "kms:EncryptionContext:aws:logs:arn" in logs["Condition"]["ArnLike"]


def test_imported_vpc_is_used_by_id_without_creating_a_network(imported_vpc):
    for resource_type in ("AWS::EC2::VPC", "AWS::EC2::Subnet", "AWS::EC2::NatGateway",
                          "AWS::EC2::VPCEndpoint"):
        assert not resources_of_type(imported_vpc, resource_type)
    imported_vpc.has_resource_properties("AWS::AutoScaling::AutoScalingGroup", {
        "VPCZoneIdentifier": ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]})
    imported_vpc.has_resource_properties("AWS::EC2::SecurityGroup", {
        "VpcId": "vpc-0123456789abcdef0",
        "GroupDescription": Match.string_like_regexp("Enclave host")})


def test_imported_vpc_hosts_still_have_no_inbound_rule(imported_vpc):
    assert not resources_of_type(imported_vpc, "AWS::EC2::SecurityGroupIngress")
    group = resources_of_type(imported_vpc, "AWS::EC2::SecurityGroup")[
        host_security_group_id(imported_vpc)]
    assert "SecurityGroupIngress" not in group["Properties"]


# ---- outputs --------------------------------------------------------------------------------

def test_outputs_are_the_names_the_runbook_uses(template):
    assert set(template.to_json()["Outputs"]) == {
        "BucketName", "BucketArn", "KeyArn", "KeyAlias", "AutoScalingGroupName", "RoleArn",
        "JobQueueUrl", "DeadLetterQueueUrl"}


def test_outputs_point_at_the_resources_they_name(template):
    outputs = template.to_json()["Outputs"]
    bucket, key = sharing_bucket_id(template), sharing_key_id(template)
    role = logical_id(template, "AWS::IAM::Role", "EnclaveHostRole")
    group = only(resources_of_type(template, "AWS::AutoScaling::AutoScalingGroup"))[0]
    assert outputs["BucketName"]["Value"] == {"Ref": bucket}
    assert outputs["BucketArn"]["Value"] == {"Fn::GetAtt": [bucket, "Arn"]}
    assert outputs["KeyArn"]["Value"] == {"Fn::GetAtt": [key, "Arn"]}
    assert outputs["KeyAlias"]["Value"] == "alias/sealed-enclave-sharing-example-ml-vendor"
    assert outputs["AutoScalingGroupName"]["Value"] == {"Ref": group}
    assert outputs["RoleArn"]["Value"] == {"Fn::GetAtt": [role, "Arn"]}


# ---- synth never calls AWS ------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["default_stack", "custom_stack", "imported_stack"])
def test_synth_needs_no_context_lookup(request, variant):
    # A lookup here would make `cdk synth` ask AWS (and fail without credentials).
    app, _ = request.getfixturevalue(variant)
    manifest = json.loads((Path(app.synth().directory) / "manifest.json").read_text())
    assert manifest.get("missing") is None


def test_created_vpc_spans_zones_resolved_by_cloudformation(template):
    zones = [s["Properties"]["AvailabilityZone"]
             for s in resources_of_type(template, "AWS::EC2::Subnet").values()]
    assert {str(z) for z in zones} == {
        str({"Fn::Select": [i, {"Fn::GetAZs": ""}]}) for i in (0, 1)}


def test_created_vpc_uses_the_configured_zones(customized):
    zones = {s["Properties"]["AvailabilityZone"]
             for s in resources_of_type(customized, "AWS::EC2::Subnet").values()}
    assert zones == {"us-east-1b", "us-east-1c"}


def test_created_vpc_spans_every_named_zone_with_its_endpoints():
    _, stack = build_host_stack(AvailabilityZones=["us-east-1b", "us-east-1c", "us-east-1d"])
    template = Template.from_stack(stack)
    zones = {s["Properties"]["AvailabilityZone"]
             for s in resources_of_type(template, "AWS::EC2::Subnet").values()}
    assert zones == {"us-east-1b", "us-east-1c", "us-east-1d"}
    for endpoint in resources_of_type(template, "AWS::EC2::VPCEndpoint").values():
        if endpoint["Properties"].get("VpcEndpointType") == "Interface":
            assert len(endpoint["Properties"]["SubnetIds"]) == 3


# ---- constructs on their own ----------------------------------------------------------------

def bare_stack() -> cdk.Stack:
    app = cdk.App()
    return cdk.Stack(app, "Bare", env=cdk.Environment(account="222222222222", region="us-east-1"))


@pytest.mark.parametrize("prefix", ["no-slash", "/leading/", "wild*/"])
def test_sharing_bucket_refuses_a_malformed_prefix(prefix):
    with pytest.raises(ValueError, match=r"upload prefix .* expected a key prefix ending in '/'"):
        SharingBucket(bare_stack(), "Sharing", bucket_name="b-bucket",
                      third_party_account="111111111111", upload_prefixes=[prefix],
                      key_alias="alias/x")


def test_sharing_bucket_refuses_no_prefix():
    with pytest.raises(ValueError, match="at least one upload prefix"):
        SharingBucket(bare_stack(), "Sharing", bucket_name="b-bucket",
                      third_party_account="111111111111", upload_prefixes=[],
                      key_alias="alias/x")


@pytest.mark.parametrize("cpus", [0, 1, 3])
def test_enclave_host_refuses_cpu_counts_that_are_not_whole_cores(cpus):
    stack = bare_stack()
    vpc = ec2.Vpc.from_vpc_attributes(stack, "Vpc", vpc_id="vpc-0123456789abcdef0",
                                      availability_zones=["us-east-1a"],
                                      private_subnet_ids=["subnet-0123456789abcdef0"])
    with pytest.raises(ValueError, match=rf"enclave_cpu_count={cpus} is invalid"):
        EnclaveHost(stack, "Host", vpc=vpc, instance_type=ec2.InstanceType("c7g.xlarge"),
                    host_count=1, enclave_cpu_count=cpus, enclave_memory_mib=4096,
                    enclave_key_arn=None)


def test_host_network_refuses_subnets_without_matching_zones():
    with pytest.raises(ValueError, match=r"one private subnet id per availability zone"):
        HostNetwork(bare_stack(), "Network", vpc_id="vpc-0123456789abcdef0",
                    private_subnet_ids=["subnet-0123456789abcdef0"], availability_zones=[])


# ---- the bucket policy, evaluated against the requests an uploader can make -----------------
# A small evaluator for the few policy elements the statements use (principal account, action,
# resource wildcards, StringEquals, Null, Bool), so each rule is attacked by a request, not only
# read. It models one thing S3 does: multipart part uploads carry no encryption header.

SHARING_KEY_ARN = "arn:aws:kms:us-east-1:222222222222:key/11111111-2222-4333-8444-555555555555"
OTHER_KEY_ARN = "arn:aws:kms:us-east-1:111111111111:key/99999999-2222-4333-8444-555555555555"


def _resolve(value, template: Template):
    if isinstance(value, list):
        return [_resolve(v, template) for v in value]
    if isinstance(value, dict):
        if value == {"Ref": "AWS::Partition"}:
            return "aws"
        if "Fn::Join" in value:
            separator, parts = value["Fn::Join"]
            return separator.join(_resolve(p, template) for p in parts)
        if value == {"Fn::GetAtt": [sharing_key_id(template), "Arn"]}:
            return SHARING_KEY_ARN
        if value == {"Fn::GetAtt": [sharing_bucket_id(template), "Arn"]}:
            return f"arn:aws:s3:::{BUCKET_NAME}"
        return {k: _resolve(v, template) for k, v in value.items()}
    return value


def _condition_holds(conditions: dict, request: dict) -> bool:
    for operator, tests in conditions.items():
        for key, expected in tests.items():
            expected = as_list(expected)
            if operator in ("StringEquals", "Bool"):
                if key not in request or request[key] not in expected:
                    return False
            elif operator == "Null":
                if (key not in request) != (expected == ["true"]):
                    return False
            else:
                raise AssertionError(f"evaluator does not model {operator}")
    return True


def _decide(statements: list[dict], request: dict) -> str:
    matched = {"Allow": False, "Deny": False}
    for statement in statements:
        principals = as_list(statement["Principal"]["AWS"])
        if "*" not in principals and f"arn:aws:iam::{request['account']}:root" not in principals:
            continue
        if not any(fnmatchcase(request["action"], a) for a in as_list(statement["Action"])):
            continue
        if not any(fnmatchcase(request["resource"], r) for r in as_list(statement["Resource"])):
            continue
        if _condition_holds(statement.get("Condition", {}), request):
            matched[statement["Effect"]] = True
    return "Deny" if matched["Deny"] or not matched["Allow"] else "Allow"


@pytest.fixture(scope="module")
def evaluated_policy(template) -> list[dict]:
    return _resolve(bucket_policy_statements(template), template)


def upload(key="encrypted-apps/app.sealed", *, account="111111111111", action="s3:PutObject",
           tls=True, **headers) -> dict:
    request = {"account": account, "action": action,
               "resource": f"arn:aws:s3:::{BUCKET_NAME}/{key}",
               "aws:SecureTransport": "true" if tls else "false"}
    request.update({f"s3:x-amz-server-side-encryption{suffix}": value
                    for suffix, value in headers.items()})
    return request


SSE_KMS_THIS_KEY = {"": "aws:kms", "-aws-kms-key-id": SHARING_KEY_ARN}

UPLOAD_CASES = {
    "sse-kms under this key": (upload(**SSE_KMS_THIS_KEY), "Allow"),
    "image prefix, sse-kms under this key": (
        upload("enclave-images/enclave.eif", **SSE_KMS_THIS_KEY), "Allow"),
    "multipart part (no header): bucket default, this key": (upload(), "Allow"),
    "sse-kms under another key": (upload(**{"": "aws:kms", "-aws-kms-key-id": OTHER_KEY_ARN}),
                                  "Deny"),
    "sse-kms without a key id (aws/s3)": (upload(**{"": "aws:kms"}), "Deny"),
    "key id without sse header": (upload(**{"-aws-kms-key-id": SHARING_KEY_ARN}), "Deny"),
    "sse-s3": (upload(**{"": "AES256"}), "Deny"),
    "dsse-kms under this key": (upload(**{"": "aws:kms:dsse",
                                          "-aws-kms-key-id": SHARING_KEY_ARN}), "Deny"),
    "sse-c": (upload(**{"-customer-algorithm": "AES256"}), "Deny"),
    "outside the agreed prefixes": (upload("other/app.sealed", **SSE_KMS_THIS_KEY), "Deny"),
    "prefix look-alike": (upload("encrypted-apps-evil/x", **SSE_KMS_THIS_KEY), "Deny"),
    "without TLS": (upload(tls=False, **SSE_KMS_THIS_KEY), "Deny"),
    "another account": (upload(account="333333333333", **SSE_KMS_THIS_KEY), "Deny"),
    "third party reads back": (upload(action="s3:GetObject"), "Deny"),
    "third party deletes": (upload(action="s3:DeleteObject"), "Deny"),
    "third party changes an ACL": (upload(action="s3:PutObjectAcl"), "Deny"),
}


@pytest.mark.parametrize("case", UPLOAD_CASES.values(), ids=UPLOAD_CASES.keys())
def test_bucket_policy_decides_third_party_requests(evaluated_policy, case):
    request, expected = case
    assert _decide(evaluated_policy, request) == expected
