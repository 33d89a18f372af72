#!/usr/bin/env python3
"""The fleet on one machine: moto (S3 and SQS) as AWS, three simulated hosts, 30 jobs, one host
lost midway, one poison job. `make fleet-demo` runs it; `tests/test_fleet_demo.py` too.

Each host is a `simulate up` with its own state directory (its own local KMS, NSM and runtime
processes) plus a `python -m client agent`. The hosts' local KMS processes start from one copy of
the first host's key store and development PKI: on AWS every host calls the same regional KMS
key and every enclave's documents chain to the same Nitro root, so the copies stand for that one
key and that one root, while each host still has processes of its own to lose.

What it prints is counted from S3 and SQS at the end (receipts that verify, refusals, the queues'
counters), never from what the agents logged.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

PROJECT_ROOT = Path(__file__).resolve().parent
APP = PROJECT_ROOT / "src" / "sample-inference"
PATIENTS = PROJECT_ROOT / "samples" / "host-data" / "patients.csv"
BUCKET = "sealed-fleet-demo"
REGION = "us-east-1"
DEFAULT_TEMPLATE = PROJECT_ROOT / "cdk.out" / "ThirdPartyStack.template.json"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def max_receive_count() -> int:
    context = json.loads((PROJECT_ROOT / "cdk.json").read_text())["context"]
    return int(context.get("JobMaxReceiveCount", 3))


@dataclass
class Host:
    name: str
    sim_dir: Path
    agent: subprocess.Popen | None = None
    log: Path | None = None

    def state(self) -> dict[str, Any]:
        return json.loads((self.sim_dir / "state.json").read_text())


@dataclass
class Fleet:
    work: Path
    template: Path
    visibility_timeout: int = 4
    hosts: list[Host] = field(default_factory=list)
    moto: subprocess.Popen | None = None
    endpoint: str = ""
    queue_url: str = ""
    dlq_url: str = ""
    bundle_uri: str = ""

    # -- AWS side -------------------------------------------------------------------------

    def aws_env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL_S3": self.endpoint, "AWS_ENDPOINT_URL_SQS": self.endpoint,
                "AWS_ACCESS_KEY_ID": "fleet-demo", "AWS_SECRET_ACCESS_KEY": "fleet-demo",
                "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
                "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id="fleet-demo",
                            aws_secret_access_key="fleet-demo")  # noqa: S106 - moto's

    def start_aws(self) -> None:
        port = free_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        log = (self.work / "moto.log").open("ab")
        self.moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                      "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline or self.moto.poll() is not None:
                    raise RuntimeError(f"moto server did not start; see {log.name}") from None
                time.sleep(0.1)
        s3 = self.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        # Versioned as HostStack's bucket is: an overwritten receipt would show as a version.
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        sqs = self.client("sqs")
        self.dlq_url = sqs.create_queue(QueueName="sealed-jobs-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=self.dlq_url, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        self.queue_url = sqs.create_queue(QueueName="sealed-jobs", Attributes={
            "VisibilityTimeout": str(self.visibility_timeout),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                         "maxReceiveCount": str(max_receive_count())}),
        })["QueueUrl"]

    # -- hosts ----------------------------------------------------------------------------

    def env_for(self, host: Host) -> dict[str, str]:
        env = dict(os.environ, **self.aws_env(), SEALED_SIM_DIR=str(host.sim_dir),
                   SEALED_STATE_DIR=str(host.sim_dir / "host"), PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT),
                                                          env.get("PYTHONPATH")]))
        env["PATH"] = f"{Path(sys.executable).parent}:/usr/bin:/bin"  # no nitro-cli
        return env

    def start_host(self, name: str) -> Host:
        host = Host(name, Path(tempfile.mkdtemp(prefix=f"fleet-{name}-", dir="/tmp")))
        if self.hosts:  # one regional key and one root for the whole fleet: see the docstring
            first = self.hosts[0].sim_dir
            for part in ("kms", "pki"):
                shutil.copytree(first / part, host.sim_dir / part, dirs_exist_ok=True)
            (host.sim_dir / "kms" / ".lock").unlink(missing_ok=True)
        # Each runtime its own run uids: one kernel here, one per enclave on AWS.
        uid_base = str(61000 + 100 * len(self.hosts))
        done = subprocess.run([sys.executable, "-m", "client", "simulate", "up", "--template",
                               str(self.template), "--app-uid-base", uid_base],
                              env=self.env_for(host), check=False, capture_output=True,
                              text=True, cwd=PROJECT_ROOT, timeout=180)
        if done.returncode:
            raise RuntimeError(f"simulate up for {name} failed: {done.stderr.strip()}")
        self.hosts.append(host)
        return host

    def start_agent(self, host: Host, *extra: str) -> None:
        host.log = self.work / f"agent-{host.name}.log"
        with host.log.open("ab") as log:
            host.agent = subprocess.Popen(
                [sys.executable, "-m", "client", "agent", "--queue-url", self.queue_url,
                 "--bucket", BUCKET, "--host-id", host.name, "--visibility-timeout",
                 str(self.visibility_timeout), "--wait", "1", *extra],
                env=self.env_for(host), stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
                start_new_session=True)

    def kill_host(self, host: Host) -> None:
        """SIGKILL the agent and the enclave runtime: no goodbye, no cleanup."""
        if host.agent is not None:
            os.kill(host.agent.pid, signal.SIGKILL)
            host.agent.wait()
        os.kill(host.state()["runtime"]["pid"], signal.SIGKILL)

    def stop_agents_gracefully(self) -> dict[str, bool]:
        """SIGTERM each running agent; True where it exited 0 saying it stopped on SIGTERM."""
        running = [h for h in self.hosts if h.agent is not None and h.agent.poll() is None]
        for host in running:
            assert host.agent is not None
            host.agent.terminate()
        stopped = {}
        for host in running:
            assert host.agent is not None and host.log is not None
            try:
                code = host.agent.wait(timeout=30)
            except subprocess.TimeoutExpired:
                code = None
            stopped[host.name] = code == 0 and "(SIGTERM)" in host.log.read_text()
        return stopped

    def stop(self) -> None:
        for host in self.hosts:
            if host.agent is not None and host.agent.poll() is None:
                host.agent.terminate()  # the graceful path: finish or release, then exit
        for host in self.hosts:
            if host.agent is not None:
                try:
                    host.agent.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    host.agent.kill()
            subprocess.run([sys.executable, "-m", "client", "simulate", "down", "--purge"],
                           env=self.env_for(host), capture_output=True, cwd=PROJECT_ROOT,
                           timeout=60, check=False)
        if self.moto is not None:
            self.moto.terminate()
            self.moto.wait(timeout=10)

    # -- the third party and the users ----------------------------------------------------

    def seal_and_upload(self) -> None:
        state = self.hosts[0].state()
        principal = state["principals"]["third_party"]
        sealed = self.work / "app.sealed"
        env = dict(os.environ, AWS_ENDPOINT_URL_KMS=state["kms"]["endpoint"],
                   AWS_ACCESS_KEY_ID=principal["access_key_id"],
                   AWS_SECRET_ACCESS_KEY=principal["secret_access_key"],
                   AWS_SESSION_TOKEN=principal["session_token"], AWS_REGION=state["region"],
                   AWS_DEFAULT_REGION=state["region"])
        done = subprocess.run([sys.executable, "envelope_encryptor.py", "encrypt", "-d", str(APP),
                        "-k", "alias/enclavekey", "-o", str(sealed)], cwd=PROJECT_ROOT,
                       env=env, check=False, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"sealing failed: {done.stderr.strip()}")
        key = "encrypted-apps/sample-inference.sealed"
        self.client("s3").upload_file(str(sealed), BUCKET, key)
        self.bundle_uri = f"s3://{BUCKET}/{key}"

    def upload_inputs(self, count: int, rows: int = 20) -> list[str]:
        """`count` small patient files, each a different slice of the sample data."""
        lines = PATIENTS.read_text().splitlines()
        header, body = lines[0], lines[1:]
        s3 = self.client("s3")
        uris = []
        for n in range(count):
            start = (n * rows) % max(len(body) - rows, 1)
            key = f"jobs/inputs/patients-{n:03d}.csv"
            text = "\n".join([header, *body[start:start + rows]]) + "\n"
            s3.put_object(Bucket=BUCKET, Key=key, Body=text.encode())
            uris.append(f"s3://{BUCKET}/{key}")
        return uris

    def submit(self, input_uri: str, *, entrypoint: str = "predict") -> str:
        done = subprocess.run(
            [sys.executable, "-m", "client", "jobs", "submit", "--queue-url", self.queue_url,
             "--bucket", BUCKET, "--bundle", self.bundle_uri, "--entrypoint", entrypoint,
             "--input", f"patients.csv={input_uri}", "--arg", "patients.csv", "--arg",
             "scores.csv", "--arg", "0.3", "--output", "scores.csv"],
            env=dict(os.environ, **self.aws_env()), capture_output=True, text=True, check=True,
            cwd=PROJECT_ROOT, timeout=60)
        return done.stdout.strip()


@contextlib.contextmanager
def running_fleet(work: Path, template: Path, host_count: int,
                  visibility_timeout: int = 4) -> Iterator[Fleet]:
    fleet = Fleet(work=work, template=template, visibility_timeout=visibility_timeout)
    try:
        fleet.start_aws()
        for n in range(host_count):
            fleet.start_host(f"host{n + 1}")
        fleet.seal_and_upload()
        yield fleet
    finally:
        fleet.stop()
        for host in fleet.hosts:
            shutil.rmtree(host.sim_dir, ignore_errors=True)


# -- counting what is there ----------------------------------------------------------------------


def count_results(fleet: Fleet, job_ids: list[str]) -> dict[str, Any]:
    """Receipts in S3, each verified against the fleet's PCR0 and root with its output."""
    from client.commands.jobs import verify_job_result
    from client.jobs import RESULTS_PREFIX, receipt_key

    s3 = fleet.client("s3")
    state = fleet.hosts[0].state()
    pcr0 = bytes.fromhex(state["measurements"]["PCR0"])
    root = Path(state["dev_root"]).read_bytes()
    keys = [entry["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET,
                                                                     Prefix=RESULTS_PREFIX)
            for entry in page.get("Contents", [])]
    receipts = [k for k in keys if k.endswith("/receipt.json")]
    versions = s3.list_object_versions(Bucket=BUCKET, Prefix=RESULTS_PREFIX).get("Versions", [])
    verified, hosts = 0, {}
    with tempfile.TemporaryDirectory() as scratch:
        for job_id in job_ids:
            try:
                body = s3.get_object(Bucket=BUCKET, Key=receipt_key(job_id))["Body"].read()
            except s3.exceptions.NoSuchKey:
                continue
            receipt_file = json.loads(body)
            out = Path(scratch) / job_id
            out.mkdir()
            for name, output in receipt_file["job"]["outputs"].items():
                s3.download_file(BUCKET, output["key"], str(out / name))
            verify_job_result(receipt_file, out, expected_pcrs={0: pcr0}, root_pem=root)
            verified += 1
            hosts[job_id] = receipt_file["job"]["host"]
    return {"receipts": len(receipts),
            "receipt_versions": sum(1 for v in versions if v["Key"].endswith("/receipt.json")),
            "jobs_with_receipt": len(hosts), "verified": verified, "hosts": hosts}


