"""The emulated enclave's init: runs as PID 1 inside `unshare --mount --net --pid --fork`.

    python -m client.sim.jail_init PLAN.json

It does what the enclave init (aws-nitro-enclaves-sdk-bootstrap `init/init.c`) and linuxkit leave
for the image's command, as far as namespaces can: it builds the root file system the plan lists
(a tmpfs root with bind mounts, tmpfs `noexec` /run and /tmp, a small /dev, a fresh /proc),
pivots into it, and starts the command as its child with exactly the plan's environment, looked up
on the init's PATH, in a new session, from `/`. The network namespace it was started in has only
`lo`, down. It forwards SIGTERM and SIGINT to the command, reaps every child, and exits with the
command's status. Only the standard library is imported: after the pivot nothing else is visible.

The plan is data (client/sim/jail.py builds it with a pure function); each mount is one of
{"op": "tmpfs"|"bind"|"overlay"|"remount"|"file"|"remove"|"proc"|"dir"|"symlink",
 "target": path inside the new root, ...}.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import platform
import shutil
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
MNT_DETACH = 0x2
FLAGS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}
PIVOT_ROOT_SYSCALL = {"x86_64": 155, "aarch64": 41}

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    _check(_libc.mount(source.encode() if source else None, target.encode(),
                       fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                       data.encode() if data else None), f"mount {target}")


def flags_of(names: list[str]) -> int:
    value = 0
    for name in names:
        value |= FLAGS[name]
    return value


def make_dir(target: str, step: dict[str, Any], flags: int) -> None:
    os.makedirs(target, mode=step.get("mode", 0o755), exist_ok=True)


def make_symlink(target: str, step: dict[str, Any], flags: int) -> None:
    os.symlink(step["to"], target)


def mount_tmpfs(target: str, step: dict[str, Any], flags: int) -> None:
    os.makedirs(target, exist_ok=True)
    mount("tmpfs", target, "tmpfs", flags & ~MS_RDONLY, step.get("data"))
    if flags & MS_RDONLY:
        mount(None, target, None, MS_REMOUNT | flags)


def mount_overlay(target: str, step: dict[str, Any], flags: int) -> None:
    """A writable layer over a read-only directory, kept in its own tmpfs outside the root."""
    scratch = step["scratch"]
    os.makedirs(scratch, exist_ok=True)
    mount("tmpfs", scratch, "tmpfs", 0, "mode=0700")
    for name in ("upper", "work"):
        os.makedirs(os.path.join(scratch, name))
    os.makedirs(target, exist_ok=True)
    mount("overlay", target, "overlay", 0,
          f"lowerdir={step['source']},upperdir={scratch}/upper,workdir={scratch}/work")


def remount(target: str, step: dict[str, Any], flags: int) -> None:
    mount(None, target, None, MS_REMOUNT | flags)


def write_file(target: str, step: dict[str, Any], flags: int) -> None:
    if os.path.lexists(target) and not os.path.isdir(target):
        os.unlink(target)
    with open(target, "w") as handle:
        handle.write(step["content"])
    os.chmod(target, step.get("mode", 0o644))


def remove(target: str, step: dict[str, Any], flags: int) -> None:
    if os.path.isdir(target) and not os.path.islink(target):
        shutil.rmtree(target)
    elif os.path.lexists(target):
        os.unlink(target)


def mount_proc(target: str, step: dict[str, Any], flags: int) -> None:
    os.makedirs(target, exist_ok=True)
    mount("proc", target, "proc", flags)


def bind_mount(target: str, step: dict[str, Any], flags: int) -> None:
    source = step["source"]
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    elif not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    mount(source, target, None, MS_BIND)
    if flags:
        mount(None, target, None, MS_REMOUNT | MS_BIND | flags)


STEPS: dict[str, Callable[[str, dict[str, Any], int], None]] = {
    "dir": make_dir, "symlink": make_symlink, "tmpfs": mount_tmpfs, "overlay": mount_overlay,
    "remount": remount, "file": write_file, "remove": remove, "proc": mount_proc,
    "bind": bind_mount,
}


def apply(root: str, step: dict[str, Any]) -> None:
    """One plan step, its target taken inside `root`."""
    op = step["op"]
    if op not in STEPS:
        raise ValueError(f"unknown jail step {op!r}")
    target = os.path.join(root, step["target"].lstrip("/"))
    STEPS[op](target, step, flags_of(step.get("flags", [])))


def pivot(root: str) -> None:
    old = os.path.join(root, ".old-root")
    os.makedirs(old, exist_ok=True)
    number = PIVOT_ROOT_SYSCALL[platform.machine()]
    _check(_libc.syscall(number, root.encode(), old.encode()), "pivot_root")
    os.chdir("/")
    _check(_libc.umount2(b"/.old-root", MNT_DETACH), "umount the old root")
    os.rmdir("/.old-root")


def build_root(plan: dict[str, Any]) -> None:
    # Nothing mounted here may propagate back to the host's mount namespace.
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    root = plan["root"]
    for step in plan["steps"]:
        apply(root, step)
    pivot(root)


def run(plan: dict[str, Any]) -> int:
    argv = plan["argv"]
    program = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=plan["lookup_path"])
    child = os.fork()
    if child == 0:
        start_command(plan, program)

    def forward(signum: int, _frame: Any) -> None:
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        pid, status = os.wait()
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            print(f"init: the image's command exited with status {code}", file=sys.stderr,
                  flush=True)
            return code if code >= 0 else 128 - code


def start_command(plan: dict[str, Any], program: str | None) -> NoReturn:
    """The init's forked child: a new session, the plan's directory, then the command."""
    argv = plan["argv"]
    try:
        os.setsid()
        os.chdir(plan["cwd"])
        if program is None:
            raise FileNotFoundError(2, f"{argv[0]} is not on PATH={plan['lookup_path']}")
        os.execve(program, argv, plan["env"])  # noqa: S606 - exec form, as the init does
    except OSError as exc:
        print(f"init: execvpe {argv[0]}: {exc.strerror}", file=sys.stderr, flush=True)
    os._exit(127)


def main(argv: list[str]) -> int:
    with open(argv[0]) as handle:
        plan = json.load(handle)
    build_root(plan)
    return run(plan)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
