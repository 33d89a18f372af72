"""The host agent: takes jobs from the fleet's SQS queue and runs them in this host's enclave.

Per message: long-poll; keep the message invisible while the job runs (a heartbeat extends its
visibility); download the bundle and inputs from S3 and push them; run the entrypoint; pull the
outputs; upload them under this attempt's prefix; commit `results/<job-id>/receipt.json` with
`If-None-Match: *`; delete the message. The conditional write is what makes redelivery safe: a
job SQS hands out twice (a host died after committing, a heartbeat came late) keeps the first
committed result, and a later attempt only removes its own uploads.

A job the enclave refuses (bad bundle, an entrypoint or arguments the manifest does not allow)
is released at once with its reason written to the bucket; SQS's redrive policy moves it to the
dead-letter queue once it has been received `maxReceiveCount` times. The agent never decides
that itself: the queue's policy is the one place the limit lives.
"""

from __future__ import annotations

import json
import logging
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.api import RuntimeClient
from client.api_errors import ApiError
from client.commands.receipt import fetch_receipt_file
from client.commands.verify_receipt import file_sha256
from client.errors import ClientError
from client.jobs import (
    Job,
    JobError,
    attempt_prefix,
    job_from_message,
    parse_s3_uri,
    receipt_key,
    refusal_key,
)

LOG = logging.getLogger("sealed.agent")
RUN_POLL_SECONDS = 0.05
TERMINAL_STATES = ("succeeded", "failed", "timed_out", "cancelled")


class JobRefused(Exception):
    """The enclave will not run this job as given: retrying on another host cannot help."""


class JobReleased(Exception):
    """This host cannot take the job now (enclave busy, stopping): give it back to the queue."""


@dataclass
class AgentSettings:
    queue_url: str
    bucket: str
    host_id: str
    visibility_timeout: int = 300  # seconds a received job stays hidden between heartbeats
    wait_seconds: int = 20  # long-poll
    slots: int = 1
    stop_grace_seconds: float = 60.0


@dataclass
class JobOutcome:
    job_id: str
    status: str  # "committed", "duplicate", "refused", "released"
    seconds: float
    run_seconds: float = 0.0
    reason: str = ""


def _http_status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None) or {}
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = response.get("Error", {}).get("Code")
    if status is None and isinstance(code, str) and code.isdigit():
        return int(code)
    return status if isinstance(status, int) else None


