"""The host agent against moto's S3 and SQS, with an in-memory stand-in for the enclave runtime.

The end-to-end path (real runtime, KMS, NSM, receipts that verify) is tests/test_fleet_demo.py;
here each rule of the agent is broken on purpose: a redelivered job, a refusal, a busy enclave.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import boto3
import pytest
from moto import mock_aws

from client.agent import Agent, AgentSettings
from client.api_errors import ApiError
from client.jobs import Job, receipt_key

BUCKET = "agent-test-bucket"


class StandInRuntime:
    """Files in dicts; a run of `predict` writes `scores` = the input's bytes reversed."""

    def __init__(self, *, refuse: ApiError | None = None, failing: bool = False) -> None:
        self.files: dict[tuple[str, str], bytes] = {}
        self.refuse = refuse
        self.failing = failing
        self.runs: dict[str, dict[str, Any]] = {}
        self.deleted: list[tuple[str, str]] = []

    def __enter__(self) -> StandInRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def upload(self, path: str, source: Any, size: int) -> dict[str, Any]:
        self.files[("inbox", path)] = source.read(size)
        return {}

    def download(self, area: str, path: str, sink: Any) -> int:
        data = self.files[(area, path)]
        sink.write(data)
        return len(data)

    def delete(self, area: str, path: str) -> dict[str, Any]:
        self.deleted.append((area, path))
        self.files.pop((area, path), None)
        return {}

    def start_run(self, *, bundle: str, entrypoint: str, args: list[str],
                  credentials: Any) -> dict[str, Any]:
        if self.refuse is not None:
            raise self.refuse
        run_id = f"run-{len(self.runs)}"
        outputs = {}
        if not self.failing:
            data = self.files[("inbox", args[0])][::-1]
            self.files[("outbox", args[1])] = data
            outputs[args[1]] = hashlib.sha256(data).hexdigest()
        self.runs[run_id] = {"id": run_id, "state": "failed" if self.failing else "succeeded",
                             "exit_code": 2 if self.failing else 0, "outputs": outputs}
        return {"id": run_id, "state": "running"}

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self.runs[run_id]

    def receipt(self, run_id: str, nonce: bytes) -> dict[str, Any]:
        run = self.runs[run_id]
        return {"receipt": {"run_id": run_id, "state": run["state"],
                            "outputs": run["outputs"]}, "document": "AAAA"}


@pytest.fixture
def aws():
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        sqs = boto3.client("sqs", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="encrypted-apps/app.sealed", Body=b"sealed")
        s3.put_object(Bucket=BUCKET, Key="jobs/inputs/a.csv", Body=b"abc")
        dlq = sqs.create_queue(QueueName="dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        queue = sqs.create_queue(QueueName="jobs", Attributes={
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                         "maxReceiveCount": "2"})})["QueueUrl"]
        yield s3, sqs, queue, dlq


def make_job(job_id: str = "job-1", entrypoint: str = "predict") -> Job:
    return Job(job_id=job_id, bundle=f"s3://{BUCKET}/encrypted-apps/app.sealed",
               entrypoint=entrypoint, inputs={"a.csv": f"s3://{BUCKET}/jobs/inputs/a.csv"},
               args=("a.csv", "scores.csv"), outputs=("scores.csv",))


def make_agent(aws, runtime: StandInRuntime, host: str = "h1") -> Agent:
    s3, sqs, queue, _ = aws
    return Agent(AgentSettings(queue_url=queue, bucket=BUCKET, host_id=host, wait_seconds=0,
                               visibility_timeout=30),
                 sqs=sqs, s3=s3, runtime=lambda: runtime, credentials=lambda: {})


def take(aws) -> dict[str, Any]:
    _, sqs, queue, _ = aws
    [message] = sqs.receive_message(QueueUrl=queue, AttributeNames=["All"])["Messages"]
    return message


def send(aws, job: Job) -> None:
    _, sqs, queue, _ = aws
    sqs.send_message(QueueUrl=queue, MessageBody=job.to_message())


def test_moto_s3_honours_if_none_match(aws):
    """The conditional write the agent relies on, as moto (and S3) implement it."""
    s3 = aws[0]
    s3.put_object(Bucket=BUCKET, Key="k", Body=b"first", IfNoneMatch="*")
    with pytest.raises(s3.exceptions.ClientError, match="PreconditionFailed"):
        s3.put_object(Bucket=BUCKET, Key="k", Body=b"second", IfNoneMatch="*")
    assert s3.get_object(Bucket=BUCKET, Key="k")["Body"].read() == b"first"


def test_a_job_commits_its_receipt_and_outputs_and_leaves_the_queue(aws):
    s3, sqs, queue, _ = aws
    send(aws, make_job())
    runtime = StandInRuntime()
    outcome = make_agent(aws, runtime).handle(take(aws))
    assert outcome.status == "committed"
    committed = json.loads(s3.get_object(Bucket=BUCKET, Key=receipt_key("job-1"))["Body"].read())
    output = committed["job"]["outputs"]["scores.csv"]
    assert s3.get_object(Bucket=BUCKET, Key=output["key"])["Body"].read() == b"cba"
    assert committed["receipt"]["outputs"]["job-1.scores.csv"] == output["sha256"]
    assert sqs.receive_message(QueueUrl=queue).get("Messages") is None
    # The enclave's exchange area is left clean: bundle, input and output removed.
    assert {("inbox", "job-1.bundle.sealed"), ("inbox", "job-1.a.csv"),
            ("outbox", "job-1.scores.csv")} <= set(runtime.deleted)


