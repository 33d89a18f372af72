#!/usr/bin/env python3
"""Fleet throughput and the agent's per-job overhead, side by side in one run.

One fleet (fleet_demo.py: moto S3/SQS on loopback, simulated hosts) serves three rounds of the
same small jobs with 1, 2 and 3 hosts' agents running; jobs/s is jobs / (first submit to last
receipt in S3). The overhead compares, on host 1, the agent's own time per job (receive to
delete: S3 downloads, push, run, pull, receipt, S3 uploads, the conditional commit, SQS calls)
with a direct `client run` of the same job through the same runtime API (push, run, pull,
receipt, from local files). Target: at most 200 ms per job beyond the run itself.

All the simulated hosts share this machine's cores: jobs/s with more hosts measures how the
agents share them, not what separate Nitro hosts would do (docs/scale.md has that side).
"""

from __future__ import annotations

import argparse
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from client.api import RuntimeClient  # noqa: E402
from client.commands.receipt import fetch_receipt_file  # noqa: E402
from client.commands.run import TERMINAL_STATES  # noqa: E402
from client.jobs import Job, job_key, new_job_id, receipt_key  # noqa: E402
from client.transport import UnixAddress  # noqa: E402
from fleet_demo import BUCKET, DEFAULT_TEMPLATE, Fleet, running_fleet  # noqa: E402

TARGET_OVERHEAD_SECONDS = 0.200
AGENT_LINE = re.compile(r"job (\S+) committed in ([\d.]+)s \(run ([\d.]+)s\)")


def run_round(fleet: Fleet, hosts: int, inputs: list[str]) -> tuple[float, list[str]]:
    s3, sqs = fleet.client("s3"), fleet.client("sqs")
    for host in fleet.hosts[:hosts]:
        fleet.start_agent(host)
    for host in fleet.hosts[:hosts]:  # timed from when every agent polls
        assert host.log is not None
        log = host.log
        while log.read_text().count(" serving ") < rounds_started(log) + 1:
            time.sleep(0.05)
    started = time.monotonic()
    job_ids = []
    for uri in inputs:  # what `jobs submit` does, in this process: no interpreter start per job
        job = Job(job_id=new_job_id(), bundle=fleet.bundle_uri, entrypoint="predict",
                  inputs={"patients.csv": uri}, args=("patients.csv", "scores.csv", "0.3"),
                  outputs=("scores.csv",))
        s3.put_object(Bucket=BUCKET, Key=job_key(job.job_id), Body=job.to_message().encode(),
                      IfNoneMatch="*")
        sqs.send_message(QueueUrl=fleet.queue_url, MessageBody=job.to_message())
        job_ids.append(job.job_id)
    pending = set(job_ids)
    while pending:
        for job_id in list(pending):
            try:
                s3.head_object(Bucket=BUCKET, Key=receipt_key(job_id))
                pending.discard(job_id)
            except s3.exceptions.ClientError:
                pass
        time.sleep(0.05)
    elapsed = time.monotonic() - started
    for host in fleet.hosts[:hosts]:
        assert host.agent is not None
        host.agent.send_signal(signal.SIGTERM)
        host.agent.wait(timeout=30)
    return elapsed, job_ids


def rounds_started(log: Path) -> int:
    """Agents this log saw start before the current one (one log per host, appended)."""
    return log.read_text().count("agent stopped")


def agent_seconds(log: Path, job_ids: list[str]) -> list[tuple[float, float]]:
    """(total, run) per committed job of `job_ids`, from the agent's own log."""
    wanted = set(job_ids)
    found = []
    for line in log.read_text().splitlines():
        match = AGENT_LINE.search(line)
        if match and match.group(1) in wanted:
            found.append((float(match.group(2)), float(match.group(3))))
    return found


