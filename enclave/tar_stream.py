"""The tar producer: an application directory as a pax tar stream, made on demand.

Files are read in fixed chunks and handed to the Encryption SDK through `ChunkReader`, which
produces the stream as the SDK reads it (no temporary plaintext file, no thread, no pipe).
Only regular files and directories are taken; `manifest.json` comes first.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from enclave.bundle_format import MAX_MEMBER_NAME_CHARS, MAX_MEMBERS, SealError
from enclave.manifest import MANIFEST_NAME

CHUNK = 1024 * 1024
_BLOCK = tarfile.BLOCKSIZE

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class TarEntry:
    name: str  # relative POSIX path inside the bundle
    path: Path
    is_dir: bool
    size: int
    executable: bool


def file_identity(out: BinaryIO) -> tuple[int, int] | None:
    try:
        st = os.fstat(out.fileno())
    except (AttributeError, OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


def collect_entries(source: Path, skip: tuple[int, int] | None) -> list[TarEntry]:
    """Walk `source` in a stable order, manifest first; refuse anything but files and dirs."""
    entries: list[TarEntry] = []
    manifest_entry: TarEntry | None = None
    for dirpath, dirnames, filenames in os.walk(source, followlinks=False, onerror=_walk_error):
        dirnames.sort()
        base = Path(dirpath)
        rel_dir = base.relative_to(source).as_posix()
        names = sorted(filenames) + [d for d in dirnames if (base / d).is_symlink()]
        # os.walk lists symlinks to directories under dirnames; they must be refused too.
        dirnames[:] = [d for d in dirnames if not (base / d).is_symlink()]
        for d in dirnames:
            name = d if rel_dir == "." else f"{rel_dir}/{d}"
            entries.append(TarEntry(_bundle_name(name, base / d), base / d, True, 0, False))
        for f in sorted(names):
            path = base / f
            name = f if rel_dir == "." else f"{rel_dir}/{f}"
            st = path.lstat()
            if skip is not None and (st.st_dev, st.st_ino) == skip:
                continue  # the bundle being written, when -o points inside the app directory
            if not stat.S_ISREG(st.st_mode):
                raise SealError(
                    f"{path} is a {_kind(st.st_mode)}: a bundle holds only regular files and "
                    "directories; replace it by a copy of its target or remove it"
                )
            entry = TarEntry(
                _bundle_name(name, path), path, False, st.st_size, bool(st.st_mode & 0o111)
            )
            if name == MANIFEST_NAME:
                manifest_entry = entry
            else:
                entries.append(entry)
    if manifest_entry is None:  # load_manifest found it, so only a race gets here
        raise SealError(f"{source / MANIFEST_NAME} disappeared while sealing")
    if len(entries) + 1 > MAX_MEMBERS:
        raise SealError(f"{source} has more than {MAX_MEMBERS} files and directories")
    return [manifest_entry, *entries]


def _walk_error(exc: OSError) -> None:
    raise SealError(f"cannot read {exc.filename}: {exc.strerror}")


def _bundle_name(name: str, path: Path) -> str:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise SealError(f"{path}: file names in a bundle must be valid UTF-8") from None
    if len(name) > MAX_MEMBER_NAME_CHARS:
        raise SealError(f"{path}: path longer than {MAX_MEMBER_NAME_CHARS} characters")
    return name


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device node"
    return "special file"


def _tar_header(entry: TarEntry) -> bytes:
    info = tarfile.TarInfo(entry.name)
    # Ownership and times carry no meaning inside the enclave; modes are normalized again on
    # unsealing anyway.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    if entry.is_dir:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    else:
        info.type = tarfile.REGTYPE
        info.mode = 0o755 if entry.executable else 0o644
        info.size = entry.size
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def tar_stream(
    entries: list[TarEntry], total: int, progress: ProgressCallback | None
) -> Iterator[bytes]:
    """Yield the tar stream: headers, file contents in CHUNK pieces, padding, end marker."""
    done = 0
    for entry in entries:
        yield _tar_header(entry)
        if entry.is_dir:
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise SealError(f"cannot read {entry.path}: {exc.strerror}") from None
        with open(fd, "rb", buffering=0) as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise SealError(f"{entry.path} changed into a non-regular file while sealing")
            remaining = entry.size
            while remaining:
                data = f.read(min(CHUNK, remaining))
                if not data:
                    raise SealError(f"{entry.path} shrank while sealing; seal again")
                remaining -= len(data)
                done += len(data)
                yield data
                if progress is not None:
                    progress(done, total)
            if f.read(1):
                raise SealError(f"{entry.path} grew while sealing; seal again")
        if entry.size % _BLOCK:
            yield bytes(_BLOCK - entry.size % _BLOCK)
    yield bytes(2 * _BLOCK)


class ChunkReader:
    """A file-like `read(n)` over an iterator of byte chunks.

    The SDK treats a short read as the end of the plaintext, so `read(n)` returns exactly `n`
    bytes until the iterator is exhausted.
    """

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")
        self.produced = 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = 1 << 62
        parts: list[bytes | memoryview] = []
        have = 0
        while have < n:
            if not self._pending:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._pending = memoryview(chunk)
            take = min(n - have, len(self._pending))
            parts.append(self._pending[:take])
            self._pending = self._pending[take:]
            have += take
        self.produced += have
        if len(parts) == 1 and isinstance(parts[0], memoryview):
            return parts[0].tobytes()
        return b"".join(parts)