def is_precondition_failed(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    error = response.get("Error", {})
    return error.get("Code") in ("PreconditionFailed", "412") or \
        response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412


def object_exists(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except Exception as exc:  # botocore's ClientError: 404 means absent
        status = (getattr(exc, "response", None) or {}).get("ResponseMetadata", {}) \
            .get("HTTPStatusCode")
        if status == 404:
            return False
        raise
    return True


class Heartbeat:
    """Extends a message's visibility every third of the timeout until stopped."""

    def __init__(self, sqs: Any, queue_url: str, receipt_handle: str, timeout: int) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True,
                                        args=(sqs, queue_url, receipt_handle, timeout))

    def _beat(self, sqs: Any, queue_url: str, receipt_handle: str, timeout: int) -> None:
        while not self._stop.wait(max(timeout / 3, 0.2)):
            try:
                sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=receipt_handle,
                                              VisibilityTimeout=timeout)
            except Exception as exc:  # the job goes on; SQS may hand it out again
                LOG.warning("heartbeat failed: %s", exc)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Agent:
    """One agent per host: `slots` workers, each taking one job at a time."""

    def __init__(self, settings: AgentSettings, *, sqs: Any, s3: Any,
                 runtime: Callable[[], RuntimeClient],
                 credentials: Callable[[], dict[str, Any]]) -> None:
        self.settings = settings
        self.sqs = sqs
        self.s3 = s3
        self.runtime = runtime
        self.credentials = credentials
        self.stopping = threading.Event()
        self.outcomes: list[JobOutcome] = []
        self.last_run_state = ""

    # -- the loop ---------------------------------------------------------------------------

    def serve(self, *, max_jobs: int | None = None) -> None:
        workers = [threading.Thread(target=self._worker, args=(max_jobs,), daemon=True,
                                    name=f"slot-{n}") for n in range(self.settings.slots)]
        for worker in workers:
            worker.start()
        for worker in workers:
            while worker.is_alive():
                worker.join(timeout=0.2)

    def stop(self) -> None:
        """Take no new job; the current ones finish (or are released after the grace)."""
        self.stopping.set()

    def _worker(self, max_jobs: int | None) -> None:
        while not self.stopping.is_set():
            if max_jobs is not None and len(self.outcomes) >= max_jobs:
                return
            answer = self.sqs.receive_message(
                QueueUrl=self.settings.queue_url, MaxNumberOfMessages=1,
                WaitTimeSeconds=self.settings.wait_seconds,
                VisibilityTimeout=self.settings.visibility_timeout,
                AttributeNames=["ApproximateReceiveCount"])
            for message in answer.get("Messages", []):
                if self.stopping.is_set():  # stopped during the long poll: give it back
                    self._release(message["ReceiptHandle"])
                    return
                outcome = self.handle(message)
                self.outcomes.append(outcome)
                LOG.info("job %s %s in %.3fs (run %.3fs)%s", outcome.job_id, outcome.status,
                         outcome.seconds, outcome.run_seconds,
                         f": {outcome.reason}" if outcome.reason else "")

    def handle(self, message: dict[str, Any]) -> JobOutcome:
        started = time.monotonic()
        handle = message["ReceiptHandle"]
        attempt = f"{self.settings.host_id}-{secrets.token_hex(4)}"
        try:
            job = job_from_message(message["Body"])
        except JobError as exc:
            # No job id to record a reason under: left to the redrive policy, logged here.
            self._release(handle)
            return JobOutcome("-", "refused", time.monotonic() - started, reason=str(exc))
        try:
            with Heartbeat(self.sqs, self.settings.queue_url, handle,
                           self.settings.visibility_timeout):
                status, run_seconds = self.run_job(job, attempt)
        except JobRefused as exc:
            self._record_refusal(job, attempt, message, str(exc))
            self._release(handle)
            return JobOutcome(job.job_id, "refused", time.monotonic() - started,
                              reason=str(exc))
        except Exception as exc:  # enclave busy or gone, S3 or SQS failing: another try later
            LOG.warning("job %s released: %s: %s", job.job_id, type(exc).__name__, exc)
            self._release(handle)
            return JobOutcome(job.job_id, "released", time.monotonic() - started,
                              reason=str(exc))
        self.sqs.delete_message(QueueUrl=self.settings.queue_url, ReceiptHandle=handle)
        return JobOutcome(job.job_id, status, time.monotonic() - started, run_seconds,
                          reason=self.last_run_state)

    # -- one job ----------------------------------------------------------------------------

    def run_job(self, job: Job, attempt: str) -> tuple[str, float]:
        """Run `job` once and commit its result; "duplicate" if another attempt committed."""
        bucket = self.settings.bucket
        if object_exists(self.s3, bucket, receipt_key(job.job_id)):
            return "duplicate", 0.0  # committed earlier; the message outlived its host
        with tempfile.TemporaryDirectory(prefix="sealed-job-") as scratch, \
                self.runtime() as client:
            staged = self._push(client, job, Path(scratch))
            try:
                run_started = time.monotonic()
                record = self._run(client, job)
                run_seconds = time.monotonic() - run_started
                receipt_file = fetch_receipt_file(client, str(record["id"]))
                # A run that failed is a result too (its receipt says so); it may lack outputs.
                produced = set(receipt_file["receipt"].get("outputs") or {})
                outputs = self._upload_outputs(client, job, attempt, Path(scratch), produced)
            finally:
                self._clean(client, staged + [("outbox", job.staged_name(n))
                                              for n in job.outputs])
        receipt_file["job"] = {"job_id": job.job_id, "attempt": attempt,
                               "host": self.settings.host_id, "outputs": outputs,
                               "staged_names": {n: job.staged_name(n)
                                                for n in (*job.inputs, *job.outputs)}}
        body = json.dumps(receipt_file, indent=2, sort_keys=True).encode()
        try:
            self.s3.put_object(Bucket=bucket, Key=receipt_key(job.job_id), Body=body,
                               IfNoneMatch="*", ContentType="application/json")
        except Exception as exc:
            if not is_precondition_failed(exc):
                raise
            self._delete_attempt(job, attempt, outputs)
            return "duplicate", run_seconds
        return "committed", run_seconds

    def _push(self, client: RuntimeClient, job: Job, scratch: Path) -> list[tuple[str, str]]:
        staged: list[tuple[str, str]] = []
        files = {"bundle.sealed": job.bundle, **job.inputs}
        for name, uri in files.items():
            bucket, key = parse_s3_uri(uri)
            local = scratch / name
            try:
                self.s3.download_file(bucket, key, str(local))
            except Exception as exc:
                if _http_status(exc) in (403, 404):
                    raise JobRefused(f"cannot read {uri} ({_http_status(exc)}): the job names "
                                     "an object that is missing or not the host's to read") \
                        from exc
                raise
            remote = job.staged_name(name)
            with local.open("rb") as source:
                client.upload(remote, source, local.stat().st_size)
            staged.append(("inbox", remote))
            local.unlink()
        return staged

    def _run(self, client: RuntimeClient, job: Job) -> dict[str, Any]:
        try:
            started = client.start_run(bundle=job.staged_name("bundle.sealed"),
                                       entrypoint=job.entrypoint, args=job.enclave_args(),
                                       credentials=self.credentials())
        except ApiError as exc:
            if exc.code == "busy" or exc.http_status in (429, 503):
                raise JobReleased(str(exc)) from exc
            if 400 <= exc.http_status < 500:
                raise JobRefused(str(exc)) from exc
            raise
        run_id = str(started["id"])
        grace_deadline: float | None = None
        while True:
            record = client.get_run(run_id)
            if record.get("state") in TERMINAL_STATES:
                break
            if self.stopping.is_set():
                grace_deadline = grace_deadline or \
                    time.monotonic() + self.settings.stop_grace_seconds
                if time.monotonic() > grace_deadline:
                    client.cancel_run(run_id)
                    raise JobReleased("the agent is stopping and the run outlasted the grace")
            time.sleep(RUN_POLL_SECONDS)
        self.last_run_state = f"{record.get('state')} exit {record.get('exit_code')} " \
            f"{record.get('error') or ''}".strip()
        if record.get("state") == "failed" and record.get("exit_code") is None:
            # The application never ran: the enclave refused the bundle or its arguments.
            raise JobRefused(str(record.get("error") or "the enclave refused the run"))
        return record

    def _upload_outputs(self, client: RuntimeClient, job: Job, attempt: str,
                        scratch: Path, produced: set[str]) -> dict[str, dict[str, str]]:
        uploaded = {}
        for name in job.outputs:
            if job.staged_name(name) not in produced:
                continue
            local = scratch / name
            with local.open("wb") as sink:
                client.download("outbox", job.staged_name(name), sink)
            key = attempt_prefix(job.job_id, attempt) + name
            self.s3.upload_file(str(local), self.settings.bucket, key)
            uploaded[name] = {"key": key, "sha256": file_sha256(local)}
        return uploaded

    def _clean(self, client: RuntimeClient, files: list[tuple[str, str]]) -> None:
        for area, name in files:
            try:
                client.delete(area, name)
            except ClientError:
                pass  # absent (the run made no such output) or already gone

    def _delete_attempt(self, job: Job, attempt: str, outputs: dict[str, dict[str, str]]) -> None:
        for output in outputs.values():
            self.s3.delete_object(Bucket=self.settings.bucket, Key=output["key"])

    def _record_refusal(self, job: Job, attempt: str, message: dict[str, Any],
                        reason: str) -> None:
        record = {"job_id": job.job_id, "attempt": attempt, "host": self.settings.host_id,
                  "reason": reason,
                  "receive_count": int(message.get("Attributes", {})
                                       .get("ApproximateReceiveCount", 0)),
                  "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.s3.put_object(Bucket=self.settings.bucket, Key=refusal_key(job.job_id, attempt),
                           Body=json.dumps(record, sort_keys=True).encode(),
                           IfNoneMatch="*", ContentType="application/json")

    def _release(self, receipt_handle: str) -> None:
        try:
            self.sqs.change_message_visibility(QueueUrl=self.settings.queue_url,
                                               ReceiptHandle=receipt_handle, VisibilityTimeout=0)
        except Exception as exc:  # it reappears after its timeout anyway
            LOG.warning("could not release a message: %s", exc)