def direct_seconds(fleet: Fleet, local_input: Path, sealed: Path,
                   count: int) -> list[tuple[float, float]]:
    """(total, run) per job of a direct `client run` path: push, run, pull, receipt."""
    from client.commands.run import run_credentials
    from client.target import Target

    state = fleet.hosts[0].state()
    target = Target(UnixAddress(state["runtime"]["socket"]), "simulation", simulation=state)
    found = []
    with RuntimeClient(target.address) as client, tempfile.TemporaryDirectory() as scratch:
        for n in range(count):
            started = time.monotonic()
            for name, path in (("bench.sealed", sealed), ("bench.csv", local_input)):
                with path.open("rb") as source:
                    client.upload(name, source, path.stat().st_size)
            run_started = time.monotonic()
            run = client.start_run(bundle="bench.sealed", entrypoint="predict",
                                   args=["bench.csv", "bench-out.csv", "0.3"],
                                   credentials=run_credentials(target))
            while (record := client.get_run(str(run["id"])))["state"] not in TERMINAL_STATES:
                time.sleep(0.05)
            run_seconds = time.monotonic() - run_started
            with (Path(scratch) / f"out-{n}.csv").open("wb") as sink:
                client.download("outbox", "bench-out.csv", sink)
            fetch_receipt_file(client, str(record["id"]))
            found.append((time.monotonic() - started, run_seconds))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE,
                        help="synthesized ThirdPartyStack template (`make synth`)")
    parser.add_argument("--jobs", type=int, default=12, help="jobs per round (default 12)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as work_dir, \
            running_fleet(Path(work_dir), args.template, 3, visibility_timeout=30) as fleet:
        work = Path(work_dir)
        inputs = fleet.upload_inputs(args.jobs)
        rounds = {}
        agent_1 = []
        for hosts in (1, 2, 3):
            elapsed, job_ids = run_round(fleet, hosts, inputs)
            rounds[hosts] = elapsed
            if hosts == 1:
                assert fleet.hosts[0].log is not None
                agent_1 = agent_seconds(fleet.hosts[0].log, job_ids)
        local_input = work / "bench.csv"
        fleet.client("s3").download_file(BUCKET, inputs[0].split("/", 3)[3], str(local_input))
        direct = direct_seconds(fleet, local_input, work / "app.sealed", args.jobs)

    print(f"fleet throughput, {args.jobs} jobs per round (all hosts share this machine's cores)")
    for hosts, elapsed in rounds.items():
        print(f"  {hosts} host(s): {args.jobs / elapsed:6.2f} jobs/s  ({elapsed:.2f} s, "
              f"x{rounds[1] / elapsed:.2f} vs 1 host)")
    agent_total = statistics.median(t for t, _ in agent_1)
    agent_run = statistics.median(r for _, r in agent_1)
    direct_total = statistics.median(t for t, _ in direct)
    direct_run = statistics.median(r for _, r in direct)
    overhead = (agent_total - agent_run) - (direct_total - direct_run)
    print("per job on host 1, medians            total     run   around the run")
    print(f"  direct client run (push/run/pull)  {direct_total * 1000:6.0f} ms "
          f"{direct_run * 1000:6.0f} ms {(direct_total - direct_run) * 1000:6.0f} ms")
    print(f"  agent (S3 + SQS + the same)        {agent_total * 1000:6.0f} ms "
          f"{agent_run * 1000:6.0f} ms {(agent_total - agent_run) * 1000:6.0f} ms")
    verdict = "within" if overhead <= TARGET_OVERHEAD_SECONDS else "OVER"
    print(f"agent overhead beyond the run: {overhead * 1000:.0f} ms per job "
          f"({verdict} the {TARGET_OVERHEAD_SECONDS * 1000:.0f} ms target); "
          f"{(agent_total - agent_run) * 1000:.0f} ms around the run in all")
    print(f"whole job, agent minus direct: {(agent_total - direct_total) * 1000:.0f} ms (the run "
          f"itself measured {(agent_run - direct_run) * 1000:+.0f} ms apart: each agent job is a "
          "new bundle path and a new input, the direct loop repeats one)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
