"""`logs [--since N] [--follow]`: the runtime's event log (never secrets, never app output)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from client.output import emit
from client.target import resolve_target


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("logs", parents=parents, help="show the runtime's event log")
    parser.add_argument("--since", type=int, default=0, metavar="N",
                        help="start after the first N lines")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    parser.set_defaults(func=logs_command)


def split_logs(answer: Any, since: int) -> tuple[list[Any], int]:
    """Accept `{"lines": [...], "next": N}` (or a bare list) and return (lines, next cursor)."""
    if isinstance(answer, list):
        return answer, since + len(answer)
    lines = list(answer.get("lines") or answer.get("entries") or [])
    return lines, int(answer.get("next", since + len(lines)))


def format_line(line: Any) -> str:
    if isinstance(line, str):
        return line
    if isinstance(line, dict):
        known = ("seq", "time", "level", "message", "event")
        shown = dict(line)
        if isinstance(shown.get("time"), int | float):
            shown["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(shown["time"]))
        head = " ".join(str(shown[k]) for k in known if k in shown)
        rest = " ".join(f"{k}={v}" for k, v in shown.items() if k not in known)
        return f"{head} {rest}".strip()
    return str(line)


def logs_command(args: argparse.Namespace, *, poll: float = 1.0) -> int:
    cursor = args.since
    with resolve_target(args).client(timeout=args.timeout) as client:
        while True:
            lines, cursor = split_logs(client.logs(cursor), cursor)
            if args.json:
                for line in lines:
                    emit(args, line)
            else:
                for line in lines:
                    sys.stdout.write(format_line(line) + "\n")
                sys.stdout.flush()
            if not args.follow:
                return 0
            time.sleep(poll)
