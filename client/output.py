"""How commands talk to the user: JSON on stdout for scripts, text otherwise, progress on stderr."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO


def emit(args: Any, data: Any, text: str | None = None, *, stream: TextIO | None = None) -> None:
    """Print `data` as one JSON document with --json, else `text` (if any)."""
    stream = stream or sys.stdout
    if getattr(args, "json", False):
        stream.write(json.dumps(data, sort_keys=True, default=str) + "\n")
    elif text is not None:
        stream.write(text if text.endswith("\n") else text + "\n")
    stream.flush()


def terminal_safe(text: str, stream: TextIO) -> str:
    """Application output shown on a terminal, without escape sequences that could rewrite it."""
    if not stream.isatty():
        return text
    return "".join(c if c in "\n\t" or (c.isprintable()) else "\ufffd" for c in text)


def human_size(n: float) -> str:
    if abs(n) < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if abs(n) < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GiB"


class ProgressBar:
    """A one-line transfer meter on stderr, shown only when stderr is a terminal."""

    def __init__(self, label: str, total: int, *, stream: TextIO | None = None,
                 enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.label = label
        self.total = total
        self.start = time.monotonic()
        self._last = 0.0

    def __call__(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.2 and done < self.total:
            return
        self._last = now
        rate = done / max(now - self.start, 1e-6)
        percent = f"{100 * done / self.total:5.1f}%" if self.total else "  --  "
        self.stream.write(f"\r{self.label}: {percent} {human_size(done)} of "
                          f"{human_size(self.total)} at {human_size(rate)}/s   ")
        self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
