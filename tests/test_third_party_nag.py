"""cdk-nag AwsSolutions on ThirdPartyStack: no unacknowledged findings, narrow acknowledgements."""

import aws_cdk as cdk
import pytest
from cdk_nag import AwsSolutionsChecks

from tests.third_party_support import build_third_party_stack

pytestmark = pytest.mark.cdk

ACKNOWLEDGED = "aws:cdk:acknowledged-rules"


def violations(app: cdk.App) -> list[str]:
    report = AwsSolutionsChecks(app).validate_scope(app)
    return sorted(f"{v.rule_name} at {[r.construct_path for r in v.violating_resources]}"
                  for v in report.violations)


@pytest.fixture(scope="module")
def stack():
    _, stack, _ = build_third_party_stack()
    return stack


def test_no_unacknowledged_findings():
    app, _, _ = build_third_party_stack()
    assert violations(app) == []


def test_no_unacknowledged_findings_with_an_imported_repository_and_pinned_signer():
    app, _, _ = build_third_party_stack(UseExistingRepository=True, AllowedSignerPcr8="c" * 96,
                                        AllowedImageMeasurements=["a" * 96])
    assert violations(app) == []


def test_no_unacknowledged_findings_with_a_codeconnections_source():
    app, _, _ = build_third_party_stack(
        SourceConnectionArn="arn:aws:codeconnections:us-east-1:111111111111:connection/"
                            "01234567-89ab-cdef-0123-456789abcdef",
        SourceRepository="example-org/sealed-app")
    assert violations(app) == []


def test_every_acknowledgement_is_needed(monkeypatch):
    from stacks.third_party_stack import ThirdPartyStack

    monkeypatch.setattr(ThirdPartyStack, "_acknowledge_findings", lambda self: None)
    app, stack, _ = build_third_party_stack()
    found = {v.split(" at ")[0] for v in violations(app)}
    acknowledged = set()
    for construct in stack.node.find_all():
        for entry in construct.node.metadata:
            if entry.type == ACKNOWLEDGED:
                acknowledged |= set(entry.data)
    # Nothing is acknowledged without the stack's method, and every finding it hid is real.
    assert acknowledged == set()
    _, reference, _ = build_third_party_stack()
    expected = {rule.removeprefix("Annotation::") for c in reference.node.find_all()
                for e in c.node.metadata if e.type == ACKNOWLEDGED for rule in e.data}
    assert expected <= found


def test_each_acknowledgement_sits_on_one_resource_with_a_reason(stack):
    for construct in stack.node.find_all():
        for entry in construct.node.metadata:
            if entry.type != ACKNOWLEDGED:
                continue
            resources = [c for c in construct.node.find_all() if isinstance(c, cdk.CfnResource)]
            assert construct is not stack and len(resources) == 1, construct.node.path
            for rule, reason in entry.data.items():
                assert len(reason) >= 40, (construct.node.path, rule)
