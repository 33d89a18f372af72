"""Starts an application command with no way to gain privileges: `python3 -I -S -c SOURCE CMD...`.

The runtime starts every entrypoint through this code (already as the run's own user, its source
passed with -c so that user needs no access to the runtime's files), which
sets `PR_SET_NO_NEW_PRIVS` (no set-user-id program in the image can give the app root), turns
core dumps off (no plaintext written out by a crash) and then replaces itself with the command.
It imports nothing but the standard library, so it runs with `-I -S` from any directory.
"""

import ctypes
import os
import resource
import sys

PR_SET_NO_NEW_PRIVS = 38


def main(argv: list[str]) -> int:
    if not argv:
        print("appexec: no command", file=sys.stderr)
        return 127
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        print("appexec: cannot set no_new_privs", file=sys.stderr)
        return 126
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        os.execvpe(argv[0], argv, os.environ)  # noqa: S606 - argv is the manifest's list
    except OSError as exc:
        print(f"appexec: cannot start {argv[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
