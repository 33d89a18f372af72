"""The extractor: a decrypting stream's tar members written into a staging directory.

Plaintext is taken one frame at a time (`PlaintextReader`); `tarfile` parses the headers and
member contents are written straight from the frames. Every member is confined: relative names
without empty, `.` or `..` components, regular files and directories only, at most
{MAX_MEMBERS} of them, the manifest first and valid. Modes become owner-only.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Any, BinaryIO

from enclave.bundle_format import MAX_MEMBER_NAME_CHARS, MAX_MEMBERS, UnsealError
from enclave.manifest import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    Manifest,
    ManifestError,
    parse_manifest,
)


class PlaintextReader:
    """Forward-only file object over the decrypting stream, one whole frame at a time.

    Asking the SDK for exactly one frame length per call makes it hand over each frame's
    plaintext without re-slicing its buffer; `tarfile` parses headers through `read`/`seek`
    and member contents bypass it (`copy_to`), written from the frames without extra copies.
    """

    MAX_READ = 1024 * 1024  # headers (including pax records) only; contents go via copy_to

    def __init__(self, decryptor: Any, frame_length: int) -> None:
        self._decryptor = decryptor
        self._frame_length = frame_length
        self._frame = memoryview(b"")
        self._offset = 0
        self._position = 0

    def _available(self) -> int:
        if self._offset == len(self._frame):
            data = self._decryptor.read(self._frame_length)
            self._frame = memoryview(data)
            self._offset = 0
        return len(self._frame) - self._offset

    def _take(self, n: int) -> memoryview:
        piece = self._frame[self._offset : self._offset + n]
        self._offset += len(piece)
        self._position += len(piece)
        return piece

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > self.MAX_READ:
            raise UnsealError("a tar header in the bundle is too large")
        parts = []
        while n and (available := self._available()):
            piece = self._take(min(n, available))
            parts.append(piece)
            n -= len(piece)
        return b"".join(parts)

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = 0) -> int:
        if whence != 0 or position < self._position:
            raise UnsealError("bundle tar stream asked to seek backwards")
        remaining = position - self._position
        while remaining and (available := self._available()):
            remaining -= len(self._take(min(remaining, available)))
        return self._position

    def copy_to(self, out: BinaryIO, n: int) -> int:
        """Write the next `n` bytes to `out`; return how many there were (less at the end)."""
        done = 0
        while done < n and (available := self._available()):
            piece = self._take(min(n - done, available))
            done += len(piece)
            while piece:  # a raw write may be partial
                piece = piece[out.write(piece) :]
        return done


def extract_bundle(decryptor: Any, staging: Path, frame_length: int) -> Manifest:
    """Write the decrypting stream's members into `staging`; the validated manifest."""
    reader = PlaintextReader(decryptor, frame_length)
    tar = tarfile.TarFile(fileobj=reader, mode="r")  # type: ignore[arg-type]
    manifest: Manifest | None = None
    count = 0
    while (member := tar.next()) is not None:
        count += 1
        if count > MAX_MEMBERS:
            raise UnsealError(f"bundle has more than {MAX_MEMBERS} members")
        parts = _member_parts(member)
        if manifest is None:
            manifest = _extract_manifest(reader, member, staging, parts)
        else:
            _extract_member(reader, member, staging, parts)
        # TarFile keeps every TarInfo for random access we never use. `members` is the plain
        # list CPython's TarFile.__init__ creates; typeshed does not declare it.
        tar.members.clear()  # type: ignore[attr-defined]
    if manifest is None:
        raise UnsealError(f"the bundle is empty: expected {MANIFEST_NAME} as its first member")
    return manifest


def _extract_manifest(reader: PlaintextReader, member: tarfile.TarInfo, staging: Path,
                      parts: list[str]) -> Manifest:
    """The first member: it must be a valid manifest, small enough to hold in memory."""
    if parts != [MANIFEST_NAME] or not _is_plain_file(member):
        raise UnsealError(f"the first member must be {MANIFEST_NAME}, got {member.name!r}")
    if member.size > MAX_MANIFEST_BYTES:
        raise UnsealError(f"{MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES} bytes")
    data = reader.read(member.size)
    if len(data) != member.size:
        raise UnsealError(f"member {member.name!r} is truncated")
    try:
        manifest = parse_manifest(data)
    except ManifestError as exc:
        raise UnsealError(f"the bundle's {MANIFEST_NAME} is invalid: {exc}") from None
    _write_bytes(staging, parts, data, member.mode)
    return manifest


def _extract_member(reader: PlaintextReader, member: tarfile.TarInfo, staging: Path,
                    parts: list[str]) -> None:
    """Any later member: a directory or a regular file, nothing else."""
    if member.isdir() and member.type == tarfile.DIRTYPE:
        _make_dir(staging, parts)
    elif _is_plain_file(member):
        _write_member(reader, member, staging, parts)
    else:
        raise UnsealError(
            f"member {member.name!r} is a {_member_kind(member)}: only regular files "
            "and directories are allowed in a bundle"
        )


def _is_plain_file(member: tarfile.TarInfo) -> bool:
    return member.type in (tarfile.REGTYPE, tarfile.AREGTYPE) and member.sparse is None


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symbolic link"
    if member.islnk():
        return "hard link"
    if member.ischr() or member.isblk():
        return "device node"
    if member.isfifo():
        return "FIFO"
    if member.issparse():
        return "sparse file"
    return f"member of type {member.type!r}"


def _member_parts(member: tarfile.TarInfo) -> list[str]:
    """Validate a member name lexically; links are refused elsewhere, so this confines it."""
    name = member.name
    if not name or len(name) > MAX_MEMBER_NAME_CHARS or "\0" in name:
        raise UnsealError(f"member name {name[:80]!r} is empty, too long or contains NUL")
    if name.startswith("/"):
        raise UnsealError(f"member {name!r} has an absolute path")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsealError(f"member {name!r} has an empty, '.' or '..' path component")
    return parts


def _make_dir(staging: Path, parts: list[str]) -> None:
    path = staging.joinpath(*parts)
    _make_parents(staging, parts)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if path.is_symlink() or not path.is_dir():
            raise UnsealError(f"member {'/'.join(parts)!r} collides with a file") from None


def _make_parents(staging: Path, parts: list[str]) -> None:
    current = staging
    for part in parts[:-1]:
        current = current / part
        try:
            os.mkdir(current, 0o700)
        except FileExistsError:
            if current.is_symlink() or not current.is_dir():
                raise UnsealError(
                    f"member {'/'.join(parts)!r} needs {part!r} to be a directory"
                ) from None


def _open_new_file(staging: Path, parts: list[str], mode: int) -> int:
    _make_parents(staging, parts)
    file_mode = 0o700 if mode & 0o111 else 0o600
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(staging.joinpath(*parts), flags, file_mode)
    except FileExistsError:
        raise UnsealError(f"member {'/'.join(parts)!r} appears twice in the bundle") from None


def _write_bytes(staging: Path, parts: list[str], data: bytes, mode: int) -> None:
    with open(_open_new_file(staging, parts, mode), "wb") as f:
        f.write(data)


def _write_member(
    reader: PlaintextReader, member: tarfile.TarInfo, staging: Path, parts: list[str]
) -> None:
    if reader.tell() != member.offset_data:
        raise UnsealError(f"member {member.name!r}: tar stream out of step")
    with open(_open_new_file(staging, parts, member.mode), "wb", buffering=0) as dst:
        if reader.copy_to(dst, member.size) != member.size:
            raise UnsealError(f"member {member.name!r} is truncated")
