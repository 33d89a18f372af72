"""The exchange area as a FUSE file system: `DIR/inbox` (writable) and `DIR/outbox` (read-only).

Every operation becomes one or two runtime API calls. A file opened for writing is buffered in a
local temporary file and uploaded when it is closed: on `flush` (whose result `close(2)` returns,
so a failed upload is seen by the writer as EIO) and, if no flush came, on `release`; a failed
upload is not tried again on `release`. The runtime has no partial writes, so this is the only
way to give programs ordinary file semantics; the runtime's own temp-and-rename keeps a
half-written file from ever appearing in the enclave.

Errors map to the errno a program expects: ENOENT, EROFS (outbox), EACCES (the fixed top level),
EISDIR, ENOTDIR, ENOTEMPTY, EEXIST, EINVAL (names the runtime refuses), ENAMETOOLONG, EFBIG and
ENOSPC (the runtime's limits), EOVERFLOW (a directory too large to list), EXDEV (rename: `mv`
falls back to copy and delete), EPERM (links, devices, a change of mode or owner), EIO (server or
transport failure). The runtime's error codes decide (`client/fuse_errno.py`); mounting and
unmounting is `client/fuse_mount.py`.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import mfusepy as fuse

from client.api import RuntimeClient
from client.errors import ClientError
from client.fuse_errno import errno_for
from enclave.paths import AREAS as AREA_NAMES
from enclave.paths import INBOX, MAX_NAME_BYTES, MAX_PATH_BYTES

log = logging.getLogger(__name__)

# area -> writable by the host: the host writes only its inbox
AREAS = {area: area == INBOX for area in AREA_NAMES}
MAX_READ = 1 << 20


def check_name_length(relative: str) -> None:
    """ENAMETOOLONG for a name or path over the runtime's limits, which the runtime itself only
    reports as a refused path (`bad_path`): the same limits, checked before asking it."""
    encoded = relative.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_PATH_BYTES or any(len(part) > MAX_NAME_BYTES
                                            for part in encoded.split(b"/")):
        raise fuse.FuseOSError(errno.ENAMETOOLONG)


def split_mount_path(path: str) -> tuple[str | None, str]:
    """"/inbox/a/b" -> ("inbox", "a/b"); "/" -> (None, ""); unknown top level -> ENOENT."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        return None, ""
    if parts[0] not in AREAS:
        raise fuse.FuseOSError(errno.ENOENT)
    relative = "/".join(parts[1:])
    check_name_length(relative)
    return parts[0], relative


@dataclass
class Handle:
    area: str
    relative: str
    writable: bool
    temp: Any = None  # a local temporary file holding the content being written
    dirty: bool = False
    append: bool = False


if TYPE_CHECKING:  # mfusepy ships no type information: check the class as a plain one
    _Operations = object
else:
    _Operations = fuse.Operations


