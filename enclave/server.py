"""The runtime's HTTP/1.1 API (docs/ARCHITECTURE.md "Runtime HTTP API", schema `openapi.yaml`).

Built on the standard library's `http.server`, over a listening socket the caller has already
bound: AF_VSOCK in the enclave, AF_UNIX in tests and simulation, same code. What is added here is
what a boundary needs and `http.server` leaves open:

- bounded concurrency: at most `max_connections` connections, each in its own thread; one more
  gets `503` at once instead of waiting behind a slow client;
- limits on the request line, the whole header block, JSON bodies and uploads;
- a deadline for the request head (slowloris) besides a per-read/write timeout;
- every error is a JSON object `{"error": {"code", "message"}}`, and a connection whose request
  could not be read to its end is closed, so the next request always starts clean;
- files stream in both directions through a fixed buffer (uploads) or `sendfile` (downloads).
"""

from __future__ import annotations

import base64
import binascii
import http.server
import json
import os
import re
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from enclave.config import RuntimeConfig
from enclave.events import EventLog
from enclave.exchange import ExchangeArea
from enclave.exchange_errors import ExchangeError
from enclave.isolation import isolation_mode
from enclave.paths import AREAS, INBOX, split_relative
from enclave.receipt import HOST_USER_DATA_MAX_BYTES, host_user_data, receipt_user_data
from enclave.runner import (
    TERMINAL_STATES,
    Credentials,
    KeyProviderFactory,
    Runner,
    RunRefused,
    RunRequest,
    _default_unseal,
    attested_kms_key_provider_factory,
)
from enclave.services import (
    RUNTIME_ERROR_HEADER,
    ServiceError,
    ServiceManager,
    ServiceRequest,
)

NONCE_MAX_BYTES = 512
MAX_RUN_ARGS = 32
MAX_ARG_CHARS = 4096
DRAIN_LIMIT = 1024 * 1024  # unread bodies up to this size are discarded before an error answer
_ENTRYPOINT = re.compile(r"[A-Za-z0-9_-]{1,64}")
_RUN_ID = re.compile(r"[0-9a-f]{16}")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def headers(self) -> dict[str, str]:
        """Headers the error answer carries besides the JSON body."""
        return {}


class MethodNotAllowed(ApiError):
    """405: the path exists, under other methods; they are carried as data for `Allow`."""

    def __init__(self, method: str, raw_path: str, allowed: tuple[str, ...]) -> None:
        super().__init__(405, "method_not_allowed",
                         f"{method} is not allowed on {raw_path}; allowed: {', '.join(allowed)}")
        self.allowed = allowed

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)}


class _HeaderTooLarge(Exception):
    pass


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    handler: str

    @property
    def pattern(self) -> re.Pattern[str]:
        # `{path}` may be empty and span several segments; every other parameter is one segment.
        regex = re.escape(self.template)
        regex = regex.replace(re.escape("{path}"), "(?P<path>.*)")
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", regex)
        return re.compile(regex)


ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/health", "health"),
    Route("GET", "/v1/fs/{area}/{path}", "fs_get"),
    Route("PUT", "/v1/fs/{area}/{path}", "fs_put"),
    Route("POST", "/v1/fs/{area}/{path}", "fs_post"),
    Route("DELETE", "/v1/fs/{area}/{path}", "fs_delete"),
    Route("POST", "/v1/runs", "run_create"),
    Route("GET", "/v1/runs", "run_list"),
    Route("GET", "/v1/runs/{id}", "run_get"),
    Route("DELETE", "/v1/runs/{id}", "run_cancel"),
    Route("POST", "/v1/runs/{id}/receipt", "run_receipt"),
    Route("POST", "/v1/services", "service_start"),
    Route("GET", "/v1/services", "service_list"),
    Route("GET", "/v1/services/{id}", "service_get"),
    Route("DELETE", "/v1/services/{id}", "service_stop"),
    *(Route(method, "/v1/services/{id}/http/{path}", "service_http")
      for method in ("GET", "POST", "PUT", "DELETE")),
    Route("POST", "/v1/attestation", "attestation"),
    Route("GET", "/v1/logs", "logs"),
)
_COMPILED = [(route, route.pattern) for route in ROUTES]


