"""Acknowledge a checkov finding on one CloudFormation resource, with the reason, in the template.

checkov reads `Metadata.checkov.skip` ([{id, comment}]) of each resource; the acknowledgement thus
travels with the synthesized template, next to the one resource it concerns, for any auditor who
runs checkov on it (tests/test_synth_cli.py does, on both stacks).
"""

from __future__ import annotations

import aws_cdk as cdk

from constructs import Construct

MIN_REASON_WORDS = 8


def acknowledge_checkov(target: Construct, check_id: str, reason: str) -> None:
    """Record that `check_id` is accepted on the resource behind `target`, and why."""
    resource = target if isinstance(target, cdk.CfnResource) else target.node.default_child
    if not isinstance(resource, cdk.CfnResource):
        raise ValueError(f"{target.node.path} is not one CloudFormation resource: acknowledge "
                         "checkov findings on the resource itself")
    if len(reason.split()) < MIN_REASON_WORDS:
        raise ValueError(f"reason for {check_id} on {target.node.path} is too short: say why "
                         "the finding is accepted, for an auditor")
    metadata = resource.get_metadata("checkov") or {}
    skips = [*metadata.get("skip", []), {"id": check_id, "comment": reason}]
    resource.add_metadata("checkov", {**metadata, "skip": skips})


def acknowledge_custom_resource_function(function: Construct, purpose: str) -> None:
    """checkov's Lambda findings that do not fit a function only CloudFormation invokes."""
    for check_id, reason in (
        ("CKV_AWS_116", "a dead-letter queue replays failed asynchronous events; this function "
                        "answers CloudFormation itself, which shows a failure as the stack "
                        "event and rolls back, so there is nothing to replay"),
        ("CKV_AWS_117", "it calls only AWS APIs (and CloudFormation's response URL); a VPC "
                        "would add NAT or endpoints just for it and no isolation that IAM "
                        "does not already give"),
        ("CKV_AWS_115", "it runs once per deployment, invoked only by CloudFormation; reserved "
                        "concurrency would take capacity from the account for no limit it "
                        "needs"),
    ):
        acknowledge_checkov(function, check_id, f"{purpose}: {reason}.")
