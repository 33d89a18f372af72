"""The exchange areas and the one path rule, shared by the runtime and the client.

The runtime checks every host-supplied path with `split_relative` before it walks the file
system; the client (`client/api.py`) checks with the same function before it sends anything, so a
path the runtime would refuse never leaves the host, and both give the same reason.
"""

from __future__ import annotations

from pathlib import Path

from enclave.exchange_errors import PathRejected

INBOX = "inbox"
OUTBOX = "outbox"
AREAS = (INBOX, OUTBOX)

MAX_PATH_BYTES = 1024
MAX_NAME_BYTES = 255
MAX_DEPTH = 32
# Names with this prefix are uploads in progress: invisible in listings, not addressable.
PARTIAL_PREFIX = ".partial-"


def split_area(path: str, *, default: str) -> tuple[str, str]:
    """The host's one path rule, the same for push, pull, rm, `run -f` and run arguments.

    A path may start with the name of an area: `outbox/scores.csv` -> ("outbox", "scores.csv");
    a path without one is in `default` (the area the command reads or writes): `scores.csv`
    -> (default, "scores.csv"). Pure; the rest is checked by `split_relative` where it is used.
    """
    head, slash, rest = path.partition("/")
    if slash and head in AREAS:
        return head, rest
    return default, path


def split_relative(relative: str) -> tuple[str, ...]:
    """Validate a host-supplied relative path and return its components; `""` is the area root.

    Pure: decides on the string alone. Refuses absolute paths (including `//x`), `.` and `..`
    components, empty components, NUL and other control characters, backslashes, names reserved
    for uploads in progress, and anything over the length and depth limits.
    """
    if not isinstance(relative, str):
        raise PathRejected(f"path must be a string, got {type(relative).__name__}")
    if relative == "":
        return ()
    _check_whole_path(relative)
    parts = relative.split("/")
    if parts[-1] == "":  # a single trailing slash names the directory itself
        parts.pop()
    if len(parts) > MAX_DEPTH:
        raise PathRejected(f"path is deeper than {MAX_DEPTH} levels")
    for part in parts:
        _check_name(part, relative)
    return tuple(parts)


def _check_whole_path(relative: str) -> None:
    """The rules on the path as one string: length, absolute, control characters, backslash."""
    if len(relative.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise PathRejected(f"path is longer than {MAX_PATH_BYTES} bytes; use a shorter name")
    if relative.startswith("/"):
        raise PathRejected(f"path {relative!r} is absolute; give a path relative to the area")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in relative):
        raise PathRejected("path contains a NUL or control character; remove it")
    if "\\" in relative:
        raise PathRejected(f"path {relative!r} contains a backslash; use '/' between names")


def _check_name(part: str, relative: str) -> None:
    """The rules on one component of `relative`."""
    if part in ("", ".", ".."):
        raise PathRejected(
            f"path {relative!r} has an empty, '.' or '..' component; name each directory"
        )
    if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise PathRejected(f"a name in {relative!r} is longer than {MAX_NAME_BYTES} bytes")
    if part.startswith(PARTIAL_PREFIX):
        raise PathRejected(f"names starting with {PARTIAL_PREFIX!r} are reserved for uploads")
    try:
        part.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PathRejected(f"path {relative!r} is not valid UTF-8") from exc


def confine(area_root: Path, relative: str) -> Path:
    """The path `relative` names under `area_root`, or `PathRejected`. Pure (no I/O).

    The result is lexically inside `area_root`; symbolic and hard links are the I/O layer's job.
    """
    return Path(area_root, *split_relative(relative))
