"""A job message that does not follow the job format is refused with what is wrong
(client/jobs.py `job_from_message`): the agent never stages or runs it."""

from __future__ import annotations

import json

import pytest

from client.jobs import MAX_MESSAGE_BYTES, JobError, job_from_message

GOOD = {"format": 1, "job_id": "job-1", "bundle": "s3://bucket-a/app.sealed",
        "entrypoint": "predict", "inputs": {"in.csv": "s3://bucket-a/in.csv"},
        "args": ["in.csv", "out.csv", "--fast"], "outputs": ["out.csv"]}


def message(**changes) -> str:
    return json.dumps({**GOOD, **changes})


def test_a_good_message_points_its_file_arguments_at_the_jobs_staged_copies():
    job = job_from_message(message())
    assert job.enclave_args() == ["job-1.in.csv", "job-1.out.csv", "--fast"]
    assert job_from_message(job.to_message()) == job


@pytest.mark.parametrize(("body", "text"), [
    (" " * (MAX_MESSAGE_BYTES + 1), "job message over"),
    ("{", "is not JSON"),
    ("[]", "is not a JSON object"),
    (message(extra=1), "unknown fields ['extra']"),
    (message(format=2), "does not follow format 1"),
    (message(inputs=[]), "inputs must be an object, args and outputs lists"),
    (message(job_id=5), "job_id, bundle and entrypoint must be strings"),
    (message(job_id="Job_1"), "job id 'Job_1' is invalid"),
    (message(bundle="https://example.com/x"), "is not an S3 object URI"),
    (message(bundle="s3://bucket-a/../other"), "is not an S3 object URI"),
    (message(entrypoint="a b"), "entrypoint 'a b' is invalid"),
    (message(inputs={"../x": "s3://bucket-a/x"}), "input name '../x' is invalid"),
    (message(outputs=[".hidden"]), "output name '.hidden' is invalid"),
    (message(outputs=["out.csv", "out.csv"]), "an output is named twice"),
    (message(outputs=["in.csv"]), "a name is both an input and an output"),
    (message(args=[1]), "each argument must be a string"),
    (message(args=["x" * 4097]), "at most 4096 characters"),
])
def test_a_message_off_the_format_is_refused_with_what_is_wrong(body, text):
    with pytest.raises(JobError) as caught:
        job_from_message(body)
    assert text in str(caught.value)
