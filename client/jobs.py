"""A fleet job: what goes on the queue, and where its files and result live in the bucket.

One definition shared by `jobs submit` (which writes it), the host agent (which runs it) and
`jobs status|results` (which read what the agent left). The bucket layout:

- `jobs/<job-id>.json`: the job as submitted (for `jobs list` and `jobs status`);
- `results/<job-id>/attempts/<attempt>/<output>`: the outputs of one attempt;
- `results/<job-id>/attempts/<attempt>/refused.json`: why the enclave refused an attempt;
- `results/<job-id>/receipt.json`: the commit. Written with `If-None-Match: *`, so exactly one
  attempt's receipt (a `receipt -o` file plus a `job` section naming that attempt's outputs)
  ever exists, however often SQS delivers the job.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from client.errors import UsageError

JOB_FORMAT = 1
JOBS_PREFIX = "jobs/"
RESULTS_PREFIX = "results/"
MAX_MESSAGE_BYTES = 64 * 1024
JOB_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
# A flat file name in the exchange area: what the manifest's args refer to.
FILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
S3_URI_RE = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(.+)$")
JOB_FIELDS = {"format", "job_id", "bundle", "entrypoint", "inputs", "args", "outputs"}


class JobError(UsageError):
    """A job message or submission that does not follow the job format."""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    match = S3_URI_RE.fullmatch(uri)
    if not match or ".." in match.group(2).split("/"):
        raise JobError(f"{uri!r} is not an S3 object URI; expected s3://BUCKET/KEY")
    return match.group(1), match.group(2)


def new_job_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Job:
    job_id: str
    bundle: str  # s3:// URI of the sealed bundle
    entrypoint: str
    inputs: dict[str, str] = field(default_factory=dict)  # file name in the inbox -> s3:// URI
    args: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()  # file names in the outbox to keep

    def __post_init__(self) -> None:
        if not JOB_ID_RE.fullmatch(self.job_id):
            raise JobError(f"job id {self.job_id!r} is invalid: expected lowercase letters, "
                           "digits and '-'")
        parse_s3_uri(self.bundle)
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.entrypoint):
            raise JobError(f"entrypoint {self.entrypoint!r} is invalid: expected a name such as "
                           "predict")
        for name, uri in self.inputs.items():
            _file_name(name, "input")
            parse_s3_uri(uri)
        for name in self.outputs:
            _file_name(name, "output")
        if len(set(self.outputs)) != len(self.outputs):
            raise JobError("an output is named twice; name each once")
        if set(self.inputs) & set(self.outputs):
            raise JobError("a name is both an input and an output; use two names")
        for arg in self.args:
            if not isinstance(arg, str) or len(arg) > 4096:
                raise JobError("each argument must be a string of at most 4096 characters")

    def to_json(self) -> dict[str, Any]:
        return {"format": JOB_FORMAT, "job_id": self.job_id, "bundle": self.bundle,
                "entrypoint": self.entrypoint, "inputs": dict(self.inputs),
                "args": list(self.args), "outputs": list(self.outputs)}

    def to_message(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    def staged_name(self, name: str) -> str:
        """`name` as this job's file in the exchange area: prefixed with the job id, so jobs
        sharing one enclave (several slots) never see each other's files."""
        return f"{self.job_id}.{name}"

    def enclave_args(self) -> list[str]:
        """The arguments as the enclave gets them: those naming an input or output file point
        at this job's staged copy; every other value is passed as given."""
        files = set(self.inputs) | set(self.outputs)
        return [self.staged_name(arg) if arg in files else arg for arg in self.args]


def _file_name(name: str, kind: str) -> None:
    if not isinstance(name, str) or not FILE_NAME_RE.fullmatch(name):
        raise JobError(f"{kind} name {name!r} is invalid: expected a plain file name such as "
                       "patients.csv")


def job_from_message(body: str | bytes) -> Job:
    """Parse and check a queue message; anything else is a `JobError` naming the problem."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise JobError(f"job message over {MAX_MESSAGE_BYTES} bytes")
    try:
        raw = json.loads(body)
    except ValueError as exc:
        raise JobError(f"job message is not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise JobError("job message is not a JSON object")
    unknown, missing = set(raw) - JOB_FIELDS, JOB_FIELDS - set(raw)
    if unknown or missing or raw.get("format") != JOB_FORMAT:
        raise JobError(f"job message does not follow format {JOB_FORMAT}: unknown fields "
                       f"{sorted(unknown)}, missing {sorted(missing)}")
    if not isinstance(raw["inputs"], dict) or not isinstance(raw["args"], list) \
            or not isinstance(raw["outputs"], list):
        raise JobError("job message: inputs must be an object, args and outputs lists")
    for value in (raw["job_id"], raw["bundle"], raw["entrypoint"]):
        if not isinstance(value, str):
            raise JobError("job message: job_id, bundle and entrypoint must be strings")
    return Job(job_id=raw["job_id"], bundle=raw["bundle"], entrypoint=raw["entrypoint"],
               inputs=dict(raw["inputs"]), args=tuple(raw["args"]),
               outputs=tuple(raw["outputs"]))


def job_key(job_id: str) -> str:
    return f"{JOBS_PREFIX}{job_id}.json"


def receipt_key(job_id: str) -> str:
    return f"{RESULTS_PREFIX}{job_id}/receipt.json"


def attempt_prefix(job_id: str, attempt: str) -> str:
    return f"{RESULTS_PREFIX}{job_id}/attempts/{attempt}/"


def refusal_key(job_id: str, attempt: str) -> str:
    return attempt_prefix(job_id, attempt) + "refused.json"
