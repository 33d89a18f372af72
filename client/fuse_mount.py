"""Mounting the exchange file system (`client/fusefs.py`) and serving it until it is unmounted
or a stop signal arrives."""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
from typing import Any

import mfusepy as fuse

from client.api import RuntimeClient
from client.fusefs import ExchangeFs

log = logging.getLogger(__name__)

# libfuse 3.14 takes its default idle-thread limit (4294967295) for a mistake and says so on
# stderr at every mount; naming a limit keeps it quiet.
MAX_IDLE_THREADS = 10  # libfuse's own default before 3.12
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def mount(client: RuntimeClient, mountpoint: str, *, foreground: bool = True,
          debug: bool = False) -> None:
    """Mount and serve until unmounted (blocks). `foreground=False` lets libfuse daemonize."""
    fuse.FUSE(ExchangeFs(client), mountpoint, foreground=foreground, debug=debug,
              nothreads=False, fsname="sealed-exchange", subtype="sealed",
              default_permissions=True, max_idle_threads=MAX_IDLE_THREADS)


def mount_until_signal(client: RuntimeClient, mountpoint: str, *,
                       debug: bool = False) -> int | None:
    """Serve the mount until it is unmounted, or until SIGINT, SIGTERM or SIGHUP unmounts it.

    Returns the signal that ended it, or None when it was unmounted from outside. libfuse's own
    signal handling ends the same way but reports only "8", so the signals are this function's:
    libfuse serves in a worker thread and installs no handler where one is already set, and the
    main thread, which Python runs its handlers in, unmounts (lazily, as libfuse would).
    """
    received: list[int] = []
    failures: list[BaseException] = []

    def serve() -> None:
        try:
            mount(client, mountpoint, debug=debug)
        except BaseException as exc:  # handed to the main thread
            failures.append(exc)

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)  # the first one is reported; a repeat retries the unmount
        _unmount_lazily(mountpoint)

    previous = {number: signal.signal(number, on_signal) for number in STOP_SIGNALS}
    try:
        worker = threading.Thread(target=serve, name="fuse", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(0.2)  # wakes up for the signal handler, whichever thread got the signal
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if failures and not received:
        raise failures[0]
    return received[0] if received else None


def _unmount_lazily(mountpoint: str) -> None:
    done = subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True, text=True,
                          check=False, timeout=30)
    if done.returncode != 0:
        log.warning("fusermount3 -u -z %s failed: %s", mountpoint, done.stderr.strip())
