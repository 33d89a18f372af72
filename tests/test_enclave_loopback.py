"""An enclave boots with `lo` down: enclave/__main__.py `bring_up_loopback` raises it, in a network
namespace of its own here (a forked child), as in the emulated enclave."""

from __future__ import annotations

import ctypes
import fcntl
import os
import shutil
import socket
import struct

import pytest

from enclave.__main__ import bring_up_loopback

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
IFF_UP = 0x1

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="needs root for a network namespace")


def lo_flags() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        reply = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, struct.pack("16sH14x", b"lo", 0))
    return struct.unpack("16sH14x", reply)[1]


def lo_flags_in_new_namespace(times: int) -> tuple[int, int]:
    """lo's flags in a fresh network namespace (a forked child), before and after `times`
    calls."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET) == 0:
                before = lo_flags()
                for _ in range(times):
                    bring_up_loopback()
                os.write(write_end, f"{before} {lo_flags()}".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as reply:
        text = reply.read()
    os.waitpid(pid, 0)
    before, after = text.split()
    return int(before), int(after)


def test_lo_is_down_in_a_new_namespace_and_up_after():
    before, after = lo_flags_in_new_namespace(1)
    assert not before & IFF_UP and after & IFF_UP


def test_bringing_lo_up_twice_keeps_it_up():
    assert lo_flags_in_new_namespace(2)[1] & IFF_UP