class ExchangeFs(_Operations):
    use_ns = True

    def __init__(self, client: RuntimeClient, *, staging_dir: str | None = None) -> None:
        self.client = client
        self.staging_dir = staging_dir
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.mounted_at = time.time_ns()
        self._handles: dict[int, Handle] = {}
        self._next = 1
        self._lock = threading.Lock()

    # -- helpers ----------------------------------------------------------------------------

    def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (ClientError, OSError) as exc:
            if isinstance(exc, fuse.FuseOSError):
                raise
            code = errno_for(exc) if isinstance(exc, ClientError) else errno.EIO
            if code == errno.EIO:
                log.warning("runtime call failed: %s", exc)
            raise fuse.FuseOSError(code) from exc

    def _writable_area(self, path: str) -> tuple[str, str]:
        parts = [p for p in path.split("/") if p]
        if len(parts) < 2 or parts[0] not in AREAS:
            raise fuse.FuseOSError(errno.EACCES)  # the top level and area roots are fixed
        area, relative = split_mount_path(path)
        if area is None or not relative:
            raise fuse.FuseOSError(errno.EACCES)  # the top level and area roots are fixed
        if not AREAS[area]:
            raise fuse.FuseOSError(errno.EROFS)
        return area, relative

    def _dir_attrs(self, writable: bool, mtime_ns: int | None = None) -> dict[str, Any]:
        mtime_ns = mtime_ns or self.mounted_at
        return {"st_mode": stat.S_IFDIR | (0o755 if writable else 0o555), "st_nlink": 2,
                "st_uid": self.uid, "st_gid": self.gid, "st_size": 0,
                "st_atime": mtime_ns, "st_mtime": mtime_ns, "st_ctime": mtime_ns}

    def _add_handle(self, handle: Handle) -> int:
        with self._lock:
            fh = self._next
            self._next += 1
            self._handles[fh] = handle
        return fh

    def _handle(self, fh: int) -> Handle:
        handle = self._handles.get(fh)
        if handle is None:
            raise fuse.FuseOSError(errno.EBADF)
        return handle

    def _pending_write(self, area: str, relative: str) -> Handle | None:
        """An open, not yet uploaded handle for this path (so new files are visible at once)."""
        with self._lock:
            for handle in self._handles.values():
                if handle.writable and handle.area == area and handle.relative == relative:
                    return handle
        return None

    def _new_temp(self) -> Any:
        return tempfile.TemporaryFile(dir=self.staging_dir, prefix="sealed-sync-")

    def _upload(self, handle: Handle) -> None:
        if not handle.dirty:
            return
        temp = handle.temp
        size = os.fstat(temp.fileno()).st_size
        temp.seek(0)
        # One attempt per change: a failed upload is reported to the writer by `flush` (close(2)
        # returns it) and not tried again behind its back on `release`, after it was told the
        # file was not written.
        handle.dirty = False
        self._call(self.client.upload, handle.relative, temp, size)

    # -- attributes and directories -------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        area, relative = split_mount_path(path)
        if area is None:
            return self._dir_attrs(False)
        if not relative:
            return self._dir_attrs(AREAS[area])
        pending = self._pending_write(area, relative)
        if pending is not None:
            size = os.fstat(pending.temp.fileno()).st_size
            now = time.time_ns()
            return {"st_mode": stat.S_IFREG | 0o644, "st_nlink": 1, "st_uid": self.uid,
                    "st_gid": self.gid, "st_size": size, "st_atime": now, "st_mtime": now,
                    "st_ctime": now}
        info = self._call(self.client.stat, area, relative)
        mtime_ns = int(float(info.get("mtime") or 0) * 1e9)
        if info.get("type") == "dir":
            return self._dir_attrs(AREAS[area], mtime_ns)
        mode = 0o644 if AREAS[area] else 0o444
        return {"st_mode": stat.S_IFREG | mode, "st_nlink": 1, "st_uid": self.uid,
                "st_gid": self.gid, "st_size": int(info.get("size") or 0),
                "st_atime": mtime_ns, "st_mtime": mtime_ns, "st_ctime": mtime_ns}

    def readdir(self, path: str, fh: int) -> list[str]:
        area, relative = split_mount_path(path)
        if area is None:
            return [".", "..", *AREAS]
        entries = self._call(self.client.list, area, relative)
        # A name with a slash or a dot name would make the kernel resolve somewhere else.
        names = [str(e.get("name", "")) for e in entries]
        return [".", "..", *(n for n in names if n not in ("", ".", "..") and "/" not in n
                             and "\x00" not in n)]

    def mkdir(self, path: str, mode: int) -> int:
        _area, relative = self._writable_area(path)
        self._call(self.client.mkdir, relative)
        return 0

    def rmdir(self, path: str) -> int:
        area, relative = self._writable_area(path)
        info = self._call(self.client.stat, area, relative)
        if info.get("type") != "dir":
            raise fuse.FuseOSError(errno.ENOTDIR)
        self._call(self.client.delete, area, relative)  # the runtime refuses one not empty
        return 0

    def unlink(self, path: str) -> int:
        area, relative = self._writable_area(path)
        info = self._call(self.client.stat, area, relative)
        if info.get("type") == "dir":
            raise fuse.FuseOSError(errno.EISDIR)
        self._call(self.client.delete, area, relative)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 20, "f_bfree": 1 << 19,
                "f_bavail": 1 << 19, "f_files": 1 << 16, "f_ffree": 1 << 15,
                "f_namemax": MAX_NAME_BYTES}

    # -- files -------------------------------------------------------------------------------

    def create(self, path: str, mode: int, flags: int = 0) -> int:
        area, relative = self._writable_area(path)
        if not stat.S_ISREG(mode) and stat.S_IFMT(mode):
            raise fuse.FuseOSError(errno.EPERM)
        handle = Handle(area, relative, writable=True, temp=self._new_temp(), dirty=True)
        # Upload the empty file now so the name is checked by the runtime at creation time.
        self._upload(handle)
        handle.dirty = True
        return self._add_handle(handle)

    def open(self, path: str, flags: int) -> int:
        area, relative = split_mount_path(path)
        if area is None or not relative:
            raise fuse.FuseOSError(errno.EISDIR)
        access = flags & os.O_ACCMODE
        wants_write = access != os.O_RDONLY or flags & os.O_TRUNC
        if wants_write and not AREAS[area]:
            raise fuse.FuseOSError(errno.EROFS)
        info = self._call(self.client.stat, area, relative)
        if info.get("type") == "dir":
            raise fuse.FuseOSError(errno.EISDIR)
        if not wants_write:
            return self._add_handle(Handle(area, relative, writable=False))
        temp = self._new_temp()
        if not flags & os.O_TRUNC:  # keep the existing content for an in-place change
            self._call(self.client.download, area, relative, temp)
            temp.flush()  # later reads and writes go through the descriptor
        return self._add_handle(Handle(area, relative, writable=True, temp=temp,
                                       dirty=bool(flags & os.O_TRUNC),
                                       append=bool(flags & os.O_APPEND)))

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        handle = self._handle(fh)
        if handle.temp is not None:
            return os.pread(handle.temp.fileno(), size, offset)
        data: bytes = self._call(self.client.read_range, handle.area, handle.relative, offset,
                                 min(size, MAX_READ))
        return data

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        handle = self._handle(fh)
        if not handle.writable:
            raise fuse.FuseOSError(errno.EBADF)
        if handle.append:  # the kernel may not know the remote size: append here
            offset = os.fstat(handle.temp.fileno()).st_size
        written = os.pwrite(handle.temp.fileno(), data, offset)
        handle.dirty = True
        return written

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        if fh is not None and fh in self._handles and self._handles[fh].writable:
            handle = self._handles[fh]
        else:
            area, relative = self._writable_area(path)
            pending = self._pending_write(area, relative)
            if pending is None:
                temp = self._new_temp()
                if length:
                    self._call(self.client.download, area, relative, temp)
                    temp.flush()
                else:
                    self._call(self.client.stat, area, relative)  # ENOENT if missing
                handle = Handle(area, relative, writable=True, temp=temp, dirty=True)
                os.ftruncate(temp.fileno(), length)
                try:
                    self._upload(handle)
                finally:
                    temp.close()
                return 0
            handle = pending
        os.ftruncate(handle.temp.fileno(), length)
        handle.dirty = True
        return 0

    def flush(self, path: str, fh: int) -> int:
        handle = self._handle(fh)
        if handle.writable:
            self._upload(handle)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        return self.flush(path, fh)

    def release(self, path: str, fh: int) -> int:
        with self._lock:
            handle = self._handles.pop(fh, None)
        if handle is None:
            return 0
        try:
            if handle.writable:
                self._upload(handle)
        finally:
            if handle.temp is not None:
                handle.temp.close()
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        area, relative = split_mount_path(path)
        if area is not None and relative and not AREAS[area]:
            raise fuse.FuseOSError(errno.EROFS)
        return 0  # the runtime keeps its own times; accepting this lets `touch` work

    # -- what the exchange area never holds -------------------------------------------------

    def rename(self, old: str, new: str) -> int:
        self._writable_area(old)
        self._writable_area(new)
        raise fuse.FuseOSError(errno.EXDEV)

    def symlink(self, target: str, source: str) -> int:
        self._writable_area(target)
        raise fuse.FuseOSError(errno.EPERM)

    def link(self, target: str, source: str) -> int:
        self._writable_area(target)
        raise fuse.FuseOSError(errno.EPERM)

    def mknod(self, path: str, mode: int, dev: int) -> int:
        self._writable_area(path)
        raise fuse.FuseOSError(errno.EPERM)

    # `mv` (a copy after EXDEV) and `cp -p` set the mode and owner the source shows, which is
    # what every file here shows: that no-op succeeds, any real change is EPERM.

    def chmod(self, path: str, mode: int) -> int:
        self._writable_area(path)
        if stat.S_IMODE(mode) != stat.S_IMODE(self.getattr(path)["st_mode"]):
            raise fuse.FuseOSError(errno.EPERM)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        self._writable_area(path)
        self.getattr(path)  # ENOENT for a missing name
        if uid not in (-1, self.uid) or gid not in (-1, self.gid):
            raise fuse.FuseOSError(errno.EPERM)
        return 0

    def readlink(self, path: str) -> str:
        raise fuse.FuseOSError(errno.EINVAL)  # nothing in the area is a link
