"""The fleet's job queue: SQS with a dead-letter queue, and scaling on backlog per host.

Both queues are encrypted with the sharing bucket's key (jobs name objects in that bucket, so
they deserve the same protection) and refuse anything but TLS. SQS's redrive policy is the only
place the retry limit lives: a job received `max_receive_count` times without being deleted (the
enclave refused it each time) moves to the dead-letter queue, whatever the agents do.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sqs as sqs

from constructs import Construct

# Messages wait 4 days in the queue (SQS's default) and 14 days (its maximum) in the DLQ, so
# an operator back from a long weekend still finds what was refused.
QUEUE_RETENTION = cdk.Duration.days(4)
DEAD_LETTER_RETENTION = cdk.Duration.days(14)


class JobQueue(Construct):
    """Attributes: `queue`, `dead_letter_queue`, `key`, `max_receive_count`."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        encryption_key: kms.IKey,
        max_receive_count: int = 3,
        visibility_timeout: cdk.Duration | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        if not 1 <= max_receive_count <= 1000:
            raise ValueError(f"max_receive_count={max_receive_count} is invalid: expected 1 to "
                             "1000 (SQS's range)")
        self.key = encryption_key
        self.max_receive_count = max_receive_count
        self.dead_letter_queue = sqs.Queue(
            self, "DeadLetterQueue",
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=encryption_key,
            enforce_ssl=True,
            retention_period=DEAD_LETTER_RETENTION,
        )
        cdk.Validations.of(self.dead_letter_queue).acknowledge(cdk.Acknowledgment(
            id="AwsSolutions-SQS3",
            reason="This is the job queue's dead-letter queue; a queue for its own dead letters "
                   "would hold nothing anyone reads.",
        ))
        self.queue = sqs.Queue(
            self, "Queue",
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=encryption_key,
            enforce_ssl=True,
            retention_period=QUEUE_RETENTION,
            # The agent's heartbeat extends it while a job runs; this is the time a job stays
            # hidden after its host stopped without a word.
            visibility_timeout=visibility_timeout or cdk.Duration.minutes(5),
            dead_letter_queue=sqs.DeadLetterQueue(queue=self.dead_letter_queue,
                                                  max_receive_count=max_receive_count),
        )

    def grant_consume(self, grantee: iam.IGrantable) -> None:
        """What a host agent does: receive, extend visibility, delete, read the backlog."""
        grantee.grant_principal.add_to_principal_policy(iam.PolicyStatement(
            actions=["sqs:ReceiveMessage", "sqs:ChangeMessageVisibility", "sqs:DeleteMessage",
                     "sqs:GetQueueAttributes", "sqs:GetQueueUrl"],
            resources=[self.queue.queue_arn],
        ))
        self._grant_key(grantee, ["kms:Decrypt"])

    def grant_submit(self, grantee: iam.IGrantable) -> None:
        grantee.grant_principal.add_to_principal_policy(iam.PolicyStatement(
            actions=["sqs:SendMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl"],
            resources=[self.queue.queue_arn],
        ))
        self._grant_key(grantee, ["kms:GenerateDataKey", "kms:Decrypt"])

    def _grant_key(self, grantee: iam.IGrantable, actions: list[str]) -> None:
        # Only as SQS uses the key for these queues: never a direct call.
        region = cdk.Stack.of(self).region
        grantee.grant_principal.add_to_principal_policy(iam.PolicyStatement(
            actions=actions,
            resources=[self.key.key_arn],
            conditions={"StringEquals": {"kms:ViaService": f"sqs.{region}.amazonaws.com"}},
        ))

    def scale_on_backlog(self, group: autoscaling.AutoScalingGroup, *,
                         backlog_per_host: int) -> autoscaling.CfnScalingPolicy:
        """Target tracking on visible messages / in-service hosts (metric math).

        SQS publishes its queue metrics, the group its GroupInServiceInstances once group
        metrics are enabled; with no host in service the backlog itself is the value, so an
        empty group scales out as soon as work arrives.
        """
        if backlog_per_host < 1:
            raise ValueError(f"backlog_per_host={backlog_per_host} is invalid: expected 1 or "
                             "more jobs waiting per host")
        cfn_group = group.node.default_child
        assert isinstance(cfn_group, autoscaling.CfnAutoScalingGroup), group.node.path
        cfn_group.metrics_collection = [
            autoscaling.CfnAutoScalingGroup.MetricsCollectionProperty(
                granularity="1Minute", metrics=["GroupInServiceInstances"]),
        ]
        metric = autoscaling.CfnScalingPolicy.TargetTrackingMetricStatProperty
        query = autoscaling.CfnScalingPolicy.TargetTrackingMetricDataQueryProperty
        dimension = autoscaling.CfnScalingPolicy.MetricDimensionProperty
        return autoscaling.CfnScalingPolicy(
            self, "BacklogPerHost",
            auto_scaling_group_name=group.auto_scaling_group_name,
            policy_type="TargetTrackingScaling",
            target_tracking_configuration=autoscaling.CfnScalingPolicy
            .TargetTrackingConfigurationProperty(
                target_value=float(backlog_per_host),
                customized_metric_specification=autoscaling.CfnScalingPolicy
                .CustomizedMetricSpecificationProperty(metrics=[
                    query(id="visible", return_data=False, metric_stat=metric(
                        stat="Sum", metric=autoscaling.CfnScalingPolicy.MetricProperty(
                            namespace="AWS/SQS", metric_name="ApproximateNumberOfMessagesVisible",
                            dimensions=[dimension(name="QueueName",
                                                  value=self.queue.queue_name)]))),
                    query(id="hosts", return_data=False, metric_stat=metric(
                        stat="Average", metric=autoscaling.CfnScalingPolicy.MetricProperty(
                            namespace="AWS/AutoScaling", metric_name="GroupInServiceInstances",
                            dimensions=[dimension(name="AutoScalingGroupName",
                                                  value=group.auto_scaling_group_name)]))),
                    query(id="backlog_per_host", label="Jobs waiting per in-service host",
                          return_data=True,
                          expression="IF(hosts > 0, visible / hosts, visible)"),
                ]),
            ),
        )
