"""`rm PATH... [-d]`: delete files (with `-d`, empty directories) from the enclave's inbox."""

from __future__ import annotations

import argparse

from client.api import check_remote_path
from client.errors import UsageError
from client.output import emit
from client.target import resolve_target
from enclave.paths import INBOX, split_area


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "rm", parents=parents, help="delete files from the enclave's inbox",
        description="Delete PATH from the enclave's inbox (it may start with 'inbox/'). The "
                    "outbox is read-only for the host.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="path in the inbox")
    parser.add_argument("-d", "--dir", action="store_true",
                        help="also remove empty directories")
    parser.set_defaults(func=rm_command)


def inbox_path(path: str) -> str:
    area, relative = split_area(path, default=INBOX)
    if area != INBOX:
        raise UsageError(f"cannot remove {path}: the {area} is read-only for the host; only "
                         "inbox files can be removed")
    return check_remote_path(relative)


def rm_command(args: argparse.Namespace) -> int:
    relatives = [inbox_path(path) for path in args.paths]  # all checked before any is removed
    removed = []
    with resolve_target(args).client(timeout=args.timeout) as client:
        for relative in relatives:
            if client.stat(INBOX, relative).get("type") == "dir" and not args.dir:
                raise UsageError(f"inbox/{relative} is a directory; remove it (once empty) "
                                 "with `rm -d`")
            client.delete(INBOX, relative)
            removed.append(f"inbox/{relative}")
            if not args.json:
                emit(args, None, f"removed inbox/{relative}")
    if args.json:
        emit(args, {"removed": removed})
    return 0
