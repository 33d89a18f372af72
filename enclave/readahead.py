"""The read-ahead reader under unsealing: the sealed message read in a thread, a bounded
number of chunks ahead of decryption."""

from __future__ import annotations

import queue
import threading
from typing import BinaryIO

from enclave.bundle_format import UnsealError
from enclave.sdk_errors import describe_error


class PrefetchingReader:
    """Reads the sealed message ahead in a thread, so reading the bundle overlaps decryption.

    Unsealing is bound by copies (read, decrypt, write); file reads release the GIL, so a
    reader thread a few chunks ahead takes the read off the decrypting thread (about a tenth
    of the unseal time here). The queue is bounded, so memory stays constant; a read error
    surfaces on the consuming side; `close` stops the thread whatever state it is in.
    """

    CHUNK = 4 * 1024 * 1024
    DEPTH = 4

    def __init__(self, source: BinaryIO) -> None:
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=self.DEPTH)
        self._stop = threading.Event()
        self._chunk = b""
        self._offset = 0
        self._eof = False
        self._thread = threading.Thread(target=self._fill, args=(source,), daemon=True,
                                        name="unseal-prefetch")
        self._thread.start()

    def _fill(self, source: BinaryIO) -> None:
        try:
            while not self._stop.is_set():
                data = source.read(self.CHUNK)
                self._put(data)
                if not data:
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(exc)

    def _put(self, item: bytes | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def read(self, n: int = -1) -> bytes:
        parts = []
        wanted = n if n is not None and n >= 0 else None
        while (wanted is None or wanted > 0) and not self._eof:
            if self._offset == len(self._chunk):
                item = self._queue.get()
                if isinstance(item, BaseException):
                    self._eof = True
                    if isinstance(item, OSError):
                        raise UnsealError(
                            f"cannot read the bundle: {describe_error(item)}") from item
                    raise item
                if not item:
                    self._eof = True
                    break
                self._chunk, self._offset = item, 0
            end = len(self._chunk) if wanted is None else self._offset + wanted
            piece = self._chunk[self._offset:end]
            self._offset += len(piece)
            parts.append(piece)
            if wanted is not None:
                wanted -= len(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
