"""`agent --queue-url URL --bucket NAME`: the host agent (`client/agent.py`), in the foreground.

On an enclave host it runs as the `sealed-enclave-agent` systemd service the user data installs;
in the local fleet simulation (`fleet_demo.py`) each simulated host runs one. SIGTERM stops it
gracefully: no new job, the current one finishes or, after `--stop-grace`, is released.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from typing import Any

from client import aws
from client.agent import Agent, AgentSettings
from client.commands.run import run_credentials
from client.errors import ExitStatus, UsageError
from client.target import resolve_target

QUEUE_ENV = "SEALED_JOB_QUEUE_URL"
BUCKET_ENV = "SEALED_JOB_BUCKET"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "agent", parents=parents, help="run fleet jobs from the SQS queue in this host's enclave",
        description="Long-poll the job queue and run each job in the enclave, committing its "
                    "outputs and run receipt under results/<job-id>/ in the bucket.")
    parser.add_argument("--queue-url", default=os.environ.get(QUEUE_ENV), metavar="URL",
                        help=f"the job queue (default: ${QUEUE_ENV})")
    parser.add_argument("--bucket", default=os.environ.get(BUCKET_ENV), metavar="NAME",
                        help=f"the sharing bucket (default: ${BUCKET_ENV})")
    parser.add_argument("--host-id", default=socket.gethostname(), metavar="NAME",
                        help="this host's name in results and logs (default: the hostname)")
    parser.add_argument("--visibility-timeout", type=int, default=300, metavar="SECONDS",
                        help="how long a taken job stays hidden between heartbeats (default 300)")
    parser.add_argument("--wait", type=int, default=20, choices=range(0, 21), metavar="SECONDS",
                        help="long-poll wait, 0 to 20 (default 20)")
    parser.add_argument("--slots", type=int, default=1, metavar="N",
                        help="jobs at a time: the manifest's concurrent_runs (default 1)")
    parser.add_argument("--stop-grace", type=float, default=60.0, metavar="SECONDS",
                        help="on SIGTERM, how long the current run may go on before it is "
                             "cancelled and its job released (default 60)")
    parser.add_argument("--max-jobs", type=int, metavar="N", help="exit after N jobs")
    parser.set_defaults(func=agent_command)


def aws_clients(region: str | None) -> tuple[Any, Any]:
    import boto3

    region = aws.get_region(region)
    return boto3.client("sqs", region_name=region), boto3.client("s3", region_name=region)


def agent_command(args: argparse.Namespace) -> int:
    if not args.queue_url or not args.bucket:
        raise UsageError(f"the agent needs --queue-url and --bucket (or ${QUEUE_ENV} and "
                         f"${BUCKET_ENV}); HostStack's outputs JobQueueUrl and BucketName")
    if not 1 <= args.slots <= 4:
        raise UsageError(f"--slots {args.slots} is invalid: expected 1 to 4")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(threadName)s %(message)s")
    target = resolve_target(args)
    sqs, s3 = aws_clients(args.region)
    settings = AgentSettings(queue_url=args.queue_url, bucket=args.bucket, host_id=args.host_id,
                             visibility_timeout=args.visibility_timeout, wait_seconds=args.wait,
                             slots=args.slots, stop_grace_seconds=args.stop_grace)
    agent = Agent(settings, sqs=sqs, s3=s3, runtime=lambda: target.client(timeout=args.timeout),
                  credentials=lambda: run_credentials(target))
    stopped = []

    def on_sigterm(signum: int, frame: object) -> None:
        stopped.append(signum)
        agent.stop()

    signal.signal(signal.SIGTERM, on_sigterm)
    logging.getLogger("sealed.agent").info("agent %s serving %s (%d slot(s))", args.host_id,
                                           args.queue_url, args.slots)
    agent.serve(max_jobs=args.max_jobs)
    logging.getLogger("sealed.agent").info("agent stopped after %d job(s)%s",
                                           len(agent.outcomes),
                                           " (SIGTERM)" if stopped else "")
    return int(ExitStatus.OK)
