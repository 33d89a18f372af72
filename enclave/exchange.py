"""The exchange area: the only files the host can reach, confined to `inbox/` and `outbox/`.

The host puts files into the inbox and reads results from the outbox. Every path it names is
checked twice: once as a string (`enclave/paths.py`: pure, no file system access) and once
while walking, component by component, from a directory file descriptor with `O_NOFOLLOW`, so a
symbolic link anywhere on the way is refused rather than followed, whoever planted it. Files handed
out must be regular files with exactly one link, so a hard link to a file outside the area (which
would otherwise pass every path check) is refused too. Devices, FIFOs and sockets are never opened.

Uploads go to a temporary name in the target directory and are renamed only once the last byte has
arrived, so an interrupted upload leaves nothing behind under any visible name.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from enclave.exchange_errors import (
    AlreadyExists,
    Conflict,
    ExchangeError,
    IsADirectory,
    NoSpace,
    NotEmpty,
    NotFound,
    NotRegularFile,
    PathRejected,
    TooMany,
    UploadIncomplete,
)
from enclave.paths import AREAS, MAX_DEPTH, PARTIAL_PREFIX, split_relative

MAX_LIST_ENTRIES = 10_000
CHUNK_SIZE = 1024 * 1024

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO for reading must not block the server even if one slipped in.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class UploadBody(Protocol):
    """Where an upload's bytes come from: a request's socket file, or io.BytesIO in tests.

    Only `readinto` is used, so that the bytes land in the two reused buffers of `_copy_exactly`.
    """

    def readinto(self, buffer: memoryview, /) -> int | None: ...


@dataclass(frozen=True)
class Entry:
    name: str
    type: str  # "file" or "dir"
    size: int
    mtime: float

    def to_json(self) -> dict[str, str | int | float]:
        return {"name": self.name, "type": self.type, "size": self.size, "mtime": self.mtime}


@dataclass(frozen=True)
class UploadResult:
    path: str
    size: int
    sha256: str


def _entry_type(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    return None


def _os_error(exc: OSError, relative: str) -> ExchangeError:
    """Translate an OSError met while walking into the error the host sees."""
    if exc.errno == errno.ENOENT:
        return NotFound(f"{relative!r} does not exist")
    if exc.errno in (errno.ELOOP, errno.EMLINK):
        return PathRejected(f"{relative!r} goes through a symbolic link, which is not followed")
    if exc.errno == errno.ENOTDIR:
        return PathRejected(f"a component of {relative!r} is not a directory")
    if exc.errno == errno.ENOTEMPTY:
        return NotEmpty(f"directory {relative!r} is not empty; remove its entries first")
    if exc.errno == errno.EEXIST:
        return AlreadyExists(f"{relative!r} already exists")
    if exc.errno == errno.EISDIR:
        return IsADirectory(f"{relative!r} is a directory")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace("the enclave's exchange area is full; delete files and retry")
    if exc.errno == errno.ENAMETOOLONG:
        return PathRejected(f"{relative!r} is too long")
    return ExchangeError(f"{relative!r}: {os.strerror(exc.errno or 0)}")


class ExchangeArea:
    """I/O on one exchange root holding `inbox/` and `outbox/` (both created if missing)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        for area in AREAS:
            (self.root / area).mkdir(mode=0o755, parents=True, exist_ok=True)

    def area_root(self, area: str) -> Path:
        if area not in AREAS:
            raise NotFound(f"unknown area {area!r}; expected one of {', '.join(AREAS)}")
        return self.root / area

    # -- walking -------------------------------------------------------------------------------

    @contextmanager
    def _dir_fd(self, area: str, parts: tuple[str, ...], relative: str) -> Iterator[int]:
        """A descriptor of directory `parts` under the area, opened without following links."""
        fd = os.open(self.area_root(area), _DIR_FLAGS)
        try:
            for part in parts:
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise _os_error(exc, relative) from exc
                os.close(fd)
                fd = child
            yield fd
        finally:
            os.close(fd)

    def _lstat(self, dir_fd: int, name: str, relative: str) -> os.stat_result:
        """lstat of the last component; a symbolic link there is refused, never followed."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as exc:
            raise _os_error(exc, relative) from exc
        if stat.S_ISLNK(st.st_mode):
            raise PathRejected(f"{relative!r} is a symbolic link, which is not followed")
        return st

    # -- queries -------------------------------------------------------------------------------

    def stat(self, area: str, relative: str) -> Entry:
        parts = split_relative(relative)
        if not parts:
            st = os.stat(self.area_root(area), follow_symlinks=False)
            return Entry("", "dir", 0, st.st_mtime)
        with self._dir_fd(area, parts[:-1], relative) as fd:
            st = self._lstat(fd, parts[-1], relative)
        kind = _entry_type(st.st_mode)
        if kind is None:
            raise NotRegularFile(f"{relative!r} is not a regular file or directory")
        return Entry(parts[-1], kind, st.st_size if kind == "file" else 0, st.st_mtime)

    def list(self, area: str, relative: str) -> list[Entry]:
        """Files and directories in a directory; links, devices and partials are left out."""
        parts = split_relative(relative)
        entries: list[Entry] = []
        with self._dir_fd(area, parts, relative) as fd:
            # scandir closes the descriptor it is given, so hand it a duplicate.
            with os.scandir(os.dup(fd)) as it:
                for item in it:
                    if item.name.startswith(PARTIAL_PREFIX):
                        continue
                    st = item.stat(follow_symlinks=False)
                    kind = _entry_type(st.st_mode)
                    if kind is None:
                        continue
                    if len(entries) >= MAX_LIST_ENTRIES:
                        raise TooMany(
                            f"{relative or '/'} holds more than {MAX_LIST_ENTRIES} entries; "
                            "list a subdirectory"
                        )
                    size = st.st_size if kind == "file" else 0
                    entries.append(Entry(item.name, kind, size, st.st_mtime))
        entries.sort(key=lambda e: e.name)
        return entries

    # -- reading -------------------------------------------------------------------------------

    def open_read(self, area: str, relative: str) -> BinaryIO:
        """An open regular file with a single link, for streaming to the host; caller closes it."""
        parts = split_relative(relative)
        if not parts:
            raise IsADirectory(f"the {area} root is a directory; list it with ?list")
        with self._dir_fd(area, parts[:-1], relative) as dir_fd:
            before = self._lstat(dir_fd, parts[-1], relative)
            if stat.S_ISDIR(before.st_mode):
                raise IsADirectory(f"{relative!r} is a directory; list it with ?list")
            if not stat.S_ISREG(before.st_mode):
                raise NotRegularFile(f"{relative!r} is not a regular file; only files are served")
            try:
                fd = os.open(parts[-1], _READ_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                raise _os_error(exc, relative) from exc
        try:
            st = os.fstat(fd)
            # Same inode as the one checked (no swap in between), still a plain file.
            if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino) or not stat.S_ISREG(
                st.st_mode
            ):
                raise PathRejected(f"{relative!r} changed while being opened; retry")
            if st.st_nlink != 1:
                raise NotRegularFile(
                    f"{relative!r} has {st.st_nlink} hard links; only files with a single link "
                    "are served"
                )
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb", buffering=0)
        except BaseException:
            os.close(fd)
            raise

    def sha256(self, area: str, relative: str) -> str:
        with self.open_read(area, relative) as f:
            return _sha256_of(f)

    # -- writing -------------------------------------------------------------------------------

    def upload(self, area: str, relative: str, body: UploadBody, length: int) -> UploadResult:
        """Stream exactly `length` bytes from `body` into `relative`, atomically.

        The parent directory must exist. The bytes land in a fresh temporary file in the same
        directory that is renamed over the target only once complete; on any failure (including
        the client going away mid-body) the temporary file is removed.
        """
        parts = split_relative(relative)
        if not parts:
            raise IsADirectory(f"the {area} root is a directory; name a file under it")
        with self._dir_fd(area, parts[:-1], relative) as dir_fd:
            existing = None
            try:
                existing = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            if existing is not None and stat.S_ISDIR(existing.st_mode):
                raise IsADirectory(f"{relative!r} is a directory; choose a file name")
            temp = PARTIAL_PREFIX + secrets.token_hex(8)
            try:
                fd = os.open(
                    temp,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o644,
                    dir_fd=dir_fd,
                )
            except OSError as exc:
                raise _os_error(exc, relative) from exc
            digest = hashlib.sha256()
            try:
                try:
                    _copy_exactly(body, fd, length, digest)
                finally:
                    os.close(fd)
                os.rename(temp, parts[-1], src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException as exc:
                try:
                    os.unlink(temp, dir_fd=dir_fd)
                except OSError:
                    pass
                if isinstance(exc, OSError):
                    raise _os_error(exc, relative) from exc
                raise
        return UploadResult("/".join(parts), length, digest.hexdigest())

    def mkdir(self, area: str, relative: str) -> None:
        parts = split_relative(relative)
        if not parts:
            raise AlreadyExists(f"the {area} root already exists")
        with self._dir_fd(area, parts[:-1], relative) as dir_fd:
            try:
                os.mkdir(parts[-1], 0o755, dir_fd=dir_fd)
            except OSError as exc:
                raise _os_error(exc, relative) from exc

    def delete(self, area: str, relative: str) -> None:
        """Remove a file (any kind but a directory) or an empty directory; never follows a link."""
        parts = split_relative(relative)
        if not parts:
            raise Conflict(f"the {area} root cannot be removed")
        with self._dir_fd(area, parts[:-1], relative) as dir_fd:
            try:
                st = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    os.rmdir(parts[-1], dir_fd=dir_fd)
                else:
                    os.unlink(parts[-1], dir_fd=dir_fd)
            except OSError as exc:
                raise _os_error(exc, relative) from exc

    # -- snapshots for output digests ----------------------------------------------------------

    def files(self, area: str, *, limit: int = MAX_LIST_ENTRIES) -> dict[str, tuple[int, int, int]]:
        """Every regular file in the area: relative path -> (inode, size, mtime_ns). No links."""
        found: dict[str, tuple[int, int, int]] = {}

        def walk(fd: int, prefix: str, depth: int) -> None:
            with os.scandir(os.dup(fd)) as it:
                items = list(it)
            for item in items:
                if item.name.startswith(PARTIAL_PREFIX):
                    continue
                st = item.stat(follow_symlinks=False)
                rel = prefix + item.name
                if stat.S_ISREG(st.st_mode):
                    if len(found) >= limit:
                        return
                    found[rel] = (st.st_ino, st.st_size, st.st_mtime_ns)
                elif stat.S_ISDIR(st.st_mode) and depth < MAX_DEPTH:
                    try:
                        child = os.open(item.name, _DIR_FLAGS, dir_fd=fd)
                    except OSError:
                        continue
                    try:
                        walk(child, rel + "/", depth + 1)
                    finally:
                        os.close(child)

        root_fd = os.open(self.area_root(area), _DIR_FLAGS)
        try:
            walk(root_fd, "", 1)
        finally:
            os.close(root_fd)
        return found


def _copy_exactly(body: UploadBody, fd: int, length: int, digest: hashlib._Hash) -> None:
    """Copy `length` bytes from `body` to `fd`, hashing them, through two fixed buffers.

    Hashing a chunk runs in a helper thread while the next chunk is received and written
    (hashlib and os.write release the GIL), so SHA-256 costs little extra time; memory stays at
    two chunks whatever the size.
    """
    if length <= CHUNK_SIZE:
        _copy_chunks(body, fd, length, digest.update, [bytearray(max(length, 1))])
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="upload-hash") as hasher:
        pending: list[Future[None]] = []

        def hash_in_background(chunk: memoryview) -> None:
            if pending:
                pending.pop().result()  # the buffer about to be reused is hashed by now
            pending.append(hasher.submit(digest.update, chunk))

        try:
            _copy_chunks(body, fd, length, hash_in_background,
                         [bytearray(CHUNK_SIZE), bytearray(CHUNK_SIZE)])
        finally:
            for future in pending:
                future.result()


def _copy_chunks(body: UploadBody, fd: int, length: int, consume: Callable[[memoryview], None],
                 buffers: list[bytearray]) -> None:
    remaining = length
    turn = 0
    while remaining:
        view = memoryview(buffers[turn % len(buffers)])
        turn += 1
        try:
            n = body.readinto(view[: min(len(view), remaining)])
        except OSError as exc:  # reset, timeout: the sender is gone, not a file-system problem
            raise UploadIncomplete(
                f"reading the body failed after {length - remaining} of {length} bytes "
                f"({exc.__class__.__name__}); nothing was kept"
            ) from exc
        if not n:
            raise UploadIncomplete(
                f"the body ended after {length - remaining} of {length} bytes; nothing was kept"
            )
        chunk = view[:n]
        written = 0
        while written < n:
            written += os.write(fd, chunk[written:])
        consume(chunk)
        remaining -= n


def _sha256_of(f: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := f.read(CHUNK_SIZE):
        digest.update(chunk)
    return digest.hexdigest()
