"""Keeping an application away from the runtime and from other runs.

The runtime runs as root in the enclave (the init starts the image's CMD as root). Each run then
gets a user id of its own from a small pool of numeric ids that no image file belongs to; its
private directory is owned by that id with mode 0700, the runtime's roots are not open to it,
and at the end of the run every process of that id is killed (a `setsid` and double fork does
not escape, unlike a process-group kill). The runtime itself is made non-dumpable, so no process
can read its memory or `/proc/<pid>/environ`, and the NSM device is restricted to root.

When the runtime is not root (a developer's own simulation) none of this is possible: apps run
as the runtime's user, and `isolation_mode()` says so.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

PR_SET_DUMPABLE = 4
ISOLATED = "per-run user"
NOT_ISOLATED = "none: the runtime is not root, apps run as its own user"
_KILL_ROUNDS = 50


def isolation_available() -> bool:
    return os.geteuid() == 0


def isolation_mode() -> str:
    return ISOLATED if isolation_available() else NOT_ISOLATED


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


def harden_runtime() -> None:
    """No core dumps, no ptrace and no /proc/<pid>/mem or environ for anyone but root."""
    _prctl(PR_SET_DUMPABLE, 0)


def restrict_device(path: str) -> None:
    """Make the NSM device (or the simulation's socket) usable by root alone."""
    st = os.stat(path)
    if stat.S_ISCHR(st.st_mode) or stat.S_ISSOCK(st.st_mode):
        os.chown(path, 0, 0)
        os.chmod(path, 0o600)


@dataclass(frozen=True)
class AppUser:
    uid: int
    gid: int


RANDOM_BASE_LOW = 1 << 20
RANDOM_BASE_HIGH = 1 << 30
POOL_BLOCK = 1 << 12


def random_user_base(count: int) -> int:
    """A block of `count` ids no account uses: above 2^20, below 2^30, aligned to 4096."""
    if not 1 <= count <= POOL_BLOCK:
        raise ValueError(f"a pool holds 1 to {POOL_BLOCK} users")
    blocks = (RANDOM_BASE_HIGH - RANDOM_BASE_LOW) // POOL_BLOCK
    return RANDOM_BASE_LOW + secrets.randbelow(blocks) * POOL_BLOCK


class UserPool:
    """Hands out numeric user ids to runs, one run per id at a time."""

    def __init__(self, base: int | None, count: int) -> None:
        if base is None:
            base = random_user_base(count)
        if base < 1000 or count < 1:
            raise ValueError("app user ids start at 1000 or above and the pool is not empty")
        self.base = base
        self._free = list(range(base, base + count))
        self._lock = threading.Lock()

    def acquire(self) -> AppUser | None:
        with self._lock:
            if not self._free:
                return None
            uid = self._free.pop(0)
        kill_user(uid)  # nothing of an earlier holder survives into this run
        return AppUser(uid, uid)

    def release(self, user: AppUser) -> None:
        with self._lock:
            self._free.append(user.uid)


def processes_of(uid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Uid:"):
                        if str(uid).encode() in line.split()[1:]:
                            found.append(int(entry))
                        break
        except OSError:
            continue  # gone already
    return found


def kill_user(uid: int) -> bool:
    """SIGKILL every process of `uid`; True once none is left.

    A child that takes the uid and calls kill(-1) signals all of that user's processes in one
    pass of the kernel's task list, during which none of them can fork.
    """
    for _round in range(_KILL_ROUNDS):
        if not processes_of(uid):
            return True
        pid = os.fork()
        if pid == 0:
            signal_all_as(uid)
        os.waitpid(pid, 0)
        time.sleep(0.01)
    return not processes_of(uid)


def signal_all_as(uid: int) -> NoReturn:
    """kill_user's forked child: drop to `uid`, SIGKILL every process of it, and leave."""
    try:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        os.kill(-1, signal.SIGKILL)
    finally:
        os._exit(0)


def chown_tree(root: Path, user: AppUser) -> None:
    """Give a tree the runtime made (regular files and directories only) to the run's user."""
    os.chown(root, user.uid, user.gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), user.uid, user.gid, follow_symlinks=False)
