"""`sync -d DIR [--foreground]` mounts the exchange area; `sync -d DIR --unmount` removes it.

The runbook's spelling (`sync -d DIR`) is kept. `DIR/inbox` is writable, `DIR/outbox` is
read-only. In the background (the default) the mount runs in its own detached process, started
as `sync --foreground`, and this command returns once the mount is live or reports why not.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from client import hoststate
from client.errors import ClientError, ExitStatus, NotFoundError, UsageError
from client.output import emit
from client.target import Target, resolve_target
from client.transport import UnixAddress

FUSERMOUNT = "fusermount3"
MOUNT_WAIT_SECONDS = 15.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "sync", parents=parents, help="mount the enclave's inbox and outbox on a directory",
        description="Mount the exchange area on DIR with FUSE: DIR/inbox (write: files are "
                    "uploaded when closed) and DIR/outbox (read-only).")
    parser.add_argument("-d", "--directory", required=True, type=Path, metavar="DIR",
                        help="mount point (created if missing)")
    parser.add_argument("--foreground", action="store_true",
                        help="stay in the foreground until unmounted (Ctrl-C unmounts)")
    parser.add_argument("--unmount", action="store_true", help="unmount DIR")
    parser.add_argument("--debug", action="store_true", help="log every FUSE operation")
    parser.set_defaults(func=sync_command)


def target_options(target: Target) -> list[str]:
    """Global options that make a child process talk to the same runtime."""
    if isinstance(target.address, UnixAddress):
        return ["--socket", target.address.path]
    return ["--cid", str(target.address.cid), "--port", str(target.address.port)]


def is_mounted(directory: Path) -> bool:
    """True for a live mount and for a dead one (its process gone: ENOTCONN on every access),
    which `os.path.ismount` cannot tell from a plain directory."""
    wanted = os.path.realpath(directory) if _reachable(directory) else os.path.abspath(directory)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return os.path.ismount(directory)
    for line in lines:
        fields = line.split()
        if len(fields) > 4 and _unescape(fields[4]) == wanted:
            return True
    return False


def _reachable(directory: Path) -> bool:
    try:
        os.stat(directory)
        return True
    except OSError:
        return False


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def fuse_available() -> str | None:
    """None if FUSE can be used here, else why not."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (load the fuse module: modprobe fuse)"
    if shutil.which(FUSERMOUNT) is None:
        return f"{FUSERMOUNT} is not installed (dnf install fuse3 / apt install fuse3)"
    return None


def sync_command(args: argparse.Namespace) -> int:
    directory = args.directory.resolve()
    if args.unmount:
        return unmount(args, directory)
    problem = fuse_available()
    if problem:
        raise NotFoundError(f"cannot mount: {problem}")
    if is_mounted(directory):
        raise UsageError(f"{directory} is already a mount point; unmount it first with "
                         f"`python -m client sync -d {args.directory} --unmount`")
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        raise UsageError(f"{directory} is not empty; mount on an empty directory")
    target = resolve_target(args)
    with target.client(timeout=args.timeout) as client:
        client.health()  # fail here, with the runtime's message, rather than inside the mount
    if args.foreground:
        from client.fuse_mount import mount_until_signal

        emit(args, {"mounted": str(directory), "target": str(target.address)},
             f"mounted {target.address} on {directory} (inbox/, outbox/); Ctrl-C to unmount",
             stream=sys.stderr if not args.json else None)
        stopped_by = mount_until_signal(target.client(timeout=args.timeout), str(directory),
                                        debug=args.debug)
        print(f"unmounted {directory}", file=sys.stderr)
        if stopped_by is None:  # `sync --unmount` from elsewhere
            return 0
        # Ended by a signal: exit as a shell reports it (130 for Ctrl-C, 143 for TERM).
        by_signal: dict[int, int] = {signal.SIGINT: ExitStatus.INTERRUPTED,
                                     signal.SIGTERM: ExitStatus.TERMINATED}
        return by_signal.get(stopped_by, 128 + stopped_by)
    return mount_in_background(args, directory, target)


def mount_in_background(args: argparse.Namespace, directory: Path, target: Target) -> int:
    name = hashlib.sha256(str(directory).encode()).hexdigest()[:12]
    log_path = hoststate.state_dir() / f"sync-{name}.log"
    command = [sys.executable, "-m", "client", *target_options(target),
               "--timeout", str(args.timeout), "sync", "-d", str(directory), "--foreground"]
    if args.debug:
        command.append("--debug")
    env = dict(os.environ)
    project_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [project_root, env.get("PYTHONPATH")]))
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   cwd="/", start_new_session=True, env=env)
    deadline = time.monotonic() + MOUNT_WAIT_SECONDS
    while not os.path.ismount(directory):
        if process.poll() is not None:
            raise ClientError(f"the mount process exited (status {process.returncode}): "
                              f"{_last_line(log_path)}; see {log_path}")
        if time.monotonic() > deadline:
            process.terminate()
            raise ClientError(f"{directory} was not mounted within {MOUNT_WAIT_SECONDS:g}s; "
                              f"see {log_path}")
        time.sleep(0.05)
    emit(args, {"mounted": str(directory), "target": str(target.address), "pid": process.pid,
                "log": str(log_path)},
         f"mounted {target.address} on {directory} (inbox/, outbox/); unmount with "
         f"`python -m client sync -d {args.directory} --unmount`")
    return 0


def unmount(args: argparse.Namespace, directory: Path) -> int:
    if not is_mounted(directory):
        raise NotFoundError(f"{directory} is not mounted; nothing to unmount")
    binary = shutil.which(FUSERMOUNT)
    if binary is None:
        raise NotFoundError(f"{FUSERMOUNT} is not installed; run `umount {directory}` as root")
    done = subprocess.run([binary, "-u", str(directory)], capture_output=True, text=True,
                          check=False, timeout=30)
    if done.returncode != 0:
        raise ClientError(f"{FUSERMOUNT} -u {directory} failed: {done.stderr.strip()}; close "
                          "files open under it (lsof +D) and retry")
    emit(args, {"unmounted": str(directory)}, f"unmounted {directory}")
    return 0


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no output"
    return lines[-1] if lines else "no output"