def match_route(method: str, raw_path: str) -> tuple[Route, dict[str, str]]:
    """The route for a request, its parameters percent-decoded once; `ApiError` 404/405."""
    if raw_path.rstrip("/") in ("/v1/fs/inbox", "/v1/fs/outbox"):
        raw_path = raw_path.rstrip("/") + "/"  # the area root, listed or stat'ed
    allowed: list[str] = []
    for route, pattern in _COMPILED:
        found = pattern.fullmatch(raw_path)
        if found is None:
            continue
        if route.method != method:
            allowed.append(route.method)
            continue
        try:
            params = {k: unquote(v, errors="strict") for k, v in found.groupdict().items()}
        except UnicodeDecodeError as exc:
            raise ApiError(400, "bad_path", "the URL path is not valid percent-encoded UTF-8") \
                from exc
        return route, params
    if allowed:
        raise MethodNotAllowed(method, raw_path, tuple(allowed))
    raise ApiError(404, "not_found", f"no such endpoint: {method} {raw_path}; see openapi.yaml")


class RuntimeServer(socketserver.BaseServer):
    """Serves the API on an already-bound socket; `serve_forever()` / `shutdown()` as usual."""

    def __init__(self, sock: socket.socket, *, config: RuntimeConfig, exchange: ExchangeArea,
                 runner: Runner, events: EventLog, nsm: Any,
                 services: ServiceManager | None = None) -> None:
        super().__init__(sock.getsockname(), _Handler)
        self.socket = sock
        self.config = config
        self.exchange = exchange
        self.runner = runner
        self.services = services
        self.events = events
        self.nsm = nsm
        self._slots = threading.BoundedSemaphore(config.max_connections)
        self._deadlines: dict[socket.socket, float] = {}
        self._deadline_lock = threading.Lock()
        self._watchdog = threading.Thread(target=self._watch, name="head-deadline", daemon=True)
        self._watchdog_stop = threading.Event()
        sock.listen(max(config.max_connections, 16))
        self._watchdog.start()

    # socketserver plumbing for a socket we did not create ------------------------------------

    def fileno(self) -> int:
        return self.socket.fileno()

    def get_request(self) -> tuple[socket.socket, Any]:
        return self.socket.accept()

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        try:
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        request.close()

    def close_request(self, request: socket.socket) -> None:  # type: ignore[override]
        request.close()

    def server_close(self) -> None:
        self._watchdog_stop.set()
        self.socket.close()

    def process_request(self, request: socket.socket, client_address: Any) -> None:  # type: ignore[override]
        if not self._slots.acquire(blocking=False):
            self.events.add("connection refused: all connection slots busy")
            _refuse_busy(request, self.config.max_connections)
            self.shutdown_request(request)
            return
        thread = threading.Thread(target=self._serve_connection, args=(request, client_address),
                                  daemon=True)
        thread.start()

    def _serve_connection(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception as exc:
            self.events.add(f"connection ended by an internal error ({exc.__class__.__name__})")
        finally:
            self.disarm(request)
            self.shutdown_request(request)
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.events.add("connection ended by an internal error")

    # head deadline ---------------------------------------------------------------------------

    def arm(self, conn: socket.socket, seconds: float) -> None:
        with self._deadline_lock:
            self._deadlines[conn] = time.monotonic() + seconds

    def disarm(self, conn: socket.socket) -> None:
        with self._deadline_lock:
            self._deadlines.pop(conn, None)

    def _watch(self) -> None:
        period = min(0.25, self.config.header_timeout / 4)
        while not self._watchdog_stop.wait(period):
            now = time.monotonic()
            with self._deadline_lock:
                expired = [c for c, d in self._deadlines.items() if d <= now]
                for conn in expired:
                    del self._deadlines[conn]
            for conn in expired:
                try:
                    conn.shutdown(socket.SHUT_RDWR)  # unblocks the reader thread
                except OSError:
                    pass


def _refuse_busy(request: socket.socket, limit: int) -> None:
    body = _error_body("busy", f"the runtime already serves {limit} connections; retry shortly")
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n")
    try:
        request.settimeout(1.0)
        request.sendall(head.encode("ascii") + body)
    except OSError:
        pass


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class _HeadReader:
    """Wraps the connection's reader while the header block is read, to cap its total size."""

    def __init__(self, raw: Any, budget: int) -> None:
        self._raw = raw
        self._budget = budget

    def readline(self, limit: int = -1) -> bytes:
        want = self._budget + 1 if limit < 0 else min(limit, self._budget + 1)
        line = self._raw.readline(want)
        self._budget -= len(line)
        if self._budget < 0:
            raise _HeaderTooLarge()
        return line


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sealed-enclave-runtime"
    sys_version = ""
    server: RuntimeServer

    # -- connection and request framing --------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.config.io_timeout)

    def version_string(self) -> str:
        return self.server_version

    def address_string(self) -> str:
        return "host"  # AF_UNIX peers have no address; vsock peers are always the parent

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # requests are not logged line by line; decisions go to the event log

    def handle_one_request(self) -> None:
        config = self.server.config
        self.server.arm(self.connection, config.header_timeout)
        try:
            try:
                self.raw_requestline = self.rfile.readline(config.max_request_line_bytes + 1)
            except OSError:
                self.close_connection = True
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if len(self.raw_requestline) > config.max_request_line_bytes:
                self.requestline, self.request_version, self.command = "", "HTTP/1.0", ""
                self.close_connection = True
                self._send_error(414, "uri_too_long",
                                 f"the request line exceeds {config.max_request_line_bytes} bytes")
                return
            real_rfile = self.rfile
            self.rfile = _HeadReader(real_rfile, config.max_header_bytes)  # type: ignore[assignment]
            try:
                parsed = self.parse_request()
            except _HeaderTooLarge:
                self.close_connection = True
                self._send_error(431, "header_too_large",
                                 f"the request headers exceed {config.max_header_bytes} bytes")
                return
            except OSError:
                self.close_connection = True
                return
            finally:
                self.rfile = real_rfile
            if not parsed:
                return  # parse_request already answered with send_error
        finally:
            self.server.disarm(self.connection)
        try:
            self._dispatch()
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own framing errors, as JSON like every other error."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.1"  # always answer with a status line and headers
        codes = {400: "bad_request", 414: "uri_too_long", 431: "header_too_large",
                 501: "not_implemented", 505: "http_version_not_supported"}
        text = message or self.responses.get(code, ("error",))[0]
        self._send_error(code, codes.get(code, "bad_request"), f"malformed request: {text}")

    def handle_expect_100(self) -> bool:
        # Refuse before the client sends a large body we would only discard.
        try:
            if self.command == "PUT":
                self._check_upload_length()
        except ApiError as exc:
            self.close_connection = True
            self._send_error(exc.status, exc.code, exc.message)
            return False
        return super().handle_expect_100()

    def _dispatch(self) -> None:
        raw_path, _, raw_query = self.path.partition("?")
        declared = self.headers.get("Content-Length", "0")
        self._body_pending = declared != "0"
        if len(self.headers.get_all("Content-Length") or []) > 1:
            self.close_connection = True  # ambiguous framing: never guess which one counts
            self._send_error(400, "bad_request", "the request has several Content-Length headers")
            return
        if self.command not in ("GET", "PUT", "POST", "DELETE"):
            self.close_connection = True  # e.g. HEAD: a body in the answer would desynchronise
            self._send_error(501, "not_implemented",
                             f"method {self.command} is not supported; see openapi.yaml")
            return
        try:
            if not raw_path.startswith("/"):
                raise ApiError(400, "bad_request", "the request target must be an absolute path")
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                raise ApiError(411, "length_required",
                               "chunked bodies are not accepted; send Content-Length")
            route, params = match_route(self.command, raw_path)
            query = self._query(raw_query)
            getattr(self, "_" + route.handler)(params, query)
        except ApiError as exc:
            self._close_if_body_unread()
            self._send_error(exc.status, exc.code, exc.message, exc.headers())
        except (ExchangeError, RunRefused, ServiceError) as exc:
            self._close_if_body_unread()
            self._send_error(exc.status, exc.code, exc.message)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            raise
        except Exception as exc:
            self.server.events.add(f"request failed: internal error {exc.__class__.__name__}")
            self.close_connection = True
            self._send_error(500, "internal_error",
                             "the runtime failed on this request; see `logs` and retry")

    # -- helpers ------------------------------------------------------------------------------

    def _close_if_body_unread(self) -> None:
        """Before an error answer: read a small unread body away, or end the connection.

        An unread body would be parsed as the next request. A small one is discarded so the
        client, still sending, gets to read the answer; a large one ends the connection.
        """
        if not self._body_pending:
            return
        declared = self.headers.get("Content-Length", "")
        if not self.close_connection and declared.isdigit() and int(declared) <= DRAIN_LIMIT:
            remaining = int(declared)
            try:
                while remaining:
                    chunk = self.rfile.read(min(remaining, 64 * 1024))
                    if not chunk:
                        break
                    remaining -= len(chunk)
            except OSError:
                pass
            if remaining == 0:
                self._body_pending = False
                return
        self.close_connection = True

    def _query(self, raw_query: str) -> dict[str, str]:
        try:
            pairs = parse_qsl(raw_query, keep_blank_values=True, strict_parsing=False,
                              errors="strict", max_num_fields=8)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "bad_query", f"the query string is malformed: {exc}") from exc
        query: dict[str, str] = {}
        for key, value in pairs:
            if key in query:
                raise ApiError(400, "bad_query", f"query parameter {key!r} is given twice")
            query[key] = value
        return query

    def _only_query(self, query: dict[str, str], allowed: set[str]) -> None:
        unknown = set(query) - allowed
        if unknown:
            raise ApiError(400, "bad_query",
                           f"unknown query parameter(s) {', '.join(sorted(unknown))}; "
                           f"expected {', '.join(sorted(allowed)) or 'none'}")

    def _content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        if value is None:
            return None
        if not value.isdigit() or len(value) > 20:
            self.close_connection = True
            raise ApiError(400, "bad_request", f"Content-Length {value!r} is not a byte count")
        return int(value)

    def _check_upload_length(self) -> int:
        length = self._content_length()
        if length is None:
            self.close_connection = True
            raise ApiError(411, "length_required", "an upload needs a Content-Length header")
        limit = self.server.config.max_upload_bytes
        if length > limit:
            self.close_connection = True
            raise ApiError(413, "payload_too_large",
                           f"the upload is {length} bytes; the limit is {limit}")
        return length

    def _no_body(self) -> None:
        length = self._content_length()
        if length:
            self.close_connection = True  # the unread body would be parsed as the next request
            raise ApiError(400, "unexpected_body", "this request takes no body")

    def _json_body(self, fields: dict[str, tuple[type | tuple[type, ...], bool]]) -> dict:
        """Read a JSON object with exactly the given fields: name -> (types, required)."""
        length = self._content_length()
        if length is None:
            self.close_connection = True
            raise ApiError(411, "length_required", "a JSON body needs a Content-Length header")
        limit = self.server.config.max_json_bytes
        if length > limit:
            raise ApiError(413, "payload_too_large",
                           f"the JSON body is {length} bytes; the limit is {limit}")
        raw = self.rfile.read(length)
        self._body_pending = False
        if len(raw) != length:
            self.close_connection = True
            raise ApiError(400, "bad_request", "the body ended before Content-Length bytes")
        try:
            body = json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_json", "the body must be a JSON object")
        unknown = set(body) - set(fields)
        if unknown:
            raise ApiError(400, "unknown_field",
                           f"unknown field(s) {', '.join(sorted(unknown))}; "
                           f"expected {', '.join(sorted(fields))}")
        for name, (types, required) in fields.items():
            if name not in body or body[name] is None:
                if required:
                    raise ApiError(400, "missing_field", f"field {name!r} is required")
                body[name] = None
                continue
            if not isinstance(body[name], types):
                raise ApiError(400, "bad_field", f"field {name!r} has the wrong type")
        return body

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _send_error(self, status: int, code: str, message: str,
                    headers: dict[str, str] | None = None) -> None:
        try:
            self._send_json(status, {"error": {"code": code, "message": message}}, headers)
        except OSError:
            self.close_connection = True

    # -- endpoints ----------------------------------------------------------------------------

    def _health(self, params: dict, query: dict) -> None:
        self._only_query(query, set())
        self._no_body()
        runner = self.server.runner
        policy = runner.policy
        self._send_json(200, {
            "status": "ok", "version": self.server.config.version,
            "isolation": isolation_mode(),
            "image_policy": policy.to_json() if policy is not None else None,
        })

    def _area(self, params: dict) -> tuple[str, str]:
        area = params["area"]
        if area not in AREAS:
            raise ApiError(404, "not_found",
                           f"unknown area {area!r}; expected one of {', '.join(AREAS)}")
        return area, params["path"]

    def _fs_get(self, params: dict, query: dict) -> None:
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

    def _fs_put(self, params: dict, query: dict) -> None:
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

    def _fs_post(self, params: dict, query: dict) -> None:
        area, path = self._area(params)
        self._only_query(query, {"mkdir"})
        self._no_body()
        if "mkdir" not in query:
            raise ApiError(400, "bad_query", "POST on a file path needs ?mkdir")
        if area != INBOX:
            raise ApiError(403, "read_only", "directories can only be created in the inbox")
        self.server.exchange.mkdir(area, path)
        self._send_json(201, {"path": "/".join(split_relative(path)), "type": "dir"})

    def _fs_delete(self, params: dict, query: dict) -> None:
        area, path = self._area(params)
        self._only_query(query, set())
        self._no_body()
        self.server.exchange.delete(area, path)
        self._send_json(200, {"path": "/".join(split_relative(path)), "deleted": True})

    def _run_create(self, params: dict, query: dict) -> None:
        self._only_query(query, set())
        body = self._json_body({
            "bundle": (str, True),
            "entrypoint": (str, True),
            "args": (list, False),
            "credentials": (dict, False),
        })
        split_relative(body["bundle"])
        if not _ENTRYPOINT.fullmatch(body["entrypoint"]):
            raise ApiError(400, "bad_field", "entrypoint must be a name like 'predict' "
                                             "(letters, digits, '_' or '-')")
        args = body["args"] or []
        if len(args) > MAX_RUN_ARGS or not all(
                isinstance(a, str) and len(a) <= MAX_ARG_CHARS for a in args):
            raise ApiError(400, "bad_field", f"args must be a list of at most {MAX_RUN_ARGS} "
                                             f"strings of at most {MAX_ARG_CHARS} characters")
        request = RunRequest(
            bundle="/".join(split_relative(body["bundle"])),
            entrypoint=body["entrypoint"],
            args=tuple(args),
            credentials=_credentials(body["credentials"]),
        )
        job = self.server.runner.submit(request)
        self._send_json(202, {"id": job.id, "state": job.state})

    def _job(self, params: dict) -> Any:
        run_id = params["id"]
        job = self.server.runner.get(run_id) if _RUN_ID.fullmatch(run_id) else None
        if job is None:
            raise ApiError(404, "not_found", f"no run {run_id!r}; list runs with GET /v1/runs")
        return job

    def _run_list(self, params: dict, query: dict) -> None:
        self._only_query(query, set())
        self._no_body()
        self._send_json(200, {"runs": [job.view() for job in self.server.runner.list()]})

    def _run_get(self, params: dict, query: dict) -> None:
        self._only_query(query, set())
        self._no_body()
        self._send_json(200, self._job(params).view())

    def _run_cancel(self, params: dict, query: dict) -> None:
        self._only_query(query, set())
        self._no_body()
        job = self._job(params)
        if job.state in TERMINAL_STATES:
            raise ApiError(409, "run_finished", f"run {job.id} already ended ({job.state})")
        self.server.runner.cancel(job.id)
        self._send_json(202, job.view())

    def _run_receipt(self, params: dict, query: dict) -> None:
        self._only_query(query, set())
        body = self._json_body({"nonce": (str, True)})
        nonce = _hex_field(body["nonce"], "nonce", NONCE_MAX_BYTES)
        job = self._job(params)
        if job.state not in TERMINAL_STATES:
            raise ApiError(409, "run_in_progress",
                           f"run {job.id} is still {job.state}; ask for a receipt once it ended")
        receipt = job.receipt()
        document = self._attest(nonce=nonce, user_data=receipt_user_data(receipt))
        self._send_json(200, {"document": document, "receipt": receipt})

    # -- services ------------------------------------------------------------------------------

    def _service_manager(self) -> ServiceManager:
        if self.server.services is None:
            raise ApiError(503, "services_unavailable", "this runtime serves no services")
        return self.server.services

    def _service(self, params: dict) -> Any:
        service_id = params["id"]
        manager = self._service_manager()
        service = manager.get(service_id) if _RUN_ID.fullmatch(service_id) else None
        if service is None:
            raise ApiError(404, "not_found",
                           f"no service {service_id!r}; list services with GET /v1/services")
        return service

    def _service_start(self, params: dict, query: dict) -> None:
        self._only_query(query, set())
        body = self._json_body({
            "bundle": (str, True),
            "entrypoint": (str, True),
            "credentials": (dict, False),
        })
        split_relative(body["bundle"])
        if not _ENTRYPOINT.fullmatch(body["entrypoint"]):
            raise ApiError(400, "bad_field", "entrypoint must be a name like 'serve' "
                                             "(letters, digits, '_' or '-')")
        service = self._service_manager().start(ServiceRequest(
            bundle="/".join(split_relative(body["bundle"])),
            entrypoint=body["entrypoint"],
            credentials=_credentials(body["credentials"]),
        ))
        self._send_json(202, {"id": service.id, "state": service.state})

    def _service_list(self, params: dict, query: dict) -> None:
        self._only_query(query, set())
        self._no_body()
        services = self._service_manager().list()
        self._send_json(200, {"services": [service.view() for service in services]})

    def _service_get(self, params: dict, query: dict) -> None:
        self._only_query(query, set())
        self._no_body()
        self._send_json(200, self._service(params).view())

    def _service_stop(self, params: dict, query: dict) -> None:
        self._only_query(query, set())
        self._no_body()
        service = self._service(params)
        self._service_manager().stop(service.id)
        self._send_json(200, service.view())

    def _service_http(self, params: dict, query: dict) -> None:
        """Forward one request to the service: its path and query as sent, its body as is.

        An error the runtime gives itself carries RUNTIME_ERROR_HEADER, which a service cannot
        set (only its status, Content-Type and body are passed on)."""
        try:
            self._forward(params)
        except (ApiError, ServiceError) as exc:
            self._close_if_body_unread()
            self._send_error(exc.status, exc.code, exc.message, {RUNTIME_ERROR_HEADER: exc.code})

    def _forward(self, params: dict) -> None:
        service = self._service(params)
        spec = service.spec
        limit = spec.max_request_bytes if spec is not None else 0
        length = self._content_length() or 0
        if length > limit:
            # A small refused body is read away (the client may still be sending it), a large
            # one ends the connection: the runtime never buffers what the manifest refuses.
            service.count(served=False, error="request too large")
            raise ApiError(413, "request_too_large",
                           f"the request body is {length} bytes; the service's manifest "
                           f"allows {limit}")
        body = self.rfile.read(length) if length else b""
        self._body_pending = False
        if len(body) != length:
            self.close_connection = True
            raise ApiError(400, "bad_request", "the body ended before Content-Length bytes")
        prefix = f"/v1/services/{service.id}/http"
        target = self.path[len(prefix):]
        if not target.startswith("/"):
            target = "/" + target
        headers = {name: value for name in ("Content-Type", "Accept")
                   if (value := self.headers.get(name)) is not None}
        answer = self._service_manager().forward(service.id, self.command, target, headers, body)
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self.send_header("Cache-Control", "no-store")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(answer.body)

    def _attestation(self, params: dict, query: dict) -> None:
        self._only_query(query, set())
        body = self._json_body({"nonce": (str, True), "user_data": (str, False)})
        nonce = _hex_field(body["nonce"], "nonce", NONCE_MAX_BYTES)
        user_data = None
        if body["user_data"] is not None:
            # Tagged as the host's, so it can never equal a run receipt's binding.
            user_data = host_user_data(
                _hex_field(body["user_data"], "user_data", HOST_USER_DATA_MAX_BYTES))
        self._send_json(200, {"document": self._attest(nonce=nonce, user_data=user_data)})

    def _attest(self, *, nonce: bytes, user_data: bytes | None) -> str:
        nsm = self.server.nsm
        if nsm is None:
            raise ApiError(503, "attestation_unavailable",
                           "this runtime has no NSM device configured (--nsm-device)")
        try:
            document = nsm.attestation(nonce=nonce, user_data=user_data)
        except Exception as exc:
            self.server.events.add(f"attestation failed: {exc.__class__.__name__}")
            detail = (str(exc) or exc.__class__.__name__)[:200]
            raise ApiError(502, "attestation_failed",
                           f"the NSM refused the attestation request ({detail}); "
                           "check the runtime's --nsm-device and retry") from exc
        self.server.events.add("attestation document issued")
        return base64.b64encode(document).decode("ascii")

    def _logs(self, params: dict, query: dict) -> None:
        self._only_query(query, {"since"})
        self._no_body()
        since = query.get("since", "0")
        if not since.isdigit() or len(since) > 18:
            raise ApiError(400, "bad_query", "since must be a non-negative integer")
        self._send_json(200, self.server.events.since(int(since)))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _hex_field(value: str, name: str, max_bytes: int) -> bytes:
    try:
        data = binascii.unhexlify(value)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "bad_field", f"{name} must be hex-encoded bytes") from exc
    if not 1 <= len(data) <= max_bytes:
        raise ApiError(400, "bad_field", f"{name} must be 1 to {max_bytes} bytes")
    return data


