"""`stacks/config.py`: every bad value of every context key fails with one line naming the key,
the value and the expected form; good values and defaults come through typed."""

from __future__ import annotations

import pytest

from stacks.config import CONTEXT_KEYS, Config, ConfigError, load_config

PCR = "a" * 96


def load(context: dict, **overrides: object) -> Config:
    merged = dict(context)
    for key, value in overrides.items():
        if value is _ABSENT:
            merged.pop(key, None)
        else:
            merged[key] = value
    return load_config(merged)


_ABSENT = object()

# (key, bad value, a fragment of the expected form the message must state)
BAD_VALUES = [
    ("ThirdPartyAWSAccountNumber", "12345", "12-digit AWS account number"),
    ("ThirdPartyAWSAccountNumber", "1111111111111", "12-digit AWS account number"),
    ("ThirdPartyAWSAccountNumber", "11111111111a", "12-digit AWS account number"),
    ("ThirdPartyAWSAccountNumber", _ABSENT, "12-digit AWS account number"),
    ("ThirdPartyName", "Example-Vendor", "DNS-safe lowercase name"),
    ("ThirdPartyName", "-vendor", "DNS-safe lowercase name"),
    ("ThirdPartyName", "vendor-", "DNS-safe lowercase name"),
    ("ThirdPartyName", "ml_vendor", "DNS-safe lowercase name"),
    ("ThirdPartyName", "v" * 64, "DNS-safe lowercase name"),
    ("ThirdPartyName", _ABSENT, "DNS-safe lowercase name"),
    ("HostAWSAccountNumber", "2222", "12-digit AWS account number"),
    ("HostAWSAccountNumber", "host-account", "12-digit AWS account number"),
    ("HostAWSAccountNumber", _ABSENT, "12-digit AWS account number"),
    ("Region", "us-east", "an AWS region such as us-east-1"),
    ("Region", "US-EAST-1", "an AWS region such as us-east-1"),
    ("Region", "us-east-1a", "an AWS region such as us-east-1"),
    ("HostBucketName", "ab", "an S3 bucket name"),
    ("HostBucketName", "Upper-Case-Bucket", "an S3 bucket name"),
    ("HostBucketName", "-leading-dash", "an S3 bucket name"),
    ("HostBucketName", "under_score_bucket", "an S3 bucket name"),
    ("HostBucketName", "b" * 64, "an S3 bucket name"),
    ("HostBucketName", _ABSENT, "an S3 bucket name"),
    ("HostEncryptionKeyArn", "not-an-arn", "a KMS key ARN"),
    ("HostEncryptionKeyArn", "arn:aws:kms:us-east-1:222222222222:alias/sharing", "a KMS key ARN"),
    ("HostEncryptionKeyArn",
     "arn:aws:kms:us-east-1:222222222222:key/00000000-0000-4000-8000-00000000000G",
     "a KMS key ARN"),
    ("HostEncryptionKeyArn",
     "arn:aws:kms:us-east-1:111111111111:key/00000000-0000-4000-8000-000000000001",
     "a key in the host account 222222222222"),
    ("HostEncryptionKeyArn", _ABSENT, "a KMS key ARN"),
    ("EnclaveKeyArn", "enclavekey", "a KMS key ARN"),
    ("EnclaveKeyArn", "arn:aws:kms:us-east-1:111111111111:alias/enclavekey", "a KMS key ARN"),
    ("EnclaveKeyArn",
     "arn:aws:kms:us-east-1:222222222222:key/00000000-0000-4000-8000-000000000002",
     "a key in the third party account 111111111111"),
    ("EncryptedAppPrefix", "encrypted-apps", "a key prefix ending in '/'"),
    ("EncryptedAppPrefix", "/encrypted-apps/", "a key prefix ending in '/'"),
    ("EncryptedAppPrefix", "encrypted apps/", "a key prefix ending in '/'"),
    ("EnclaveImagePrefix", "enclave-images", "a key prefix ending in '/'"),
    ("EnclaveImagePrefix", "/", "a key prefix ending in '/'"),
    ("EncryptionKeyAlias", "enclavekey", "a KMS alias such as alias/enclavekey"),
    ("EncryptionKeyAlias", "alias/aws/s3", "a KMS alias such as alias/enclavekey"),
    ("EncryptionKeyAlias", "alias/", "a KMS alias such as alias/enclavekey"),
    ("AllowedImageMeasurements", ["abc"], "96 lowercase hex characters"),
    ("AllowedImageMeasurements", ["A" * 96], "96 lowercase hex characters"),
    ("AllowedImageMeasurements", f"{PCR},xyz", "96 lowercase hex characters"),
    ("AllowedImageMeasurements", '["unterminated', "a JSON list of 96 lowercase hex"),
    ("AllowedImageMeasurements", 5, "a list of 96 lowercase hex"),
    ("MeasurementsToKeep", 0, "a whole number from 1 to 50"),
    ("MeasurementsToKeep", 51, "a whole number from 1 to 50"),
    ("MeasurementsToKeep", "three", "a whole number from 1 to 50"),
    ("MeasurementsToKeep", True, "a whole number from 1 to 50"),
    ("MeasurementsToKeep", 2.5, "a whole number from 1 to 50"),
    ("AllowedSignerPcr8", "abc", "96 lowercase hex characters (PCR8"),
    ("AllowedSignerPcr8", "B" * 96, "96 lowercase hex characters (PCR8"),
    ("ApplicationDirectory", "../escape", "a folder name under src/"),
    ("ApplicationDirectory", ".hidden", "a folder name under src/"),
    ("ApplicationDirectory", "a/b", "a folder name under src/"),
    ("AppId", "Sample_Inference", "DNS-safe lowercase name"),
    ("CodeCommitRepositoryName", "bad name", "a CodeCommit repository name"),
    ("CodeCommitRepositoryName", "r" * 101, "a CodeCommit repository name"),
    ("UseExistingRepository", "yes", "true or false"),
    ("UseExistingRepository", 1, "true or false"),
    ("SourceConnectionArn", "arn:aws:codestar:us-east-1:111111111111:connection/x",
     "a CodeConnections connection ARN"),
    ("SourceRepository", "no-owner", "owner/name of the repository"),
    ("SourceBranch", "feature..x", "a git branch name such as main"),
    ("SourceBranch", "/main", "a git branch name such as main"),
    ("HostRoleName", "bad role!", "an IAM role name"),
    ("HostRoleName", "r" * 65, "an IAM role name"),
    ("HostRoleArn", "arn:aws:iam::123:role/host", "an IAM role ARN"),
    ("HostRoleArn", "arn:aws:iam::222222222222:user/host", "an IAM role ARN"),
    ("HostRoleArn", "arn:aws:iam::333333333333:role/host", "a role in the host account 2222"),
    ("InstanceType", "c7i.xlarge", "a Graviton (arm64) instance type"),
    ("InstanceType", "xlarge", "a Graviton (arm64) instance type"),
    ("InstanceType", "c7g.large", "at least 4 vCPUs"),
    ("InstanceType", "c7g.huge", "at least 4 vCPUs"),
    ("EnclaveCpuCount", 1, "a whole number from 2 to 2"),
    ("EnclaveCpuCount", 4, "a whole number from 2 to 2"),
    ("EnclaveCpuCount", "two", "a whole number from 2 to 2"),
    ("EnclaveMemoryMiB", 100, "a whole number from 256 to 1048576"),
    ("EnclaveMemoryMiB", "lots", "a whole number from 256 to 1048576"),
    ("EifSizeMiB", -1, "a whole number from 0 to 262144"),
    ("EifSizeMiB", 2000, "at least 4 x EifSizeMiB = 8000 MiB"),
    ("HostCountMin", -1, "a whole number from 0 to 100"),
    ("HostCountMin", 101, "a whole number from 0 to 100"),
    ("HostCountMin", "one", "a whole number from 0 to 100"),
    ("HostCountMax", 0, "a whole number from 1 to 100"),
    ("HostCountMax", 101, "a whole number from 1 to 100"),
    ("HostCountMin", 4, "at least HostCountMin (4)"),
    ("HostCount", 2, "not set together with HostCountMin"),
    ("JobMaxReceiveCount", 0, "a whole number from 1 to 1000"),
    ("JobBacklogPerHost", 0, "a whole number from 1 to 10000"),
    ("VpcId", "vpc-123", "a VPC id such as vpc-0123456789abcdef0"),
    ("VpcId", "vpc-0123456789ABCDEF0", "a VPC id such as vpc-0123456789abcdef0"),
    ("PrivateSubnetIds", ["subnet-bad"], "subnet ids such as subnet-0123456789abcdef0"),
    ("AvailabilityZones", ["us-east-1"], "availability zone names such as us-east-1a"),
    ("AvailabilityZones", ["eu-west-1a"], "a zone of Region us-east-1, such as us-east-1a"),
    ("VsockProxyPort", 80, "a whole number from 1024 to 65535"),
    ("VsockProxyPort", 70000, "a whole number from 1024 to 65535"),
    ("EnclavePort", 1023, "a whole number from 1024 to 65535"),
    ("EnclavePort", "port", "a whole number from 1024 to 65535"),
    ("MinimumAppVersion", "v1.2", "a dotted numeric version such as 1.2.0"),
    ("MinimumAppVersion", "1.2.0-rc1", "a dotted numeric version such as 1.2.0"),
    ("MinimumAppVersion", "1..2", "a dotted numeric version such as 1.2.0"),
    ("MinimumAppVersion", "v1", "a dotted numeric version such as 1.2.0"),
]



