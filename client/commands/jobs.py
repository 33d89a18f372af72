"""`jobs submit | status | list | results`: fleet jobs through the SQS queue and the bucket.

`submit` writes the job to `jobs/<id>.json` and sends it to the queue; any host's agent may run
it. `status` and `list` read only the bucket (`client/jobs.py` has its layout). `results`
downloads the committed receipt and outputs and verifies them as `verify-receipt` does: the
attestation document (failing closed without an expected PCR0), that it binds the receipt, and
that each downloaded output has the digest the enclave signed.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
from pathlib import Path
from typing import Any

from client.attestation import verify_attestation
from client.attestation_inputs import expected_pcr_map, load_root
from client.commands.agent import BUCKET_ENV, QUEUE_ENV, aws_clients
from client.commands.verify_receipt import file_sha256, read_document_text
from client.errors import NotFoundError, UsageError, VerificationError
from client.jobs import (
    JOBS_PREFIX,
    RESULTS_PREFIX,
    Job,
    JobError,
    job_key,
    new_job_id,
    receipt_key,
)
from client.output import emit
from enclave.receipt import receipt_user_data


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("jobs", parents=parents, help="fleet jobs: submit, status, "
                                   "list, results", description=__doc__.split("\n\n")[0])
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bucket", default=os.environ.get(BUCKET_ENV), metavar="NAME",
                        help=f"the sharing bucket (default: ${BUCKET_ENV})")
    submit = actions.add_parser("submit", parents=[*parents, common], help="queue a job")
    submit.add_argument("--queue-url", default=os.environ.get(QUEUE_ENV), metavar="URL",
                        help=f"the job queue (default: ${QUEUE_ENV})")
    submit.add_argument("--bundle", required=True, metavar="S3_URI")
    submit.add_argument("--entrypoint", required=True)
    submit.add_argument("--input", action="append", default=[], metavar="NAME=S3_URI",
                        help="an input file the enclave gets as NAME (repeatable)")
    submit.add_argument("--arg", action="append", default=[], metavar="VALUE",
                        help="an argument, in order; an input or output NAME stands for that "
                             "file (repeatable)")
    submit.add_argument("--output", action="append", default=[], metavar="NAME",
                        help="an output file to keep (repeatable)")
    submit.set_defaults(func=submit_command)
    status = actions.add_parser("status", parents=[*parents, common], help="one job's state")
    status.add_argument("job_id", metavar="ID")
    status.set_defaults(func=status_command)
    listing = actions.add_parser("list", parents=[*parents, common], help="every job's state")
    listing.set_defaults(func=list_command)
    results = actions.add_parser("results", parents=[*parents, common],
                                 help="download and verify a job's outputs and receipt")
    results.add_argument("job_id", metavar="ID")
    results.add_argument("-o", "--output-dir", type=Path, required=True, metavar="DIR")
    results.add_argument("--expect-pcr", action="append", default=[], metavar="N=HEX",
                         help="require PCR N to equal HEX (PCR0 at least)")
    results.add_argument("--root", type=Path, metavar="PEM",
                         help="trust this root instead of the pinned AWS Nitro root")
    results.set_defaults(func=results_command)


def _bucket(args: argparse.Namespace) -> str:
    if not args.bucket:
        raise UsageError(f"no bucket: pass --bucket or set ${BUCKET_ENV} (HostStack's output "
                         "BucketName)")
    return str(args.bucket)


def _name_uri(value: str) -> tuple[str, str]:
    name, sep, uri = value.partition("=")
    if not sep:
        raise JobError(f"--input {value!r} is not NAME=S3_URI")
    return name, uri


def submit_command(args: argparse.Namespace) -> int:
    bucket = _bucket(args)
    if not args.queue_url:
        raise UsageError(f"no queue: pass --queue-url or set ${QUEUE_ENV} (HostStack's output "
                         "JobQueueUrl)")
    job = Job(job_id=new_job_id(), bundle=args.bundle, entrypoint=args.entrypoint,
              inputs=dict(_name_uri(v) for v in args.input), args=tuple(args.arg),
              outputs=tuple(args.output))
    sqs, s3 = aws_clients(args.region)
    s3.put_object(Bucket=bucket, Key=job_key(job.job_id), Body=job.to_message().encode(),
                  IfNoneMatch="*", ContentType="application/json")
    sqs.send_message(QueueUrl=args.queue_url, MessageBody=job.to_message())
    emit(args, {"job_id": job.job_id}, job.job_id)
    return 0


def job_state(s3: Any, bucket: str, job_id: str) -> dict[str, Any]:
    """What the bucket says about a job: committed (with its host), refused (with the last
    reason) or queued/running."""
    try:
        body = s3.get_object(Bucket=bucket, Key=receipt_key(job_id))["Body"].read()
        receipt_file = json.loads(body)
        receipt = receipt_file.get("receipt") or {}
        return {"job_id": job_id, "state": "done", "run_state": receipt.get("state"),
                "exit_code": receipt.get("exit_code"),
                "host": (receipt_file.get("job") or {}).get("host")}
    except s3.exceptions.NoSuchKey:
        pass
    refusals = []
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{RESULTS_PREFIX}{job_id}/attempts/")
    for entry in listed.get("Contents", []):
        if entry["Key"].endswith("/refused.json"):
            refusals.append(json.loads(s3.get_object(Bucket=bucket, Key=entry["Key"])["Body"]
                                       .read()))
    if refusals:
        last = max(refusals, key=lambda r: (r.get("receive_count", 0), r.get("at", "")))
        return {"job_id": job_id, "state": "refused", "refusals": len(refusals),
                "reason": last.get("reason")}
    try:
        s3.head_object(Bucket=bucket, Key=job_key(job_id))
    except Exception:
        raise NotFoundError(f"no job {job_id} in s3://{bucket}/{JOBS_PREFIX}; check the id "
                            "(`jobs list`)") from None
    return {"job_id": job_id, "state": "queued or running"}


def _state_line(state: dict[str, Any]) -> str:
    line = f"{state['job_id']}  {state['state']}"
    if state["state"] == "done":
        line += f" ({state.get('run_state')}, exit {state.get('exit_code')}, on {state['host']})"
    if state["state"] == "refused":
        line += f" {state['refusals']} time(s): {state['reason']}"
    return line


def status_command(args: argparse.Namespace) -> int:
    _, s3 = aws_clients(args.region)
    state = job_state(s3, _bucket(args), args.job_id)
    emit(args, state, _state_line(state))
    return 0


def list_command(args: argparse.Namespace) -> int:
    bucket = _bucket(args)
    _, s3 = aws_clients(args.region)
    states = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=JOBS_PREFIX):
        for entry in page.get("Contents", []):
            name = entry["Key"][len(JOBS_PREFIX):]
            if "/" in name or not name.endswith(".json"):
                continue  # jobs/inputs/... and anything else that is not a job
            job_id = name.removesuffix(".json")
            states.append(job_state(s3, bucket, job_id))
    emit(args, states, "\n".join(_state_line(s) for s in states) or "no jobs")
    return 0


def verify_job_result(receipt_file: dict[str, Any], outputs_dir: Path, *,
                      expected_pcrs: dict[int, bytes], root_pem: bytes | None) -> dict[str, Any]:
    """Check a committed receipt file and the outputs downloaded next to it; raise on the first
    failure. The job section is the agent's word and is trusted for nothing but where to look:
    every digest compared comes from the signed receipt."""
    receipt = receipt_file.get("receipt")
    document = receipt_file.get("document")
    if not isinstance(receipt, dict) or not isinstance(document, str):
        raise VerificationError("the job's receipt.json has no receipt and document")
    nonce = bytes.fromhex(receipt_file["nonce"]) if isinstance(receipt_file.get("nonce"),
                                                               str) else None
    result = verify_attestation(read_document_text(document), expected_pcrs=expected_pcrs,
                                nonce=nonce, root_pem=root_pem)
    if result.user_data is None or not hmac.compare_digest(result.user_data,
                                                           receipt_user_data(receipt)):
        raise VerificationError("the attestation document does not bind this receipt")
    job = receipt_file.get("job") or {}
    staged = job.get("staged_names") or {}
    signed = receipt.get("outputs") or {}
    for name in job.get("outputs") or {}:
        signed_digest = signed.get(staged.get(name, name))
        actual = file_sha256(outputs_dir / name)
        if signed_digest is None or not hmac.compare_digest(actual, str(signed_digest)):
            raise VerificationError(f"output {name}: SHA-256 {actual} is not the digest the "
                                    f"enclave signed ({signed_digest})")
    return {"verified": True, "run_id": receipt.get("run_id"), "state": receipt.get("state"),
            "outputs": sorted(job.get("outputs") or {}), **result.to_json()}


def results_command(args: argparse.Namespace) -> int:
    bucket = _bucket(args)
    expected = expected_pcr_map(args.expect_pcr, any_image=False)
    root_pem = load_root(args.root)
    _, s3 = aws_clients(args.region)
    try:
        body = s3.get_object(Bucket=bucket, Key=receipt_key(args.job_id))["Body"].read()
    except s3.exceptions.NoSuchKey:
        raise NotFoundError(f"job {args.job_id} has no committed result yet; see `jobs status "
                            f"{args.job_id}`") from None
    receipt_file = json.loads(body)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "receipt.json").write_bytes(body)
    for name, output in ((receipt_file.get("job") or {}).get("outputs") or {}).items():
        if "/" in name or name in ("", ".", "..", "receipt.json"):
            raise VerificationError(f"the receipt names an output {name!r} that is not a plain "
                                    "file name")
        s3.download_file(bucket, output["key"], str(args.output_dir / name))
    data = verify_job_result(receipt_file, args.output_dir, expected_pcrs=expected,
                             root_pem=root_pem)
    emit(args, data, f"job {args.job_id}: receipt verified (run {data['run_id']}, "
                     f"{data['state']}); outputs {', '.join(data['outputs']) or 'none'} in "
                     f"{args.output_dir}")
    return 0
