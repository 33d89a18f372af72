"""The runtime's event log: short lines the host may read through `GET /v1/logs`.

Only the runtime's own decisions go here (requests refused, runs started and ended). Never
credentials, never plaintext, never the application's output: callers pass fixed wording plus
identifiers. The same lines go to the `enclave` logger (the enclave console).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TypedDict

logger = logging.getLogger("enclave")


class EventLine(TypedDict):
    seq: int
    time: float
    message: str


class EventPage(TypedDict):
    """What `GET /v1/logs` answers: some lines, and the number to ask from next time."""

    lines: list[EventLine]
    next: int


class EventLog:
    """A bounded, thread-safe ring of numbered lines."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._lines: deque[EventLine] = deque(maxlen=capacity)
        self._next = 1
        self._lock = threading.Lock()

    def add(self, message: str) -> None:
        with self._lock:
            self._lines.append({"seq": self._next, "time": time.time(), "message": message})
            self._next += 1
        logger.info("%s", message)

    def since(self, seq: int, limit: int = 1000) -> EventPage:
        """Lines numbered above `seq` (at most `limit`) and the number to ask from next time."""
        with self._lock:
            lines = [line for line in self._lines if line["seq"] > seq][:limit]
            next_seq = lines[-1]["seq"] if lines else max(seq, self._next - 1)
        return {"lines": lines, "next": next_seq}