def test_a_second_attempt_never_replaces_the_committed_result(aws):
    """Two hosts ran the same job (a late heartbeat): the first receipt stays, the second
    attempt's uploads are removed, and its message is deleted."""
    s3, *_ = aws
    job = make_job()
    first, second = make_agent(aws, StandInRuntime(), "h1"), make_agent(aws, StandInRuntime(),
                                                                         "h2")
    assert first.run_job(job, "h1-a")[0] == "committed"
    # The second attempt started before the first committed: it does not see the receipt.
    second_s3 = _without_receipt_check(s3)
    second.s3 = second_s3
    assert second.run_job(job, "h2-b")[0] == "duplicate"
    committed = json.loads(s3.get_object(Bucket=BUCKET, Key=receipt_key("job-1"))["Body"].read())
    assert committed["job"]["host"] == "h1"
    versions = s3.list_object_versions(Bucket=BUCKET, Prefix="results/").get("Versions", [])
    assert [v["Key"] for v in versions].count(receipt_key("job-1")) == 1
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="results/job-1/attempts/h2-b/")
    assert listed.get("KeyCount", 0) == 0


def _without_receipt_check(s3: Any) -> Any:
    class Late:
        def __getattr__(self, name: str) -> Any:
            return getattr(s3, name)

        def head_object(self, **kwargs: Any) -> Any:
            error = s3.exceptions.ClientError(
                {"Error": {"Code": "404"}, "ResponseMetadata": {"HTTPStatusCode": 404}},
                "HeadObject")
            raise error
    return Late()


def test_a_redelivered_committed_job_is_not_run_again(aws):
    send(aws, make_job())
    runtime = StandInRuntime()
    make_agent(aws, runtime).run_job(make_job(), "h1-a")
    outcome = make_agent(aws, runtime).handle(take(aws))
    assert outcome.status == "duplicate" and len(runtime.runs) == 1


def test_a_refused_job_records_its_reason_and_reaches_the_dlq_at_the_receive_limit(aws):
    s3, sqs, queue, dlq = aws
    send(aws, make_job(entrypoint="train"))
    refusal = ApiError("enclave runtime: unknown entrypoint 'train'", code="bad_request",
                       http_status=400)
    agent = make_agent(aws, StandInRuntime(refuse=refusal))
    for _ in range(2):  # maxReceiveCount
        assert agent.handle(take(aws)).status == "refused"
    assert sqs.receive_message(QueueUrl=queue).get("Messages") is None
    [dead] = sqs.receive_message(QueueUrl=dlq)["Messages"]
    assert json.loads(dead["Body"])["job_id"] == "job-1"
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="results/job-1/attempts/")["Contents"]
    reasons = [json.loads(s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read())["reason"]
               for o in listed]
    assert reasons == ["enclave runtime: unknown entrypoint 'train'"] * 2
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET, Prefix=receipt_key("job-1"))


def test_a_busy_enclave_releases_the_job_without_recording_a_refusal(aws):
    s3, sqs, queue, _ = aws
    send(aws, make_job())
    busy = ApiError("busy", code="busy", http_status=429)
    assert make_agent(aws, StandInRuntime(refuse=busy)).handle(take(aws)).status == "released"
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="results/").get("KeyCount") == 0
    assert take(aws)  # back on the queue at once (visibility 0), not after the timeout


def test_an_app_that_fails_is_a_result_not_a_refusal(aws):
    s3, *_ = aws
    send(aws, make_job())
    outcome = make_agent(aws, StandInRuntime(failing=True)).handle(take(aws))
    assert outcome.status == "committed"
    committed = json.loads(s3.get_object(Bucket=BUCKET, Key=receipt_key("job-1"))["Body"].read())
    assert committed["receipt"]["state"] == "failed" and committed["job"]["outputs"] == {}


def test_a_stopping_agent_takes_no_new_job(aws):
    _, sqs, queue, _ = aws
    send(aws, make_job())
    agent = make_agent(aws, StandInRuntime())
    agent.stop()
    agent.serve()
    assert agent.outcomes == []
    assert take(aws)


def test_a_job_naming_a_missing_input_is_refused_with_the_object_named(aws):
    s3, *_ = aws
    job = Job(job_id="job-2", bundle=f"s3://{BUCKET}/encrypted-apps/app.sealed",
              entrypoint="predict", inputs={"a.csv": f"s3://{BUCKET}/jobs/inputs/gone.csv"},
              args=("a.csv",))
    send(aws, job)
    outcome = make_agent(aws, StandInRuntime()).handle(take(aws))
    assert outcome.status == "refused" and "jobs/inputs/gone.csv" in outcome.reason


def test_an_unexpected_failure_releases_the_job_and_the_agent_goes_on(aws):
    send(aws, make_job())

    class Broken(StandInRuntime):
        def upload(self, path: str, source: Any, size: int) -> dict[str, Any]:
            raise OSError("connection reset")

    agent = make_agent(aws, Broken())
    assert agent.handle(take(aws)).status == "released"
    assert take(aws)  # at once, not after the visibility timeout


def test_the_heartbeat_keeps_a_long_job_hidden_and_stops_with_it(aws):
    import time

    from client.agent import Heartbeat

    _, sqs, queue, _ = aws
    send(aws, make_job())
    [message] = sqs.receive_message(QueueUrl=queue, VisibilityTimeout=1)["Messages"]
    with Heartbeat(sqs, queue, message["ReceiptHandle"], timeout=1):
        deadline = time.monotonic() + 2.5  # over twice the visibility timeout
        while time.monotonic() < deadline:
            assert sqs.receive_message(QueueUrl=queue).get("Messages") is None
            time.sleep(0.25)
    time.sleep(1.3)
    assert sqs.receive_message(QueueUrl=queue).get("Messages")  # no beat: it reappears
