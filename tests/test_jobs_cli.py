"""`jobs submit | status | list | results` against moto: what each reads and how it fails."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from client.cli import main
from client.errors import ExitStatus
from client.jobs import Job, job_from_message, receipt_key, refusal_key

BUCKET = "jobs-cli-bucket"


@pytest.fixture
def aws(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        queue = boto3.client("sqs", region_name="us-east-1").create_queue(
            QueueName="jobs")["QueueUrl"]
        yield s3, queue


def submit(queue: str, capsys, *extra: str) -> str:
    code = main(["jobs", "submit", "--queue-url", queue, "--bucket", BUCKET, "--bundle",
                 f"s3://{BUCKET}/encrypted-apps/app.sealed", "--entrypoint", "predict",
                 "--input", f"patients.csv=s3://{BUCKET}/jobs/inputs/p.csv", "--arg",
                 "patients.csv", "--arg", "scores.csv", "--output", "scores.csv", *extra])
    assert code == 0
    return capsys.readouterr().out.strip()


def test_submit_queues_the_job_and_records_it(aws, capsys):
    s3, queue = aws
    job_id = submit(queue, capsys)
    [message] = boto3.client("sqs", region_name="us-east-1").receive_message(
        QueueUrl=queue)["Messages"]
    job = job_from_message(message["Body"])
    assert job.job_id == job_id and job.enclave_args() == [f"{job_id}.patients.csv",
                                                           f"{job_id}.scores.csv"]
    stored = json.loads(s3.get_object(Bucket=BUCKET, Key=f"jobs/{job_id}.json")["Body"].read())
    assert stored == job.to_json()


def test_submit_refuses_a_file_name_with_a_path(aws, capsys):
    _, queue = aws
    code = main(["jobs", "submit", "--queue-url", queue, "--bucket", BUCKET, "--bundle",
                 f"s3://{BUCKET}/a.sealed", "--entrypoint", "predict",
                 "--input", f"../etc/passwd=s3://{BUCKET}/jobs/x"])
    assert code == ExitStatus.USAGE
    assert "plain file name" in capsys.readouterr().err


def test_status_follows_the_bucket_queued_refused_done(aws, capsys):
    s3, queue = aws
    job_id = submit(queue, capsys)
    assert main(["--json", "jobs", "status", job_id, "--bucket", BUCKET]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "queued or running"
    s3.put_object(Bucket=BUCKET, Key=refusal_key(job_id, "h1-a"), Body=json.dumps(
        {"reason": "unknown entrypoint", "receive_count": 1}).encode())
    assert main(["jobs", "status", job_id, "--bucket", BUCKET]) == 0
    assert "refused 1 time(s): unknown entrypoint" in capsys.readouterr().out
    s3.put_object(Bucket=BUCKET, Key=receipt_key(job_id), Body=json.dumps(
        {"receipt": {"state": "succeeded", "exit_code": 0}, "job": {"host": "h2"}}).encode())
    assert main(["--json", "jobs", "list", "--bucket", BUCKET]) == 0
    [listed] = json.loads(capsys.readouterr().out)  # jobs/inputs/... is not a job
    assert (listed["job_id"], listed["state"], listed["host"]) == (job_id, "done", "h2")


def test_status_of_an_unknown_job_is_not_found(aws):
    assert main(["jobs", "status", "no-such-job", "--bucket", BUCKET]) == ExitStatus.NOT_FOUND


def test_results_fail_closed_without_an_expected_pcr0(aws, capsys, tmp_path):
    s3, queue = aws
    job_id = submit(queue, capsys)
    s3.put_object(Bucket=BUCKET, Key=receipt_key(job_id), Body=b"{}")
    assert main(["jobs", "results", job_id, "--bucket", BUCKET, "-o", str(tmp_path)]) == \
        ExitStatus.VERIFICATION_FAILED
    assert "--expect-pcr" in capsys.readouterr().err


def test_results_refuse_a_receipt_naming_an_output_outside_the_directory(aws, tmp_path):
    s3, queue = aws
    s3.put_object(Bucket=BUCKET, Key=receipt_key("j1"), Body=json.dumps(
        {"receipt": {}, "document": "", "job": {"outputs": {"../x": {"key": "results/x"}}}}
    ).encode())
    code = main(["jobs", "results", "j1", "--bucket", BUCKET, "-o", str(tmp_path / "out"),
                 "--expect-pcr", "0=" + "ab" * 48])
    assert code == ExitStatus.VERIFICATION_FAILED
    assert not (tmp_path / "x").exists()


def test_results_of_an_uncommitted_job_is_not_found(aws, tmp_path):
    assert main(["jobs", "results", "j2", "--bucket", BUCKET, "-o", str(tmp_path),
                 "--expect-pcr", "0=" + "ab" * 48]) == ExitStatus.NOT_FOUND


def test_job_format_refuses_unknown_fields():
    job = Job(job_id="j", bundle=f"s3://{BUCKET}/a", entrypoint="predict")
    with pytest.raises(Exception, match="unknown fields"):
        job_from_message(json.dumps({**job.to_json(), "credentials": "x"}))
