"""`push LOCAL [REMOTE]` into the inbox and `pull REMOTE [LOCAL]` from the outbox."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from client.api import RuntimeClient, check_remote_path
from client.errors import NotFoundError, UsageError
from client.output import ProgressBar, emit, human_size
from client.target import resolve_target
from enclave.paths import split_area


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: list[argparse.ArgumentParser]) -> None:
    push = subparsers.add_parser(
        "push", parents=parents, help="copy a local file into the enclave's inbox",
        description="Copy LOCAL into the enclave's inbox as REMOTE (default: its base name). "
                    "REMOTE may start with 'inbox/'; a REMOTE ending in '/' is a directory.")
    push.add_argument("local", metavar="LOCAL", help="local file to upload")
    push.add_argument("remote", metavar="REMOTE", nargs="?", help="path in the inbox")
    push.add_argument("--no-progress", action="store_true", help="never show the progress line")
    push.set_defaults(func=run_push)

    pull = subparsers.add_parser(
        "pull", parents=parents, help="copy a file out of the enclave's outbox",
        description="Copy REMOTE from the enclave's outbox (or 'inbox/...') to LOCAL (default: "
                    "its base name in the current directory; '-' writes to stdout). The local "
                    "file appears only when complete.")
    pull.add_argument("remote", metavar="REMOTE", help="path in the outbox")
    pull.add_argument("local", metavar="LOCAL", nargs="?", help="local file or directory")
    pull.add_argument("--no-progress", action="store_true", help="never show the progress line")
    pull.set_defaults(func=run_pull)


def push_destination(local: Path, remote: str | None) -> str:
    if remote is None:
        return check_remote_path(local.name)
    area, path = split_area(remote, default="inbox")
    if area != "inbox":
        raise UsageError(f"cannot push into {area}/: the host may only write the inbox; "
                         "use a path like inbox/data.csv")
    if path == "" or path.endswith("/"):
        path = f"{path}{local.name}"
    return check_remote_path(path)


def run_push(args: argparse.Namespace) -> int:
    local = Path(args.local)
    if not local.is_file():
        raise NotFoundError(f"local file {local} does not exist or is not a regular file; "
                            "give the path of the file to upload")
    remote = push_destination(local, args.remote)
    client = resolve_target(args).client(timeout=args.timeout)
    started = time.monotonic()
    with local.open("rb") as source, client:
        size = os.fstat(source.fileno()).st_size
        bar = ProgressBar(f"push {local.name}", size,
                          enabled=False if args.no_progress or args.json else None)
        result = client.upload(remote, source, size, progress=bar)
        bar.finish()
    seconds = time.monotonic() - started
    data = {"direction": "push", "local": str(local), "remote": f"inbox/{remote}", "size": size,
            "sha256": result.get("sha256"), "seconds": round(seconds, 3)}
    emit(args, data, f"pushed {local} -> inbox/{remote} ({human_size(size)}, "
                     f"sha256 {result.get('sha256')})")
    return 0


def pull_destination(remote_path: str, local: str | None) -> Path:
    name = remote_path.rsplit("/", 1)[-1]
    if local is None:
        return Path(name)
    target = Path(local)
    if target.is_dir():
        return target / name
    return target


def run_pull(args: argparse.Namespace) -> int:
    area, path = split_area(args.remote, default="outbox")
    path = check_remote_path(path)
    client = resolve_target(args).client(timeout=args.timeout)
    started = time.monotonic()
    with client:
        info = client.stat(area, path)
        if info.get("type") != "file":
            raise UsageError(f"{area}/{path} is a directory; pull one file at a time "
                             "(or mount the exchange area with `sync -d DIR`)")
        size = int(info.get("size") or 0)
        quiet = args.no_progress or args.json or args.local == "-"
        bar = ProgressBar(f"pull {path}", size, enabled=False if quiet else None)
        if args.local == "-":
            written = client.download(area, path, sys.stdout.buffer, progress=bar)
            sys.stdout.buffer.flush()
            destination = "-"
        else:
            target = pull_destination(path, args.local)
            written = _download_atomically(client, area, path, target, bar)
            destination = str(target)
        bar.finish()
    seconds = time.monotonic() - started
    data = {"direction": "pull", "remote": f"{area}/{path}", "local": destination,
            "size": written, "seconds": round(seconds, 3)}
    if destination != "-":
        emit(args, data, f"pulled {area}/{path} -> {destination} ({human_size(written)})")
    return 0


def _download_atomically(client: RuntimeClient, area: str, path: str, target: Path,
                         bar: ProgressBar) -> int:
    """Write to a temporary file beside `target` and rename it only once complete."""
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise NotFoundError(f"local directory {directory} does not exist; create it or pick "
                            "another destination")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as sink:
            written = client.download(area, path, sink, progress=bar)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return written
