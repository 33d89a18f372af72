"""The runtime's HTTP/1.1 request handling (docs/ARCHITECTURE.md "Runtime HTTP API").

Built on the standard library's `http.server`; what is added here is what a boundary needs and
`http.server` leaves open:

- limits on the request line, the whole header block, JSON bodies and uploads;
- every error is a JSON object `{"error": {"code", "message"}}`, and a connection whose request
  could not be read to its end is closed, so the next request always starts clean;
- requests are routed by `enclave/routes.py`; the endpoints live in `enclave/endpoints_*.py`.

The connection limits and the head deadline are `enclave/connections.py`'s.
"""

from __future__ import annotations

import binascii
import http.server
import json
import re
from typing import Any
from urllib.parse import parse_qsl

from enclave.connections import RuntimeServer
from enclave.exchange_errors import ExchangeError
from enclave.routes import ApiError, match_route
from enclave.run_records import Credentials, RunRefused
from enclave.service_records import ServiceError

DRAIN_LIMIT = 1024 * 1024  # unread bodies up to this size are discarded before an error answer
ENTRYPOINT = re.compile(r"[A-Za-z0-9_-]{1,64}")
RUN_ID = re.compile(r"[0-9a-f]{16}")

# The fields of a JSON body: name -> (accepted types, required).
FieldSpec = dict[str, tuple[type | tuple[type, ...], bool]]
Params = dict[str, str]  # the route's parameters, percent-decoded
Query = dict[str, str]


class _HeaderTooLarge(Exception):
    pass


class _HeadReader:
    """Wraps the connection's reader while the header block is read, to cap its total size."""

    def __init__(self, raw: Any, budget: int) -> None:
        self._raw = raw
        self._budget = budget

    def readline(self, limit: int = -1) -> bytes:
        want = self._budget + 1 if limit < 0 else min(limit, self._budget + 1)
        line: bytes = self._raw.readline(want)
        self._budget -= len(line)
        if self._budget < 0:
            raise _HeaderTooLarge()
        return line


class RequestHandler(http.server.BaseHTTPRequestHandler):
    """One connection's requests: framing, limits, dispatch to an endpoint, JSON answers.

    The endpoints are methods of subclasses (`enclave/endpoints_*.py`), named `_` + the route's
    handler name; `enclave.server.Handler` puts them together."""

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

    def _json_body(self, fields: FieldSpec) -> dict[str, Any]:
        """Read a JSON object with exactly the given fields: name -> (types, required)."""
        body = self._read_json_object()
        check_fields(body, fields)
        return body

    def _read_json_object(self) -> dict[str, Any]:
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


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def check_fields(body: dict[str, Any], fields: FieldSpec) -> None:
    """`body` has exactly the given fields, of their types; a missing optional one becomes None."""
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


def check_entrypoint(name: str, example: str) -> None:
    if not ENTRYPOINT.fullmatch(name):
        raise ApiError(400, "bad_field", f"entrypoint must be a name like {example!r} "
                                         "(letters, digits, '_' or '-')")


def hex_field(value: str, name: str, max_bytes: int) -> bytes:
    try:
        data = binascii.unhexlify(value)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "bad_field", f"{name} must be hex-encoded bytes") from exc
    if not 1 <= len(data) <= max_bytes:
        raise ApiError(400, "bad_field", f"{name} must be 1 to {max_bytes} bytes")
    return data


def credentials_field(raw: dict[str, Any] | None) -> Credentials | None:
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