def _shown(key: str, value: object) -> object:
    """The value the message must show: the offending list element, not the whole list."""
    if isinstance(value, list) and len(value) == 1:
        return value[0]
    if key == "AllowedImageMeasurements" and isinstance(value, str) and "," in value:
        return "xyz"
    return None if value is _ABSENT else value


# A rule across two keys is reported under the key whose value has to change.
REPORTED_UNDER = {("EifSizeMiB", 2000): ("EnclaveMemoryMiB", 4096),
                  ("HostCountMin", 4): ("HostCountMax", 3)}


def _id(case: tuple) -> str:
    key, value, _ = case
    return f"{key}={'<absent>' if value is _ABSENT else repr(value)[:24]}"


def test_every_context_key_has_a_bad_value_case():
    assert {key for key, _, _ in BAD_VALUES} == set(CONTEXT_KEYS)


@pytest.mark.parametrize("case", BAD_VALUES, ids=[_id(c) for c in BAD_VALUES])
def test_bad_value_fails_with_one_line_naming_key_value_and_form(context, case):
    key, value, expected = case
    with pytest.raises(ConfigError) as caught:
        load(context, **{key: value})
    message = str(caught.value)
    hashable = value if not isinstance(value, list) else None
    reported_key, shown = REPORTED_UNDER.get((key, hashable), (key, _shown(key, value)))
    assert "\n" not in message
    assert f"context key {reported_key}={shown!r} is invalid" in message
    assert expected in message.partition(" is invalid: expected ")[2]


