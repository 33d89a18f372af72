"""`status [RUN_ID]`: the runtime's health and runs, or one run; `--cancel` stops a run."""

from __future__ import annotations

import argparse
from typing import Any

from client.api_errors import ApiNotFound
from client.errors import NotFoundError, UsageError
from client.output import emit
from client.target import resolve_target


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "status", parents=parents, help="show the runtime's health and runs, or one run",
        description="Without RUN_ID: where the runtime is, its health and its runs. With RUN_ID: "
                    "that run's state, exit code and allowed output.")
    parser.add_argument("run_id", nargs="?", metavar="RUN_ID")
    parser.add_argument("--cancel", action="store_true", help="cancel RUN_ID (required with it)")
    parser.set_defaults(func=status_command)


def describe_run(run: dict[str, Any]) -> str:
    exit_code = run.get("exit_code")
    tail = f" exit {exit_code}" if exit_code is not None else ""
    error = f" ({run['error']})" if run.get("error") else ""
    return f"{run.get('id')}  {run.get('state')}{tail}  {run.get('entrypoint')}  " \
           f"{run.get('bundle')}{error}"


def status_command(args: argparse.Namespace) -> int:
    if args.cancel and not args.run_id:
        raise UsageError("--cancel needs the id of the run to cancel, e.g. "
                         "`python -m client status RUN_ID --cancel`; `python -m client status` "
                         "lists the runs")
    target = resolve_target(args)
    with target.client(timeout=args.timeout) as client:
        if args.run_id:
            try:
                run = client.cancel_run(args.run_id) if args.cancel else \
                    client.get_run(args.run_id)
            except ApiNotFound as exc:
                raise NotFoundError(f"the runtime at {target.address} has no run "
                                    f"{args.run_id!r}; list its runs with "
                                    "`python -m client status`") from exc
            text = describe_run(run)
            if run.get("stdout"):
                text += "\n--- stdout ---\n" + run["stdout"].rstrip("\n")
            emit(args, run, text)
            return 0
        health = client.health()
        runs = client.list_runs()
    data = {"target": str(target.address), "found_by": target.source, "health": health,
            "runs": runs}
    lines = [f"runtime {target.address} (found by {target.source}): {health.get('status')}"
             f" version {health.get('version')}"]
    if health.get("isolation"):
        lines.append(f"app isolation: {health['isolation']}")
    policy = health.get("image_policy")
    if isinstance(policy, dict):
        lines.append(f"image policy: app(s) {', '.join(policy.get('app_ids') or [])}, key(s) "
                     f"{', '.join(policy.get('kms_key_arns') or [])}, minimum version "
                     f"{policy.get('minimum_app_version') or 'any'}")
    lines += [describe_run(r) for r in runs] or ["no runs"]
    emit(args, data, "\n".join(lines))
    return 0
