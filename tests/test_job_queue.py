"""HostStack's job queue: encrypted, TLS-only, a dead-letter queue with the configured limit,
and the host group scaling on backlog per in-service host."""

from __future__ import annotations

import aws_cdk as cdk
import pytest
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk.assertions import Capture, Match, Template
from host_app import build_host_stack, only, resources_of_type

from constructs.job_queue import JobQueue


@pytest.fixture(scope="module")
def template() -> Template:
    return Template.from_stack(build_host_stack(JobMaxReceiveCount=7, JobBacklogPerHost=9,
                                                HostCountMin=2, HostCountMax=12)[1])


def queues(template: Template) -> tuple[str, dict, str, dict]:
    found = resources_of_type(template, "AWS::SQS::Queue")
    [(dlq_id, dlq)] = [(k, v) for k, v in found.items() if "DeadLetter" in k]
    [(queue_id, queue)] = [(k, v) for k, v in found.items() if "DeadLetter" not in k]
    return queue_id, queue, dlq_id, dlq


def test_both_queues_are_encrypted_with_the_sharing_bucket_key(template):
    [key] = [k for k in resources_of_type(template, "AWS::KMS::Key") if k.startswith("Sharing")]
    _, queue, _, dlq = queues(template)
    for q in (queue, dlq):
        assert q["Properties"]["KmsMasterKeyId"] == {"Fn::GetAtt": [key, "Arn"]}


def test_both_queues_refuse_anything_but_tls(template):
    queue_id, _, dlq_id, _ = queues(template)
    for logical_id in (queue_id, dlq_id):
        template.has_resource_properties("AWS::SQS::QueuePolicy", {
            "Queues": [{"Ref": logical_id}],
            "PolicyDocument": {"Statement": Match.array_with([Match.object_like({
                "Effect": "Deny", "Action": "sqs:*",
                "Condition": {"Bool": {"aws:SecureTransport": "false"}}})])},
        })


def test_redrive_sends_to_the_dlq_after_the_configured_receive_count(template):
    _, queue, dlq_id, _ = queues(template)
    assert queue["Properties"]["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": [dlq_id, "Arn"]}, "maxReceiveCount": 7}


def test_group_bounds_come_from_host_count_min_and_max(template):
    group = only(resources_of_type(template, "AWS::AutoScaling::AutoScalingGroup"))[1]
    assert (group["Properties"]["MinSize"], group["Properties"]["MaxSize"]) == ("2", "12")


def test_group_scales_on_visible_jobs_per_in_service_host(template):
    queue_id, _, _, _ = queues(template)
    group_id = only(resources_of_type(template, "AWS::AutoScaling::AutoScalingGroup"))[0]
    metrics = Capture()
    template.has_resource_properties("AWS::AutoScaling::ScalingPolicy", {
        "AutoScalingGroupName": {"Ref": group_id},
        "PolicyType": "TargetTrackingScaling",
        "TargetTrackingConfiguration": {"TargetValue": 9, "CustomizedMetricSpecification": {
            "Metrics": metrics}},
    })
    by_id = {m["Id"]: m for m in metrics.as_array()}
    visible = by_id["visible"]["MetricStat"]["Metric"]
    assert visible["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert visible["Dimensions"] == [{"Name": "QueueName",
                                      "Value": {"Fn::GetAtt": [queue_id, "QueueName"]}}]
    hosts = by_id["hosts"]["MetricStat"]["Metric"]
    assert hosts["MetricName"] == "GroupInServiceInstances"
    assert hosts["Dimensions"] == [{"Name": "AutoScalingGroupName", "Value": {"Ref": group_id}}]
    # Only the quotient is tracked, and an empty group still sees the backlog.
    assert [m["Id"] for m in metrics.as_array() if m.get("ReturnData")] == ["backlog_per_host"]
    assert by_id["backlog_per_host"]["Expression"] == "IF(hosts > 0, visible / hosts, visible)"


def test_group_publishes_the_in_service_count_the_policy_divides_by(template):
    group = only(resources_of_type(template, "AWS::AutoScaling::AutoScalingGroup"))[1]
    assert group["Properties"]["MetricsCollection"] == [
        {"Granularity": "1Minute", "Metrics": ["GroupInServiceInstances"]}]


def test_outputs_name_both_queues(template):
    queue_id, _, dlq_id, _ = queues(template)
    outputs = template.to_json()["Outputs"]
    assert outputs["JobQueueUrl"]["Value"] == {"Ref": queue_id}
    assert outputs["DeadLetterQueueUrl"]["Value"] == {"Ref": dlq_id}


def bare_queue(**kwargs) -> tuple[cdk.Stack, JobQueue]:
    stack = cdk.Stack(cdk.App(), "Bare", env=cdk.Environment(account="222222222222",
                                                             region="us-east-1"))
    return stack, JobQueue(stack, "Jobs", encryption_key=kms.Key(stack, "Key"), **kwargs)


@pytest.mark.parametrize("count", [0, 1001])
def test_receive_count_outside_sqs_range_is_refused(count):
    with pytest.raises(ValueError, match="max_receive_count"):
        bare_queue(max_receive_count=count)


def test_backlog_target_below_one_is_refused():
    stack, jobs = bare_queue()
    vpc = ec2.Vpc(stack, "Vpc")
    group = autoscaling.AutoScalingGroup(
        stack, "Group", vpc=vpc, instance_type=ec2.InstanceType("c7g.xlarge"),
        machine_image=ec2.MachineImage.latest_amazon_linux2023(
            cpu_type=ec2.AmazonLinuxCpuType.ARM_64))
    with pytest.raises(ValueError, match="backlog_per_host"):
        jobs.scale_on_backlog(group, backlog_per_host=0)
