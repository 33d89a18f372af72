"""An application's process and files, for runs and services alike.

What the runtime does around an app it starts: the environment it gets (`app_environment`), the
starter that drops privileges it could gain (`APPEXEC_SOURCE`, enclave/appexec.py), its stdout and
stderr kept within the manifest's limit (`Capture`) with lines that repeat the bundle's own files
withheld (`withhold_source_lines`), the files it left at its declared outputs (`written_files`),
and the end of it: its process group killed (`kill_group`) and its private directory removed
(`wipe`).
"""

from __future__ import annotations

import builtins
import os
import shutil
import signal
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from enclave.config import RuntimeConfig
from enclave.isolation import AppUser

PIPE_CHUNK = 64 * 1024
MAX_OUTPUT_FILES = 10_000
# The starter's source goes on the command line (`python3 -I -S -c ...`): the app's user need not
# be able to read the runtime's files.
APPEXEC_SOURCE = Path(__file__).with_name("appexec.py").read_text()
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SOURCE_SCAN_FILE_LIMIT = 4 * 1024 * 1024
_SOURCE_SCAN_TOTAL_LIMIT = 64 * 1024 * 1024
_SOURCE_LINE_MIN_CHARS = 6
WITHHELD_LINE = "[line withheld: it repeats a line of the application's files]"


def app_environment(config: RuntimeConfig, home: Path, tmp: Path) -> dict[str, str]:
    """The whole environment an application starts with: nothing of the runtime's own."""
    return {
        "PATH": config.app_path,
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "PYTHONUNBUFFERED": "1",
        # The image's packages (containers/requirements-app.txt).
        "PYTHONPATH": config.app_site,
    }


class Capture:
    """Keeps at most `limit` bytes of a pipe and drains the rest so the child never blocks."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._chunks: list[bytes] = []
        self._size = 0

    def start(self, pipe: Any) -> threading.Thread:
        thread = threading.Thread(target=self._drain, args=(pipe,), daemon=True)
        thread.start()
        return thread

    def _drain(self, pipe: Any) -> None:
        try:
            while chunk := pipe.read1(PIPE_CHUNK) if hasattr(pipe, "read1") else pipe.read(
                    PIPE_CHUNK):
                room = self.limit - self._size
                if room > 0:
                    kept = chunk[:room]
                    self._chunks.append(kept)
                    self._size += len(kept)
        except (OSError, ValueError):
            pass  # pipe closed under us at the end of the run

    def text(self) -> str:
        return b"".join(self._chunks).decode("utf-8", errors="replace")


def withhold_source_lines(text: str, app_dir: Path) -> str:
    """Replace stderr lines that repeat a line of the application's own files.

    A traceback quotes source lines; the owner may allow stderr for diagnostics without meaning
    to publish code, so any line that also occurs in the bundle's files is withheld.
    """
    if not text:
        return text
    known = _file_lines(app_dir)
    out = []
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if len(stripped) >= _SOURCE_LINE_MIN_CHARS and stripped in known:
            out.append(WITHHELD_LINE + ("\n" if line.endswith("\n") else ""))
        else:
            out.append(line)
    return "".join(out)


def _file_lines(root: Path) -> set[str]:
    lines: set[str] = set()
    budget = _SOURCE_SCAN_TOTAL_LIMIT
    for dirpath, _dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode) or st.st_size > _SOURCE_SCAN_FILE_LIMIT:
                    continue
                if st.st_size > budget:
                    return lines
                budget -= st.st_size
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            for line in data.decode("utf-8", errors="ignore").splitlines():
                stripped = line.strip()
                if len(stripped) >= _SOURCE_LINE_MIN_CHARS:
                    lines.add(stripped)
    return lines


def written_files(outputs: Path, relative: str, user: AppUser | None
                   ) -> Iterator[tuple[str, int]]:
    """(outbox path, open descriptor) of each regular file the app left at an output path.

    Walked without following links: a link, a device or a file with several links (which could
    name a file the app may not read) is skipped, as is a file the run's user does not own.
    The caller owns each descriptor it receives.
    """
    parts = relative.split("/")
    try:
        fd = os.open(outputs, _DIR_FLAGS)
    except OSError:
        return
    try:
        for part in parts[:-1]:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
        yield from _files_at(fd, parts[-1], relative, user, [MAX_OUTPUT_FILES])
    except OSError:
        return
    finally:
        os.close(fd)


def _files_at(dir_fd: int, name: str, relative: str, user: AppUser | None,
              budget: builtins.list[int]) -> Iterator[tuple[str, int]]:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return
    if user is not None and st.st_uid != user.uid:
        return
    if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and budget[0] > 0:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            return
        if (os.fstat(fd).st_ino, os.fstat(fd).st_dev) != (st.st_ino, st.st_dev):
            os.close(fd)
            return
        budget[0] -= 1
        yield relative, fd
    elif stat.S_ISDIR(st.st_mode):
        try:
            sub = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError:
            return
        try:
            for child in sorted(os.listdir(sub)):
                yield from _files_at(sub, child, f"{relative}/{child}", user, budget)
        finally:
            os.close(sub)


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def wipe(path: Path) -> bool:
    """Remove a run's private directory, including parts the app made read-only. True if gone."""

    def make_writable_and_retry(function: Callable[[str], object], failed: str,
                                _exc: Any) -> None:
        parent = os.path.dirname(failed)
        for target in (parent, failed):
            try:
                if not os.path.islink(target):
                    os.chmod(target, 0o700)
            except OSError:
                pass
        try:
            function(failed)
        except FileNotFoundError:
            pass

    for _attempt in range(3):
        try:
            shutil.rmtree(path, onerror=make_writable_and_retry)
        except FileNotFoundError:
            pass
        except OSError:
            time.sleep(0.05)
        if not os.path.lexists(path):
            return True
    return False