def test_eif_size_message_shows_the_memory_value_it_rejects(context):
    with pytest.raises(ConfigError, match=r"EnclaveMemoryMiB=4096 is invalid"):
        load(context, EifSizeMiB=2000)


def test_odd_enclave_cpu_count_is_rejected_as_whole_cores(context):
    with pytest.raises(ConfigError, match=r"EnclaveCpuCount=3 .*an even number"):
        load(context, InstanceType="c7g.2xlarge", EnclaveCpuCount=3)


def test_vpc_id_without_subnets_names_private_subnet_ids(context):
    with pytest.raises(ConfigError, match=r"PrivateSubnetIds=\[\] .*one private subnet"):
        load(context, VpcId="vpc-0123456789abcdef0")


def test_subnet_and_zone_counts_must_match(context):
    with pytest.raises(ConfigError, match=r"PrivateSubnetIds=.*per entry of AvailabilityZones"):
        load(context, VpcId="vpc-0123456789abcdef0",
             PrivateSubnetIds=["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"],
             AvailabilityZones=["us-east-1a"])


def test_unknown_camel_case_key_is_rejected_with_the_list_of_keys(context):
    with pytest.raises(ConfigError, match=r"unknown context key 'HostBucket': expected one of "):
        load(context, HostBucket="x")


def test_cdk_feature_flags_are_not_mistaken_for_unknown_keys(context):
    context["@aws-cdk/core:newStyleStackSynthesis"] = True
    context["aws:cdk:enable-path-metadata"] = True
    assert load(context).host_account == "222222222222"


def test_cdk_json_example_context_loads(context):
    config = load(context)
    assert config.third_party_account == "111111111111"
    assert config.host_bucket_name == "example-host-sharing-bucket-222222222222"
    assert config.enclave_key_arn.endswith(":key/00000000-0000-4000-8000-000000000002")
    assert config.instance_vcpus == 4