def queue_counts(fleet: Fleet, url: str) -> dict[str, int]:
    attributes = fleet.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return {"visible": int(attributes["ApproximateNumberOfMessages"]),
            "in_flight": int(attributes["ApproximateNumberOfMessagesNotVisible"])}


def dead_letters(fleet: Fleet) -> list[dict[str, Any]]:
    """The DLQ's jobs, each with the refusal reasons recorded for it (peeked, not consumed)."""
    from client.commands.jobs import job_state
    from client.jobs import job_from_message

    sqs, s3 = fleet.client("sqs"), fleet.client("s3")
    found = []
    messages = sqs.receive_message(QueueUrl=fleet.dlq_url, MaxNumberOfMessages=10,
                                   VisibilityTimeout=0, AttributeNames=["All"]).get("Messages", [])
    for message in messages:
        job = job_from_message(message["Body"])
        state = job_state(s3, BUCKET, job.job_id)
        found.append({"job_id": job.job_id, "receives": int(message["Attributes"][
            "ApproximateReceiveCount"]), "state": state["state"], "reason": state.get("reason"),
                      "refusals": state.get("refusals", 0)})
    return found


# -- the demo ------------------------------------------------------------------------------------


def wait_until(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")


def running_job_of(host: Host, job_ids: list[str]) -> str | None:
    """The job (one of `job_ids`) the host's runtime is running now, from its own run list."""
    from client.api import RuntimeClient
    from client.transport import UnixAddress

    try:
        with RuntimeClient(UnixAddress(host.state()["runtime"]["socket"]), timeout=2) as client:
            for run in client.list_runs():
                if run.get("state") in ("pending", "running", "unsealing", "starting"):
                    job_id = str(run.get("bundle") or "").split(".", 1)[0]
                    if job_id in job_ids:
                        return job_id
    except Exception:
        return None
    return None


def demo(work: Path, template: Path, jobs: int = 30) -> dict[str, Any]:
    with running_fleet(work, template, 3) as fleet:
        inputs = fleet.upload_inputs(jobs)
        job_ids = [fleet.submit(uri) for uri in inputs[:jobs // 3]]
        poison = fleet.submit(inputs[0], entrypoint="train")  # not in the manifest
        job_ids += [fleet.submit(uri) for uri in inputs[jobs // 3:]]
        print(f"submitted {len(job_ids)} jobs and 1 poison job to {fleet.queue_url}", flush=True)
        for host in fleet.hosts:
            fleet.start_agent(host)
        victim = fleet.hosts[1]
        s3 = fleet.client("s3")
        from client.jobs import receipt_key

        def committed() -> int:
            count = 0
            for job_id in job_ids:
                try:
                    s3.head_object(Bucket=BUCKET, Key=receipt_key(job_id))
                    count += 1
                except s3.exceptions.ClientError:
                    pass
            return count

        # Midway: once a third of the jobs are done, while the victim is running one.
        wait_until(lambda: committed() >= len(job_ids) // 3, 180, "a third of the jobs")
        lost_job = wait_until(lambda: running_job_of(victim, job_ids), 120,
                              f"{victim.name} to run a job")
        fleet.kill_host(victim)
        print(f"killed {victim.name} (agent and enclave, SIGKILL) while it ran job {lost_job}",
              flush=True)
        def all_done() -> bool:
            return committed() == len(job_ids) and bool(dead_letters(fleet))

        wait_until(all_done, 300, "every job's receipt and the poison job in the DLQ")
        results = count_results(fleet, job_ids)
        graceful = fleet.stop_agents_gracefully()
        queue, dlq = queue_counts(fleet, fleet.queue_url), dead_letters(fleet)
        summary = {
            "jobs": len(job_ids), "receipts": results["receipts"],
            "receipt_versions": results["receipt_versions"],
            "jobs_with_one_verified_receipt": results["verified"],
            "per_host": {h.name: sum(1 for v in results["hosts"].values() if v == h.name)
                         for h in fleet.hosts},
            "lost_job": lost_job, "lost_job_completed_on": results["hosts"].get(lost_job),
            "queue": queue, "dead_letter": dlq, "poison_job": poison,
            "graceful_stops": graceful,
        }
    return summary


def check(summary: dict[str, Any]) -> list[str]:
    problems = []
    if summary["jobs_with_one_verified_receipt"] != summary["jobs"]:
        problems.append("not every job has a verified receipt")
    if summary["receipts"] != summary["jobs"] or summary["receipt_versions"] != summary["jobs"]:
        problems.append("a job has more than one receipt (or a receipt was overwritten)")
    if summary["lost_job_completed_on"] in (None, "host2"):
        problems.append("the lost host's job did not complete on another host")
    poison = [d for d in summary["dead_letter"] if d["job_id"] == summary["poison_job"]]
    if len(summary["dead_letter"]) != 1 or not poison or not poison[0]["reason"]:
        problems.append("the DLQ does not hold exactly the poison job with its reason")
    if summary["queue"] != {"visible": 0, "in_flight": 0}:
        problems.append("the job queue is not empty")
    if not summary["graceful_stops"] or not all(summary["graceful_stops"].values()):
        problems.append("an agent did not stop cleanly on SIGTERM")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE)
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--work", type=Path, metavar="DIR",
                        help="keep the agents' and moto's logs here (default: a temporary dir)")
    args = parser.parse_args(argv)
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        summary = demo(args.work, args.template, args.jobs)
    else:
        with tempfile.TemporaryDirectory(prefix="fleet-demo-") as work:
            summary = demo(Path(work), args.template, args.jobs)
    dlq = summary["dead_letter"]
    print(f"found in S3:  {summary['receipts']} receipts ({summary['receipt_versions']} object "
          f"versions) for {summary['jobs']} jobs; {summary['jobs_with_one_verified_receipt']} "
          "verify (PCR0, binding, output digest)")
    print("  per host:   " + ", ".join(f"{k} {v}" for k, v in summary["per_host"].items()))
    print(f"  lost job:   {summary['lost_job']} completed on {summary['lost_job_completed_on']}")
    print("agents:       " + ", ".join(f"{name} {'stopped on SIGTERM' if ok else 'DID NOT STOP'}"
                                       for name, ok in summary["graceful_stops"].items()))
    print(f"found in SQS: job queue {summary['queue']['visible']} visible, "
          f"{summary['queue']['in_flight']} in flight; dead-letter queue {len(dlq)} message(s)")
    for entry in dlq:
        print(f"  DLQ:        {entry['job_id']} refused {entry['refusals']} time(s) "
              f"(maxReceiveCount {max_receive_count()}): {entry['reason']}")
    problems = check(summary)
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    print("fleet demo: " + ("OK" if not problems else "FAILED"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
