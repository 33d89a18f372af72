"""`run -f FILE -s ENTRYPOINT [-a "ARGS"] [-- ARGS...]`: run a sealed bundle's entrypoint.

The runbook's flags are kept: `-f` names the sealed bundle (in the inbox), `-s` the entrypoint
its manifest declares, `-a` the arguments as one shell-quoted string. Arguments after `--` are
appended verbatim. The host's AWS credentials travel with the request because the runtime needs
them for the attested KMS Decrypt; the image's own policy (which key, app and versions it
unseals) and the key policy, not the host, decide whether it succeeds.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from typing import Any

from client import aws
from client.api import RuntimeClient, check_remote_path
from client.errors import EnclaveError, ExitStatus, TimeoutExpired, UsageError
from client.output import emit, terminal_safe
from client.target import Target, resolve_target
from enclave.paths import split_area

TERMINAL_STATES = ("succeeded", "failed", "timed_out", "cancelled")
POLL_SECONDS = 0.5


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run", parents=parents, help="run an entrypoint of a sealed bundle in the enclave",
        description="Start ENTRYPOINT of the sealed bundle FILE (a path in the inbox, pushed "
                    "earlier), wait for it, print the output its manifest allows and exit with "
                    "the application's exit code.")
    parser.add_argument("-f", "--file", required=True, metavar="FILE",
                        help="the sealed bundle, as a path in the inbox (e.g. app.sealed)")
    parser.add_argument("-s", "--entrypoint", required=True, metavar="ENTRYPOINT",
                        help="an entrypoint declared by the bundle's manifest (e.g. predict)")
    parser.add_argument("-a", "--args", default="", metavar='"ARGS"',
                        help="arguments as one shell-quoted string, split like a shell would")
    parser.add_argument("extra", nargs="*", metavar="ARGS",
                        help="more arguments after `--`, passed verbatim")
    parser.add_argument("--no-wait", action="store_true",
                        help="return once the run started, printing `run ID started (STATE); "
                             "follow it with ...` (with --quiet: the run id alone; with "
                             "--json: {\"id\", \"state\"})")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no state changes on stderr; with --no-wait print only the run id")
    parser.add_argument("--wait-timeout", type=float, metavar="SECONDS",
                        help="stop waiting after this long (the run goes on; exit 7)")
    parser.set_defaults(func=run_command)


def run_arguments(joined: str, extra: list[str]) -> list[str]:
    try:
        split = shlex.split(joined) if joined else []
    except ValueError as exc:
        raise UsageError(f"-a {joined!r} is not a valid shell-quoted string ({exc}); "
                         "balance the quotes or pass arguments after --") from exc
    return split + list(extra)


def run_credentials(target: Target) -> dict[str, Any]:
    """The credentials sent with a run: the simulated host role in simulation."""
    if target.simulation is not None:
        host = target.simulation["principals"]["host"]
        return aws.Credentials(host["access_key_id"], host["secret_access_key"],
                               host.get("session_token"), source="simulation").as_request()
    return aws.get_credentials().as_request()


def run_command(args: argparse.Namespace) -> int:
    area, bundle = split_area(args.file, default="inbox")
    if area != "inbox":
        raise UsageError(f"the bundle must be in the inbox, not {area}/; push it first: "
                         f"python -m client push {bundle.rsplit('/', 1)[-1]}")
    bundle = check_remote_path(bundle)
    host_args = run_arguments(args.args, args.extra)
    target = resolve_target(args)
    credentials = run_credentials(target)
    with target.client(timeout=args.timeout) as client:
        started = client.start_run(bundle=bundle, entrypoint=args.entrypoint, args=host_args,
                                   credentials=credentials)
        run_id = str(started["id"])
        if args.no_wait:
            text = run_id if args.quiet else (
                f"run {run_id} started ({started.get('state')}); follow it with "
                f"`python -m client status {run_id}`")
            emit(args, {"id": run_id, "state": started.get("state")}, text)
            return 0
        record = wait_for_run(client, run_id, args)
    return report_run(args, record)


def wait_for_run(client: RuntimeClient, run_id: str, args: argparse.Namespace,
                 *, poll: float = POLL_SECONDS) -> dict[str, Any]:
    deadline = None if args.wait_timeout is None else time.monotonic() + args.wait_timeout
    shown = None
    while True:
        record = client.get_run(run_id)
        state = record.get("state")
        if state != shown and not args.json and not args.quiet:
            print(f"run {run_id}: {state}", file=sys.stderr, flush=True)
            shown = state
        if state in TERMINAL_STATES:
            return record
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutExpired(f"run {run_id} still {state} after {args.wait_timeout:g}s; it "
                                 f"goes on: check `python -m client status {run_id}`")
        time.sleep(poll)


def report_run(args: argparse.Namespace, record: dict[str, Any]) -> int:
    """Print the allowed output and turn the run's outcome into this process's exit code."""
    state = record.get("state")
    if args.json:
        emit(args, record)
    else:
        if record.get("stdout"):
            sys.stdout.write(terminal_safe(record["stdout"], sys.stdout))
            sys.stdout.flush()
        if record.get("stderr"):
            sys.stderr.write(terminal_safe(record["stderr"], sys.stderr))
            sys.stderr.flush()
    run_id = record.get("id")
    if state == "succeeded":
        return int(record.get("exit_code") or 0)
    if state == "timed_out":
        raise TimeoutExpired(f"run {run_id} exceeded the manifest's time limit and was stopped")
    if state == "cancelled":
        raise EnclaveError(f"run {run_id} was cancelled")
    exit_code = record.get("exit_code")
    if exit_code not in (None, 0):
        # The application ran and failed: its own exit code (a signal as 128+N, like a shell).
        if not args.json:
            print(f"run {run_id}: {record.get('error') or 'failed'}", file=sys.stderr)
        code = int(exit_code)
        return code if code > 0 else 128 - code
    raise EnclaveError(f"run {run_id} failed: {record.get('error') or 'no reason given'}",
                       status=ExitStatus.ENCLAVE_ERROR)