def test_defaults_apply_when_optional_keys_are_absent(context):
    for key in ("Region", "EncryptedAppPrefix", "EnclaveImagePrefix", "EncryptionKeyAlias",
                "InstanceType", "EnclaveCpuCount", "EnclaveMemoryMiB", "HostCountMin",
                "HostCountMax", "JobMaxReceiveCount", "JobBacklogPerHost", "EnclaveKeyArn",
                "AppId"):
        context.pop(key, None)
    config = load(context)
    assert (config.region, config.encrypted_app_prefix, config.enclave_image_prefix) == (
        "us-east-1", "encrypted-apps/", "enclave-images/")
    assert config.enclave_key_alias == "alias/enclavekey"
    assert (config.instance_type, config.enclave_cpu_count, config.enclave_memory_mib,
            config.host_count, config.host_count_max) == ("c7g.xlarge", 2, 4096, 1, 1)
    assert (config.job_max_receive_count, config.job_backlog_per_host) == (3, 5)
    assert config.enclave_key_arn is None
    assert config.app_id == config.app_directory == "sample-inference"
    assert config.host_role_name == "sealed-enclave-host-example-ml-vendor"
    assert (config.vsock_proxy_port, config.enclave_port) == (8000, 5005)


def test_command_line_strings_are_parsed(context):
    config = load(context, HostCountMin="3", HostCountMax="7", UseExistingRepository="true",
                  AllowedImageMeasurements=f"{PCR}, {'b' * 96}")
    assert (config.host_count, config.host_count_max) == (3, 7)
    assert config.use_existing_repository is True
    assert config.allowed_measurements == (PCR, "b" * 96)


def test_json_list_from_the_command_line_is_parsed(context):
    config = load(context, AllowedImageMeasurements=f'["{PCR}"]')
    assert config.allowed_measurements == (PCR,)


def test_host_role_arn_defaults_to_the_named_role_in_the_host_account(context):
    assert load(context).host_role_arn == (
        "arn:aws:iam::222222222222:role/sealed-enclave-host-example-ml-vendor")


def test_host_role_arn_override_wins(context):
    arn = "arn:aws:iam::222222222222:role/custom"
    assert load(context, HostRoleArn=arn).host_role_arn == arn


def test_imported_vpc_settings_come_through(context):
    config = load(context, VpcId="vpc-0123456789abcdef0",
                  PrivateSubnetIds="subnet-0123456789abcdef0,subnet-0123456789abcdef1",
                  AvailabilityZones="us-east-1a,us-east-1b")
    assert config.private_subnet_ids == ("subnet-0123456789abcdef0", "subnet-0123456789abcdef1")
    assert config.availability_zones == ("us-east-1a", "us-east-1b")


def test_config_is_frozen(context):
    config = load(context)
    with pytest.raises(AttributeError):
        config.host_count = 5  # type: ignore[misc]


# Edge cases: exact matches only, ASCII only, and cross-key consistency.
def test_trailing_newline_is_rejected(context):
    with pytest.raises(ConfigError):
        load(context, EncryptedAppPrefix="encrypted-apps/\n")


def test_non_ascii_digits_are_rejected(context):
    # Without EnclaveKeyArn nothing else compares the account with a key's account.
    with pytest.raises(ConfigError):
        load(context, ThirdPartyAWSAccountNumber="١" * 12, EnclaveKeyArn=_ABSENT)


def test_account_number_as_json_number_is_accepted(context):
    assert load(context, ThirdPartyAWSAccountNumber=111111111111).third_party_account == (
        "111111111111")


def test_bucket_name_with_adjacent_dots_is_rejected(context):
    with pytest.raises(ConfigError):
        load(context, HostBucketName="bad..bucket")


def test_govcloud_zones_are_accepted(context):
    config = load(context, Region="us-gov-west-1", VpcId="vpc-0123456789abcdef0",
                  PrivateSubnetIds=["subnet-0123456789abcdef0"],
                  AvailabilityZones=["us-gov-west-1a"],
                  HostEncryptionKeyArn="arn:aws-us-gov:kms:us-gov-west-1:222222222222:key/"
                                       "00000000-0000-4000-8000-000000000001",
                  EnclaveKeyArn=_ABSENT)
    assert config.availability_zones == ("us-gov-west-1a",)


