"""cdk-nag AwsSolutions on HostStack: no unacknowledged finding, and every acknowledgement is
narrow (one construct, one finding) with a reason an auditor can read."""

from __future__ import annotations

import aws_cdk as cdk
import pytest
from aws_cdk import aws_s3 as s3
from cdk_nag import AwsSolutionsChecks
from host_app import REMOVE, build_host_stack

pytestmark = pytest.mark.cdk

ACKNOWLEDGED_RULES_METADATA = "aws:cdk:acknowledged-rules"

# Every acknowledgement in HostStack. A new one must be added here on purpose, with its reason.
EXPECTED_ACKNOWLEDGEMENTS = {
    ("HostStack/Sharing/AccessLogs", "AwsSolutions-S1"),
    ("HostStack/EnclaveHost/Role",
     "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonSSMManagedInstanceCore]"),
    ("HostStack/EnclaveHost/Role",
     "AwsSolutions-IAM5[Resource::<SharingBucketCD7BC718.Arn>/encrypted-apps/*]"),
    ("HostStack/EnclaveHost/Role",
     "AwsSolutions-IAM5[Resource::<SharingBucketCD7BC718.Arn>/enclave-images/*]"),
    ("HostStack/EnclaveHost/Group", "AwsSolutions-AS3"),
    ("HostStack/Jobs/DeadLetterQueue", "AwsSolutions-SQS3"),
    *(("HostStack/EnclaveHost/Role", f"AwsSolutions-IAM5[Resource::<SharingBucketCD7BC718.Arn>/"
       f"{path}]") for path in ("jobs/*", "results/*", "results/*/receipt.json",
                                "results/*/attempts/*")),
}

VARIANTS = {
    "cdk.json example": {},
    "no enclave key": {"EnclaveKeyArn": REMOVE},
    "imported VPC": {"VpcId": "vpc-0123456789abcdef0",
                     "PrivateSubnetIds": ["subnet-0123456789abcdef0"],
                     "AvailabilityZones": ["us-east-1a"]},
    "three hosts, larger type": {"HostCountMin": 3, "InstanceType": "c7g.4xlarge",
                                 "EnclaveCpuCount": 8, "EnclaveMemoryMiB": 16384},
}


def findings(app: cdk.App) -> list[str]:
    report = AwsSolutionsChecks(app).validate_scope(app)
    return [f"{violation.rule_name} at {resource.construct_path}: {violation.description}"
            for violation in report.violations for resource in violation.violating_resources]


def acknowledgements(stack: cdk.Stack) -> list[tuple[str, str, str]]:
    """(path, rule, reason) of every cdk-nag acknowledgement (CDK records its own as well)."""
    found = []
    for construct in stack.node.find_all():
        for entry in construct.node.metadata:
            if entry.type == ACKNOWLEDGED_RULES_METADATA:
                for rule, reason in entry.data.items():
                    rule = rule.removeprefix("Annotation::")
                    if rule.startswith("AwsSolutions-"):
                        found.append((construct.node.path, rule, reason))
    return found


@pytest.fixture(scope="module")
def acknowledged() -> list[tuple[str, str, str]]:
    return acknowledgements(build_host_stack()[1])


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())
def test_host_stack_has_no_unacknowledged_finding(overrides):
    app, _ = build_host_stack(**overrides)
    assert findings(app) == []


def test_the_checker_reports_findings_it_is_not_told_to_ignore():
    # Guards the test above against passing vacuously (wrong API, rules not run).
    app = cdk.App()
    stack = cdk.Stack(app, "Probe", env=cdk.Environment(account="222222222222",
                                                        region="us-east-1"))
    s3.Bucket(stack, "Unlogged", enforce_ssl=True)
    assert any(f.startswith("AwsSolutions-S1 at Probe/Unlogged") for f in findings(app))


def test_acknowledgements_are_exactly_the_reviewed_ones(acknowledged):
    assert {(path, rule) for path, rule, _ in acknowledged} == EXPECTED_ACKNOWLEDGEMENTS


def test_no_acknowledgement_is_stack_wide_or_rule_wide_for_wildcards(acknowledged):
    for path, rule, _ in acknowledged:
        assert path != "HostStack", f"{rule} acknowledged for the whole stack"
        if rule.startswith(("AwsSolutions-IAM4", "AwsSolutions-IAM5")):
            assert "[" in rule, f"{rule} at {path} covers every finding of the rule"


def test_every_acknowledgement_gives_a_reason_an_auditor_can_read(acknowledged):
    for path, rule, reason in acknowledged:
        assert len(reason.split()) >= 10, f"{rule} at {path}: reason too short: {reason!r}"