def _credentials(raw: dict | None) -> Credentials | None:
    if raw is None:
        return None
    allowed = {"access_key_id", "secret_access_key", "session_token"}
    unknown = set(raw) - allowed
    if unknown:
        raise ApiError(400, "unknown_field",
                       f"unknown credentials field(s) {', '.join(sorted(unknown))}")
    for name in ("access_key_id", "secret_access_key"):
        if not isinstance(raw.get(name), str) or not 1 <= len(raw[name]) <= 2048:
            raise ApiError(400, "bad_field", f"credentials.{name} must be a non-empty string")
    token = raw.get("session_token")
    if token is not None and (not isinstance(token, str) or len(token) > 8192):
        raise ApiError(400, "bad_field", "credentials.session_token must be a string")
    return Credentials(raw["access_key_id"], raw["secret_access_key"], token)


def _fstat_size(f: Any) -> int:
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


def make_server(
    sock: socket.socket,
    *,
    config: RuntimeConfig,
    nsm: Any = None,
    key_provider_factory: KeyProviderFactory | None = None,
    unseal: Callable[..., Any] | None = None,
    events: EventLog | None = None,
) -> RuntimeServer:
    """The runtime server on an already-bound stream socket (AF_VSOCK or AF_UNIX).

    `nsm` is the attestation device (`enclave.nsm.NsmClient`, or a simulated one); the key
    provider factory defaults to attested KMS Decrypt with that NSM. Tests inject fakes.
    """
    events = events or EventLog()
    exchange = ExchangeArea(config.exchange_root)
    factory = key_provider_factory or attested_kms_key_provider_factory(config, nsm)
    runner_kwargs: dict[str, Any] = {"key_provider_factory": factory}
    if unseal is not None:
        runner_kwargs["unseal"] = unseal
    runner = Runner(config, exchange, events, **runner_kwargs)
    services = ServiceManager(config, exchange, events, users=runner.users,
                              key_provider_factory=factory,
                              unseal=unseal if unseal is not None else _default_unseal)
    server = RuntimeServer(sock, config=config, exchange=exchange, runner=runner, events=events,
                           nsm=nsm, services=services)
    events.add(f"runtime {config.version} serving")
    return server


__all__ = ["ROUTES", "ApiError", "MethodNotAllowed", "RuntimeServer", "make_server", "match_route"]
