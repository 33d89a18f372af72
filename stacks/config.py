"""The one validated configuration object, built in `app.py` from CDK context.

Context keys keep the runbook's parameter names (ThirdPartyAWSAccountNumber, HostEncryptionKeyArn,
...), so a reader of the runbook finds them; `cdk.json` carries clearly fake example values and
`-c Key=value` overrides them. Every bad value raises `ConfigError` with one line naming the key,
the value and the expected form. Nothing here calls AWS.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from enclave.policy import NUMERIC_VERSION_PATTERN

ACCOUNT_RE = re.compile(r"^[0-9]{12}$")
DNS_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
REGION_RE = re.compile(r"^[a-z]{2}(?:-gov)?-[a-z]+-[0-9]$")
KMS_KEY_ARN_RE = re.compile(
    r"^arn:aws[a-z-]*:kms:[a-z]{2}(?:-gov)?-[a-z]+-[0-9]:[0-9]{12}:key/"
    r"(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})$"
)
IAM_ROLE_ARN_RE = re.compile(
    r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9_+=,.@/-]{1,512}$")
IAM_ROLE_NAME_RE = re.compile(r"^[A-Za-z0-9_+=,.@-]{1,64}$")
ALIAS_RE = re.compile(r"^alias/(?!aws/)[a-zA-Z0-9/_-]{1,250}$")
SHA384_HEX_RE = re.compile(r"^[0-9a-f]{96}$")
BUCKET_NAME_RE = re.compile(r"^(?!.*\.\.)(?!.*\.-)(?!.*-\.)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
PREFIX_RE = re.compile(r"^(?!.*//)[A-Za-z0-9][A-Za-z0-9!_.'()/-]{0,200}/$")
INSTANCE_TYPE_RE = re.compile(r"^[a-z][a-z0-9-]*[0-9][a-z0-9-]*g[a-z0-9-]*\.[a-z0-9]+$")
VPC_ID_RE = re.compile(r"^vpc-[0-9a-f]{8,17}$")
SUBNET_ID_RE = re.compile(r"^subnet-[0-9a-f]{8,17}$")
AZ_RE = re.compile(r"^[a-z]{2}(?:-gov)?-[a-z]+-[0-9][a-z]$")
REPO_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
APP_DIR_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# CodeConnections ARNs keep both service prefixes (the service was renamed from CodeStar).
CONNECTION_ARN_RE = re.compile(
    r"^arn:aws[a-z-]*:(?:codestar-connections|codeconnections):[a-z]{2}(?:-gov)?-[a-z]+-[0-9]:"
    r"[0-9]{12}:connection/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# owner/name on GitHub and Bitbucket; group/[subgroup/...]name on GitLab.
SOURCE_REPOSITORY_RE = re.compile(r"^[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)+$")
BRANCH_RE = re.compile(r"^(?!/|.*(?:\.\.|//|@\{|\.lock$|/$))[A-Za-z0-9._/-]{1,255}$")

# Zones a created VPC may span: each adds two subnets and an interface endpoint per service.
MAX_CREATED_ZONES = 3

# vCPUs per Graviton size; the parent keeps at least 2 and the enclave takes whole cores.
GRAVITON_VCPUS = {"medium": 1, "large": 2, "xlarge": 4, "2xlarge": 8, "4xlarge": 16,
                  "8xlarge": 32, "12xlarge": 48, "16xlarge": 64, "24xlarge": 96, "48xlarge": 192}


# The image policy's own rule (one definition): numeric parts, compared as numbers.
NUMERIC_VERSION_RE = NUMERIC_VERSION_PATTERN

CONTEXT_KEYS = (
    "ThirdPartyAWSAccountNumber", "ThirdPartyName", "HostAWSAccountNumber", "Region",
    "HostBucketName", "HostEncryptionKeyArn", "EnclaveKeyArn", "EncryptedAppPrefix",
    "EnclaveImagePrefix", "EncryptionKeyAlias", "AllowedImageMeasurements", "MeasurementsToKeep",
    "AllowedSignerPcr8", "ApplicationDirectory", "AppId", "CodeCommitRepositoryName",
    "UseExistingRepository", "HostRoleName", "HostRoleArn", "InstanceType", "EnclaveCpuCount",
    "EnclaveMemoryMiB", "EifSizeMiB", "HostCount", "HostCountMin", "HostCountMax",
    "JobMaxReceiveCount", "JobBacklogPerHost", "VpcId", "PrivateSubnetIds",
    "AvailabilityZones", "VsockProxyPort", "EnclavePort", "MinimumAppVersion",
    "SourceConnectionArn", "SourceRepository", "SourceBranch",
)
# Our keys are CamelCase; CDK's own flags ("@aws-cdk/...", "aws:cdk:...") are not.
_OUR_KEY_SHAPE = re.compile(r"^[A-Z][A-Za-z0-9]+$")


class ConfigError(ValueError):
    """A context value is missing or malformed; the message is one line an operator can act on."""


def _fail(key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"context key {key}={value!r} is invalid: expected {expected}")


@dataclass(frozen=True)
class Config:
    # Accounts and names
    third_party_account: str
    third_party_name: str
    host_account: str
    region: str
    # Host sharing bucket (HostStack creates it; ThirdPartyStack uploads into it)
    host_bucket_name: str
    host_bucket_key_arn: str
    encrypted_app_prefix: str
    enclave_image_prefix: str
    # The Third Party's enclave key
    enclave_key_alias: str
    enclave_key_arn: str | None
    allowed_measurements: tuple[str, ...]
    measurements_to_keep: int
    allow_pcr8: str | None
    # Application and source repository
    app_directory: str
    app_id: str
    repository_name: str
    use_existing_repository: bool
    # Enclave host
    host_role_name: str
    host_role_arn_override: str | None
    instance_type: str
    enclave_cpu_count: int
    enclave_memory_mib: int
    eif_size_mib: int | None
    host_count: int  # the group's minimum: HostCountMin (HostCount is its older name)
    vpc_id: str | None
    private_subnet_ids: tuple[str, ...] = field(default=())
    availability_zones: tuple[str, ...] = field(default=())
    vsock_proxy_port: int = 8000
    enclave_port: int = 5005
    # The image refuses bundles below this app version (anti-rollback); None: any version.
    minimum_app_version: str | None = None
    # Pipeline source: CodeCommit (above) unless a CodeConnections connection is given.
    source_connection_arn: str | None = None
    source_repository: str | None = None
    source_branch: str = "main"
    # Fleet: the group scales between these on the job queue's backlog per host.
    host_count_max: int = 1
    job_max_receive_count: int = 3
    job_backlog_per_host: int = 5

    @property
    def host_role_arn(self) -> str:
        """The host principal the enclave key trusts (the HostStack's role unless overridden)."""
        if self.host_role_arn_override:
            return self.host_role_arn_override
        return f"arn:{self.partition}:iam::{self.host_account}:role/{self.host_role_name}"

    @property
    def partition(self) -> str:
        if self.region.startswith("us-gov-"):
            return "aws-us-gov"
        if self.region.startswith("cn-"):
            return "aws-cn"
        return "aws"

    @property
    def instance_vcpus(self) -> int:
        return GRAVITON_VCPUS[self.instance_type.split(".", 1)[1]]


class _Reader:
    """Reads and validates one key at a time from the context mapping."""

    def __init__(self, context: Mapping[str, Any]) -> None:
        self._context = context

    def raw(self, key: str, default: Any = None) -> Any:
        value = self._context.get(key, default)
        return default if value == "" else value

    def string(self, key: str, pattern: re.Pattern[str], expected: str, default: str | None = None,
               *, optional: bool = False) -> str | None:
        value = self.raw(key, default)
        if value is None:
            if optional:
                return None
            raise _fail(key, value, expected)
        if isinstance(value, int) and not isinstance(value, bool) and pattern is ACCOUNT_RE:
            value = f"{value:012d}"  # an account written as a JSON number in cdk.json
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise _fail(key, value, expected)
        return value

    def required(self, key: str, pattern: re.Pattern[str], expected: str,
                 default: str | None = None) -> str:
        value = self.string(key, pattern, expected, default)
        assert value is not None
        return value

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.raw(key, default)
        try:
            number = int(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            number = None
        if number is None or str(number) != str(value).strip() or not low <= number <= high:
            raise _fail(key, value, f"a whole number from {low} to {high}")
        return number

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key, default)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise _fail(key, value, "true or false")

    def string_list(self, key: str, item: Callable[[str], bool], expected: str) -> tuple[str, ...]:
        value = self.raw(key, [])
        if isinstance(value, str):
            # `-c Key=a,b` or `-c 'Key=["a","b"]'` from the command line
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise _fail(key, value, f"a JSON list of {expected}") from exc
            else:
                value = [part.strip() for part in text.split(",") if part.strip()]
        if not isinstance(value, list):
            raise _fail(key, value, f"a list of {expected}")
        for element in value:
            if not isinstance(element, str) or not item(element):
                raise _fail(key, element, expected)
        return tuple(value)


def _app_id(r: _Reader, app_directory: str, dns: str) -> str:
    if r.raw("AppId") is None and not DNS_NAME_RE.fullmatch(app_directory):
        # The default comes from ApplicationDirectory: name the key the user actually set.
        raise _fail("ApplicationDirectory", app_directory,
                    f"{dns} when AppId is not set (the app id defaults to the folder name)")
    return r.required("AppId", DNS_NAME_RE, dns, app_directory)


def _refuse_unknown_keys(context: Mapping[str, Any]) -> None:
    """A key shaped like ours that we do not know is a typo: refuse it by name."""
    unknown = sorted(k for k in context if _OUR_KEY_SHAPE.match(k) and k not in CONTEXT_KEYS)
    if unknown:
        raise ConfigError(f"unknown context key {unknown[0]!r}: expected one of "
                          f"{', '.join(CONTEXT_KEYS)} (see the README's context table)")


def _accounts(r: _Reader) -> tuple[str, str, str]:
    """The two accounts and the region."""
    account = "a 12-digit AWS account number"
    third_party_account = r.required("ThirdPartyAWSAccountNumber", ACCOUNT_RE, account)
    host_account = r.required("HostAWSAccountNumber", ACCOUNT_RE, account)
    region = r.required("Region", REGION_RE, "an AWS region such as us-east-1", "us-east-1")
    return third_party_account, host_account, region


def _key_arns(r: _Reader, third_party_account: str, host_account: str,
              region: str) -> tuple[str, str | None]:
    """The host bucket's key and the enclave key, each in the account (and region) it must be in."""
    key_arn = "a KMS key ARN such as arn:aws:kms:us-east-1:111111111111:key/<uuid>"
    host_bucket_key_arn = r.required("HostEncryptionKeyArn", KMS_KEY_ARN_RE, key_arn)
    enclave_key_arn = r.string("EnclaveKeyArn", KMS_KEY_ARN_RE, key_arn, optional=True)
    if enclave_key_arn and enclave_key_arn.split(":")[4] != third_party_account:
        raise _fail("EnclaveKeyArn", enclave_key_arn,
                    f"a key in the third party account {third_party_account}")
    if host_bucket_key_arn.split(":")[4] != host_account:
        raise _fail("HostEncryptionKeyArn", host_bucket_key_arn,
                    f"a key in the host account {host_account}")
    if host_bucket_key_arn.split(":")[3] != region:
        raise _fail("HostEncryptionKeyArn", host_bucket_key_arn,
                    f"a key in Region {region} (SSE-KMS needs the key in the bucket's region)")
    return host_bucket_key_arn, enclave_key_arn


def _measurements(r: _Reader) -> tuple[str, ...]:
    """The allowed image measurements (PCR0), never a debug enclave's zeros."""
    measurements = r.string_list(
        "AllowedImageMeasurements", lambda v: bool(SHA384_HEX_RE.fullmatch(v)),
        "96 lowercase hex characters (a SHA-384 PCR0 from nitro-cli build-enclave)")
    if "0" * 96 in measurements:
        raise _fail("AllowedImageMeasurements", "0" * 96,
                    "a real image measurement: all zeros is what a debug-mode enclave reports")
    return measurements


def _enclave_size(r: _Reader) -> tuple[str, int, int, int | None]:
    """The instance type and the enclave's share of it: vCPUs, memory, image size."""
    instance_type = r.required("InstanceType", INSTANCE_TYPE_RE,
                               "a Graviton (arm64) instance type such as c7g.xlarge", "c7g.xlarge")
    size = instance_type.split(".", 1)[1]
    if size not in GRAVITON_VCPUS or GRAVITON_VCPUS[size] < 4:
        raise _fail("InstanceType", instance_type,
                    "a Graviton type with at least 4 vCPUs (xlarge or larger): the parent keeps 2")
    vcpus = GRAVITON_VCPUS[size]
    cpu_count = r.integer("EnclaveCpuCount", 2, 2, vcpus - 2)
    if cpu_count % 2:
        raise _fail("EnclaveCpuCount", cpu_count,
                    "an even number: enclaves take whole cores (2 vCPUs each on Graviton)")
    memory = r.integer("EnclaveMemoryMiB", 4096, 256, 1024 * 1024)
    eif_size = r.integer("EifSizeMiB", 0, 0, 256 * 1024) or None
    if eif_size and memory < 4 * eif_size:
        raise _fail("EnclaveMemoryMiB", memory,
                    f"at least 4 x EifSizeMiB = {4 * eif_size} MiB (nitro-cli refuses less)")
    return instance_type, cpu_count, memory, eif_size


def _network(r: _Reader, region: str) -> tuple[str | None, tuple[str, ...], tuple[str, ...]]:
    """An existing VPC with its private subnets, or the zones of the VPC to create."""
    vpc_id = r.string("VpcId", VPC_ID_RE, "a VPC id such as vpc-0123456789abcdef0", optional=True)
    subnets = r.string_list("PrivateSubnetIds", lambda v: bool(SUBNET_ID_RE.fullmatch(v)),
                            "subnet ids such as subnet-0123456789abcdef0")
    zones = r.string_list("AvailabilityZones", lambda v: bool(AZ_RE.fullmatch(v)),
                          "availability zone names such as us-east-1a")
    for zone in zones:
        if zone[:-1] != region:
            raise _fail("AvailabilityZones", zone,
                        f"a zone of Region {region}, such as {region}a")
    if len(set(zones)) != len(zones):
        raise _fail("AvailabilityZones", list(zones), "each zone once")
    if not vpc_id and len(zones) > MAX_CREATED_ZONES:
        raise _fail("AvailabilityZones", list(zones),
                    f"at most {MAX_CREATED_ZONES} zones for the created VPC (each one adds "
                    "subnets and four interface endpoints)")
    if vpc_id and (not subnets or len(subnets) != len(zones)):
        raise _fail("PrivateSubnetIds", list(subnets),
                    "with VpcId, one private subnet id per entry of AvailabilityZones")
    return vpc_id, subnets, zones


def _host_role_arn(r: _Reader, host_account: str) -> str | None:
    """An existing host role, in the host account."""
    host_role_arn = r.string("HostRoleArn", IAM_ROLE_ARN_RE,
                             "an IAM role ARN such as arn:aws:iam::222222222222:role/name",
                             optional=True)
    if host_role_arn and host_role_arn.split(":")[4] != host_account:
        raise _fail("HostRoleArn", host_role_arn, f"a role in the host account {host_account}")
    return host_role_arn


def _source(r: _Reader, third_party_account: str) -> tuple[str | None, str | None]:
    """A CodeConnections source (connection and repository, both or neither)."""
    connection_arn = r.string(
        "SourceConnectionArn", CONNECTION_ARN_RE,
        "a CodeConnections connection ARN such as arn:aws:codeconnections:us-east-1:"
        "111111111111:connection/<uuid>", optional=True)
    source_repository = r.string("SourceRepository", SOURCE_REPOSITORY_RE,
                                 "owner/name of the repository behind SourceConnectionArn",
                                 optional=True)
    if connection_arn and connection_arn.split(":")[4] != third_party_account:
        raise _fail("SourceConnectionArn", connection_arn,
                    f"a connection in the third party account {third_party_account}")
    if bool(connection_arn) != bool(source_repository):
        missing = "SourceRepository" if connection_arn else "SourceConnectionArn"
        raise _fail(missing, None, "with SourceConnectionArn, SourceRepository (owner/name), and "
                    "the other way round")
    if connection_arn and r.boolean("UseExistingRepository", False):
        raise _fail("UseExistingRepository", True,
                    "false with SourceConnectionArn (the source is then the connected "
                    "repository, not CodeCommit)")
    return connection_arn, source_repository


def _host_counts(r: _Reader) -> tuple[int, int]:
    """The fleet's minimum and maximum host counts (HostCount is the minimum's older name)."""
    if r.raw("HostCount") is not None and r.raw("HostCountMin") is not None:
        raise _fail("HostCount", r.raw("HostCount"),
                    "not set together with HostCountMin (HostCount is its older name)")
    host_min = r.integer("HostCountMin", r.integer("HostCount", 1, 0, 100), 0, 100)
    host_max = r.integer("HostCountMax", max(host_min, 1), 1, 100)
    if host_max < host_min:
        raise _fail("HostCountMax", host_max, f"at least HostCountMin ({host_min})")
    return host_min, host_max


def load_config(context: Mapping[str, Any]) -> Config:
    """Build the validated `Config` from CDK context (cdk.json plus `-c` overrides).

    Keys are checked in a fixed order, so the first problem reported is always the same one."""
    _refuse_unknown_keys(context)
    r = _Reader(context)
    third_party_account, host_account, region = _accounts(r)
    dns = "a DNS-safe lowercase name (a-z, 0-9, '-', 1-63 characters)"
    third_party_name = r.required("ThirdPartyName", DNS_NAME_RE, dns)
    host_bucket_key_arn, enclave_key_arn = _key_arns(r, third_party_account, host_account,
                                                     region)
    measurements = _measurements(r)
    instance_type, cpu_count, memory, eif_size = _enclave_size(r)
    vpc_id, subnets, zones = _network(r, region)
    host_role_arn = _host_role_arn(r, host_account)
    connection_arn, source_repository = _source(r, third_party_account)
    host_min, host_max = _host_counts(r)
    app_directory = r.required("ApplicationDirectory", APP_DIR_RE,
                               "a folder name under src/ such as sample-inference",
                               "sample-inference")
    return Config(
        third_party_account=third_party_account,
        third_party_name=third_party_name,
        host_account=host_account,
        region=region,
        host_bucket_name=r.required("HostBucketName", BUCKET_NAME_RE,
                                    "an S3 bucket name (3-63 lowercase letters, digits, '.', '-')"),
        host_bucket_key_arn=host_bucket_key_arn,
        encrypted_app_prefix=r.required("EncryptedAppPrefix", PREFIX_RE,
                                        "a key prefix ending in '/' such as encrypted-apps/",
                                        "encrypted-apps/"),
        enclave_image_prefix=r.required("EnclaveImagePrefix", PREFIX_RE,
                                        "a key prefix ending in '/' such as enclave-images/",
                                        "enclave-images/"),
        enclave_key_alias=r.required("EncryptionKeyAlias", ALIAS_RE,
                                     "a KMS alias such as alias/enclavekey", "alias/enclavekey"),
        enclave_key_arn=enclave_key_arn,
        allowed_measurements=measurements,
        measurements_to_keep=r.integer("MeasurementsToKeep", 3, 1, 50),
        allow_pcr8=r.string("AllowedSignerPcr8", SHA384_HEX_RE,
                            "96 lowercase hex characters (PCR8 of the signing certificate)",
                            optional=True),
        app_directory=app_directory,
        app_id=_app_id(r, app_directory, dns),
        repository_name=r.required("CodeCommitRepositoryName", REPO_NAME_RE,
                                   "a CodeCommit repository name (letters, digits, '.', '_', '-')",
                                   "sealed-enclave-app"),
        use_existing_repository=r.boolean("UseExistingRepository", False),
        host_role_name=r.required("HostRoleName", IAM_ROLE_NAME_RE, "an IAM role name",
                                  f"sealed-enclave-host-{third_party_name}"[:64]),
        host_role_arn_override=host_role_arn,
        instance_type=instance_type,
        enclave_cpu_count=cpu_count,
        enclave_memory_mib=memory,
        eif_size_mib=eif_size,
        host_count=host_min,
        host_count_max=host_max,
        job_max_receive_count=r.integer("JobMaxReceiveCount", 3, 1, 1000),
        job_backlog_per_host=r.integer("JobBacklogPerHost", 5, 1, 10000),
        minimum_app_version=r.string("MinimumAppVersion", NUMERIC_VERSION_RE,
                                     "a dotted numeric version such as 1.2.0", optional=True),
        vpc_id=vpc_id,
        private_subnet_ids=subnets,
        availability_zones=zones,
        vsock_proxy_port=r.integer("VsockProxyPort", 8000, 1024, 65535),
        enclave_port=r.integer("EnclavePort", 5005, 1024, 65535),
        source_connection_arn=connection_arn,
        source_repository=source_repository,
        source_branch=r.required("SourceBranch", BRANCH_RE,
                                 "a git branch name such as main", "main"),
    )
