"""The exchange endpoints: `/v1/fs/{area}/{path}`, files in and out of the inbox and outbox.

Paths are checked by the one path rule (`enclave/paths.py`) and walked by `enclave/exchange.py`;
downloads go out with `sendfile`, with one `Range` at most.
"""

from __future__ import annotations

import os
import re
from typing import BinaryIO

from enclave.exchange_errors import ExchangeError
from enclave.http_handler import Params, Query, RequestHandler
from enclave.paths import AREAS, INBOX, split_relative
from enclave.routes import ApiError


class ExchangeEndpoints(RequestHandler):
    def _area(self, params: Params) -> tuple[str, str]:
        area = params["area"]
        if area not in AREAS:
            raise ApiError(404, "not_found",
                           f"unknown area {area!r}; expected one of {', '.join(AREAS)}")
        return area, params["path"]

    def _fs_get(self, params: Params, query: Query) -> None:
        area, path = self._area(params)
        self._only_query(query, {"stat", "list"})
        self._no_body()
        exchange = self.server.exchange
        if "stat" in query and "list" in query:
            raise ApiError(400, "bad_query", "give either ?stat or ?list, not both")
        if "stat" in query:
            entry = exchange.stat(area, path)
            self._send_json(200, {"path": "/".join(split_relative(path)), "type": entry.type,
                                  "size": entry.size, "mtime": entry.mtime})
        elif "list" in query:
            entries = exchange.list(area, path)
            self._send_json(200, {"entries": [e.to_json() for e in entries]})
        else:
            self._send_file(area, path)

    def _send_file(self, area: str, path: str) -> None:
        with self.server.exchange.open_read(area, path) as f:
            size = _fstat_size(f)
            start, end = 0, size - 1
            status = 200
            range_header = self.headers.get("Range")
            if range_header is not None:
                parsed = _parse_range(range_header, size)
                if parsed == "unsatisfiable":
                    self._send_error(416, "range_not_satisfiable",
                                     f"the range {range_header!r} lies outside the file "
                                     f"({size} bytes)", {"Content-Range": f"bytes */{size}"})
                    return
                if isinstance(parsed, tuple):
                    start, end = parsed
                    status = 206
            count = max(0, end - start + 1)
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(count))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            sent = self.connection.sendfile(f, start, count) if count else 0
            if sent != count:
                # The file shrank under us: the promised length cannot be met, end the connection.
                self.close_connection = True

    def _fs_put(self, params: Params, query: Query) -> None:
        area, path = self._area(params)
        self._only_query(query, set())
        if area != INBOX:
            raise ApiError(403, "read_only", "the outbox is read-only for the host; "
                                             "upload into the inbox")
        split_relative(path)
        length = self._check_upload_length()
        try:
            result = self.server.exchange.upload(area, path, self.rfile, length)
        except ExchangeError:
            self.close_connection = True  # the body may be partly unread
            raise
        self._body_pending = False
        self._send_json(201, {"path": result.path, "size": result.size, "sha256": result.sha256})

    def _fs_post(self, params: Params, query: Query) -> None:
        area, path = self._area(params)
        self._only_query(query, {"mkdir"})
        self._no_body()
        if "mkdir" not in query:
            raise ApiError(400, "bad_query", "POST on a file path needs ?mkdir")
        if area != INBOX:
            raise ApiError(403, "read_only", "directories can only be created in the inbox")
        self.server.exchange.mkdir(area, path)
        self._send_json(201, {"path": "/".join(split_relative(path)), "type": "dir"})

    def _fs_delete(self, params: Params, query: Query) -> None:
        area, path = self._area(params)
        self._only_query(query, set())
        self._no_body()
        self.server.exchange.delete(area, path)
        self._send_json(200, {"path": "/".join(split_relative(path)), "deleted": True})


def _fstat_size(f: BinaryIO) -> int:
    return os.fstat(f.fileno()).st_size


_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """One `bytes=a-b` / `a-` / `-n` range -> (start, end); None to ignore; 'unsatisfiable'."""
    found = _RANGE.fullmatch(header.strip())
    if found is None:
        return None  # multiple or unknown ranges: RFC 9110 lets the server send the whole file
    first, last = found.groups()
    if first == "" and last == "":
        return None
    if first == "":
        suffix = int(last)
        if suffix == 0:
            return "unsatisfiable"
        return (max(0, size - suffix), size - 1) if size else "unsatisfiable"
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        return "unsatisfiable"
    return start, min(end, size - 1)