def test_host_key_in_another_region_is_rejected(context):
    with pytest.raises(ConfigError):
        load(context, HostEncryptionKeyArn="arn:aws:kms:eu-west-1:222222222222:key/"
                                           "00000000-0000-4000-8000-000000000001")


def test_default_app_id_error_names_application_directory(context):
    context.pop("AppId")
    with pytest.raises(ConfigError, match="ApplicationDirectory"):
        load(context, ApplicationDirectory="My_App")


def test_wildcard_in_an_upload_prefix_is_rejected(context):
    with pytest.raises(ConfigError):
        load(context, EncryptedAppPrefix="apps*/")


def test_all_zero_measurement_is_refused_as_debug_mode(context):
    with pytest.raises(ConfigError, match="debug-mode"):
        load(context, AllowedImageMeasurements=["0" * 96])


@pytest.mark.parametrize("value", ["1", "1.2", "1.2.0", "10.0.3.7", "0.9"])
def test_minimum_app_version_accepts_dotted_numbers(context, value):
    assert load_config({**context, "MinimumAppVersion": value}).minimum_app_version == value


def test_minimum_app_version_is_optional(context):
    context.pop("MinimumAppVersion", None)
    assert load_config(context).minimum_app_version is None


def test_zones_named_twice_are_rejected(context):
    with pytest.raises(ConfigError, match=r"AvailabilityZones=\['us-east-1b', 'us-east-1b'\] "
                                          r"is invalid: expected each zone once"):
        load(context, AvailabilityZones=["us-east-1b", "us-east-1b"])


def test_created_vpc_spans_at_most_three_named_zones(context):
    zones = ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d"]
    with pytest.raises(ConfigError, match=r"at most 3 zones for the created VPC"):
        load(context, AvailabilityZones=zones)
    assert load(context, AvailabilityZones=zones[:3]).availability_zones == tuple(zones[:3])


def test_zones_can_be_named_without_bringing_a_vpc(context):
    config = load(context, AvailabilityZones="us-east-1b,us-east-1f")
    assert config.vpc_id is None
    assert config.availability_zones == ("us-east-1b", "us-east-1f")


CONNECTION = ("arn:aws:codeconnections:us-east-1:111111111111:connection/"
              "01234567-89ab-cdef-0123-456789abcdef")


def test_codeconnections_source_comes_through(context):
    config = load(context, SourceConnectionArn=CONNECTION, SourceRepository="org/app",
                  SourceBranch="release/2")
    assert (config.source_connection_arn, config.source_repository, config.source_branch) == (
        CONNECTION, "org/app", "release/2")


def test_codestar_connections_arns_are_accepted_too(context):
    arn = CONNECTION.replace(":codeconnections:", ":codestar-connections:")
    assert load(context, SourceConnectionArn=arn,
                SourceRepository="group/sub/app").source_connection_arn == arn


def test_source_defaults_to_codecommit_on_main(context):
    config = load(context)
    assert (config.source_connection_arn, config.source_branch) == (None, "main")


@pytest.mark.parametrize("given,missing", [
    ({"SourceConnectionArn": CONNECTION}, "SourceRepository"),
    ({"SourceRepository": "org/app"}, "SourceConnectionArn"),
])
def test_connection_and_repository_come_together(context, given, missing):
    with pytest.raises(ConfigError, match=rf"^context key {missing}=None is invalid"):
        load(context, **given)


def test_connection_in_another_account_is_rejected(context):
    with pytest.raises(ConfigError, match="a connection in the third party account"):
        load(context, SourceConnectionArn=CONNECTION.replace("111111111111", "333333333333"),
             SourceRepository="org/app")


def test_connection_with_an_imported_codecommit_repository_is_a_conflict(context):
    with pytest.raises(ConfigError, match=r"UseExistingRepository=True is invalid"):
        load(context, SourceConnectionArn=CONNECTION, SourceRepository="org/app",
             UseExistingRepository=True)


def test_host_count_is_the_older_name_of_host_count_min(context):
    for key in ("HostCountMin", "HostCountMax"):
        context.pop(key)
    config = load(context, HostCount=2)
    assert (config.host_count, config.host_count_max) == (2, 2)
