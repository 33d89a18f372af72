"""HTTP/1.1 client of the enclave runtime API (docs/ARCHITECTURE.md, "Runtime HTTP API").

The runtime listens on an AF_VSOCK port in production and on a Unix socket in simulation; the
only difference on this side is the socket `connect()` makes. Files stream in both directions
through a fixed-size buffer (uploads with `sendfile`), so memory stays constant whatever the size.
Every failure becomes a `ClientError` subclass carrying the server's own one-line message.
"""

from __future__ import annotations

import base64
import builtins
import http.client
import json
import socket
import threading
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode

from client.api_errors import error_from_response
from client.errors import (
    ClientError,
    EnclaveError,
    NotFoundError,
    TimeoutExpired,
    UsageError,
)
from client.transport import (
    CHUNK,
    DEFAULT_TIMEOUT,
    Address,
    Progress,
    make_connection,
    stream_body,
    unreachable_hint,
)
from enclave.exchange_errors import PathRejected
from enclave.paths import AREAS, INBOX, split_relative
from enclave.service_records import RUNTIME_ERROR_HEADER

MAX_JSON_RESPONSE = 64 << 20  # control answers are small; never buffer without bound

@dataclass(frozen=True)
class ServiceAnswer:
    status: int
    content_type: str
    body: bytes


def check_remote_path(path: str, *, allow_empty: bool = False) -> str:
    """A path inside the exchange area, checked by the runtime's own rule before anything is sent.

    `enclave.paths.split_relative` is the rule the runtime applies, so what it would refuse is
    refused here with the same reason, and nothing else is; only a trailing '/' is dropped.
    """
    try:
        parts = split_relative(path)
    except PathRejected as exc:
        raise UsageError(f"remote path refused: {exc.message}") from None
    if not parts and not allow_empty:
        raise UsageError("remote path is empty; name a file, e.g. data.csv")
    return "/".join(parts)


def _fs_url(area: str, path: str, flag: str | None = None) -> str:
    if area not in AREAS:
        raise UsageError(f"unknown exchange area {area!r}; expected one of {', '.join(AREAS)}")
    url = f"/v1/fs/{area}/{quote(path, safe='/')}"
    return f"{url}?{flag}" if flag else url


class RuntimeClient:
    """One client of one runtime. Thread-safe: each thread keeps its own keep-alive connection."""

    def __init__(self, address: Address, *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self.address = address
        self.timeout = timeout
        self._local = threading.local()

    # -- plumbing -------------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = make_connection(self.address, self.timeout)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def __enter__(self) -> RuntimeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transport_error(self, exc: BaseException) -> ClientError:
        self.close()
        if isinstance(exc, TimeoutError | socket.timeout):
            return TimeoutExpired(
                f"the enclave runtime at {self.address} did not answer within {self.timeout:g}s; "
                "check `python -m client logs` or raise --timeout")
        if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
            return NotFoundError(f"no enclave runtime answers at {self.address} "
                                 f"({exc.strerror or exc}); {unreachable_hint(self.address)}")
        return EnclaveError(f"connection to the enclave runtime at {self.address} failed: {exc}; "
                            "retry, and check `python -m client logs` if it persists")

    def _send(self, method: str, url: str, *, body: bytes | None = None,
              headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        """Send one request and return its response, retrying once on a stale keep-alive.

        A connection closed while the request was still being sent is read for the answer the
        server may have given before reading it: a refused size, or `busy` when it already
        serves as many connections as it may (it answers at once and closes)."""
        for attempt in (1, 2):
            conn = self._connection()
            reused = conn.sock is not None
            try:
                conn.request(method, url, body=body, headers=headers or {})
                return conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                if not isinstance(exc, http.client.RemoteDisconnected):
                    try:
                        return conn.getresponse()
                    except (OSError, http.client.HTTPException):
                        pass
                # The server may close an idle keep-alive connection between our requests; then
                # the request was never read and sending it again is safe. On a fresh
                # connection the server may have acted on it (a run started): never resend.
                self.close()
                if attempt == 2 or not reused:
                    raise self._transport_error(exc) from exc
            except (OSError, http.client.HTTPException) as exc:
                raise self._transport_error(exc) from exc
        raise AssertionError("unreachable")

    def _check(self, response: http.client.HTTPResponse) -> http.client.HTTPResponse:
        if response.status < 400:
            return response
        raw = response.read(64 * 1024)
        raise error_from_response(response.status, raw)

    def _json(self, method: str, url: str, payload: Any = None) -> dict[str, Any]:
        """The runtime's answer to a request, a JSON object."""
        result = self._json_value(method, url, payload)
        if not isinstance(result, dict):
            raise EnclaveError(f"the enclave runtime's answer to {method} {url} is not a JSON "
                               "object; is --socket/--cid pointing at the runtime?")
        return result

    def _json_value(self, method: str, url: str, payload: Any = None) -> Any:
        body = None
        headers = {}
        if payload is not None:
            body = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        response = self._check(self._send(method, url, body=body, headers=headers))
        try:
            raw = response.read(MAX_JSON_RESPONSE + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise self._transport_error(exc) from exc
        if len(raw) > MAX_JSON_RESPONSE:
            self.close()
            raise EnclaveError(f"the runtime's answer to {method} {url} exceeds "
                               f"{MAX_JSON_RESPONSE // (1 << 20)} MiB; refusing to read it")
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise EnclaveError(f"the enclave runtime sent a response that is not JSON for {method} "
                               f"{url}; is --socket/--cid pointing at the runtime?") from exc

    # -- health and files ---------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._json("GET", "/v1/health")

    def stat(self, area: str, path: str) -> dict[str, Any]:
        return self._json("GET", _fs_url(area, check_remote_path(path, allow_empty=True), "stat"))

    # From here on `list` in this class body names this method: annotations below that mean
    # the type spell it `builtins.list`.
    def list(self, area: str, path: str = "") -> list[dict[str, Any]]:
        result = self._json("GET", _fs_url(area, check_remote_path(path, allow_empty=True), "list"))
        return list(result.get("entries", []))

    def mkdir(self, path: str) -> dict[str, Any]:
        return self._json("POST", _fs_url(INBOX, check_remote_path(path), "mkdir"))

    def delete(self, area: str, path: str) -> dict[str, Any]:
        return self._json("DELETE", _fs_url(area, check_remote_path(path)))

    def upload(self, path: str, source: BinaryIO, size: int, *,
               progress: Progress | None = None) -> dict[str, Any]:
        """PUT `size` bytes from `source` (read from its current position) to inbox/`path`."""
        url = _fs_url(INBOX, check_remote_path(path))
        self.close()  # a fresh connection: a failed upload must not poison a keep-alive one
        conn = self._connection()
        try:
            conn.putrequest("PUT", url)
            conn.putheader("Content-Type", "application/octet-stream")
            conn.putheader("Content-Length", str(size))
            conn.endheaders()
        except OSError as exc:
            raise self._transport_error(exc) from exc
        try:
            stream_body(conn, source, size, progress)
        except (BrokenPipeError, ConnectionResetError) as exc:
            # The runtime may refuse early (too large, bad name) and close: prefer its answer.
            try:
                response = conn.getresponse()
            except (OSError, http.client.HTTPException):
                raise self._transport_error(exc) from exc
            self._check(response)
            raise self._transport_error(exc) from exc
        except OSError as exc:
            raise self._transport_error(exc) from exc
        try:
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            raise self._transport_error(exc) from exc
        self._check(response)
        answer = json.loads(response.read() or b"{}")
        if not isinstance(answer, dict):
            raise EnclaveError(f"the enclave runtime's answer to PUT {url} is not a JSON object")
        return answer

    def download(self, area: str, path: str, sink: BinaryIO, *, offset: int = 0,
                 progress: Progress | None = None) -> int:
        """Stream `area`/`path` into `sink` from byte `offset`; returns the bytes written."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = self._check(self._send("GET", _fs_url(area, check_remote_path(path)),
                                          headers=headers))
        if offset and response.status != http.client.PARTIAL_CONTENT:
            response.read()
            raise EnclaveError(f"the runtime ignored the range request for {area}/{path}; "
                               "pull the whole file again without resuming")
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        total = 0
        try:
            while True:
                n = response.readinto(buffer)
                if not n:
                    break
                sink.write(view[:n])
                total += n
                if progress is not None:
                    progress(total)
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, OSError) and exc.errno is not None and not isinstance(
                    exc, ConnectionError | TimeoutError):
                self.close()
                raise  # a local write failure (disk full...) keeps its own errno
            raise self._transport_error(exc) from exc
        expected = response.length  # None once fully read; a short body leaves it > 0
        if response.length:
            raise EnclaveError(f"download of {area}/{path} ended early ({expected} bytes missing); "
                               "retry the pull")
        return total

    def read_range(self, area: str, path: str, offset: int, size: int) -> bytes:
        """Return up to `size` bytes of `area`/`path` from `offset` (short at end of file)."""
        if size <= 0:
            return b""
        headers = {"Range": f"bytes={offset}-{offset + size - 1}"}
        response = self._send("GET", _fs_url(area, check_remote_path(path)), headers=headers)
        if response.status == http.client.REQUESTED_RANGE_NOT_SATISFIABLE:
            response.read()
            return b""  # reading at or past end of file
        self._check(response)
        try:
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise self._transport_error(exc) from exc
        if response.status == http.client.OK:  # the server sent the whole file
            data = data[offset:offset + size]
        return data

    # -- runs, attestation, logs --------------------------------------------------------

    def start_run(self, *, bundle: str, entrypoint: str, args: builtins.list[str],
                  credentials: dict[str, str] | None) -> dict[str, Any]:
        # No key, region or app id: what the enclave may unseal is its image's choice alone.
        payload: dict[str, Any] = {
            "bundle": check_remote_path(bundle),
            "entrypoint": entrypoint,
            "args": list(args),
            "credentials": credentials,
        }
        return self._json("POST", "/v1/runs", payload)

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/runs/{quote(run_id, safe='')}")

    def list_runs(self) -> builtins.list[dict[str, Any]]:
        result = self._json_value("GET", "/v1/runs")
        if isinstance(result, dict):
            return list(result.get("runs", []))
        return list(result)

    def cancel_run(self, run_id: str) -> dict[str, Any]:
        return self._json("DELETE", f"/v1/runs/{quote(run_id, safe='')}")

    # -- services ----------------------------------------------------------------------

    def start_service(self, *, bundle: str, entrypoint: str,
                      credentials: dict[str, str] | None) -> dict[str, Any]:
        payload = {"bundle": check_remote_path(bundle), "entrypoint": entrypoint,
                   "credentials": credentials}
        return self._json("POST", "/v1/services", payload)

    def get_service(self, service_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/services/{quote(service_id, safe='')}")

    def list_services(self) -> builtins.list[dict[str, Any]]:
        return list(self._json("GET", "/v1/services").get("services", []))

    def stop_service(self, service_id: str) -> dict[str, Any]:
        return self._json("DELETE", f"/v1/services/{quote(service_id, safe='')}")

    def service_request(self, service_id: str, method: str, target: str, body: bytes = b"",
                        headers: dict[str, str] | None = None) -> ServiceAnswer:
        """One request to a service, `target` being its path and query (`/predict?x=1`).

        The service's own answer comes back whatever its status; an error the runtime itself
        gave (limits, timeout, a crashed service) raises like any other API error.
        """
        if not target.startswith("/"):
            raise UsageError(f"the service path {target!r} must start with '/'")
        url = f"/v1/services/{quote(service_id, safe='')}/http{target}"
        sent = dict(headers or {})
        if body or method in ("POST", "PUT"):
            sent["Content-Length"] = str(len(body))
        response = self._send(method, url, body=body or None, headers=sent)
        if response.status >= 400 and response.getheader(RUNTIME_ERROR_HEADER):
            self._check(response)
        try:
            data = response.read(MAX_JSON_RESPONSE + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise self._transport_error(exc) from exc
        return ServiceAnswer(response.status,
                             response.getheader("Content-Type") or "application/octet-stream",
                             data)

    def attestation(self, nonce: bytes, user_data: bytes | None = None) -> bytes:
        payload = {"nonce": nonce.hex()}
        if user_data is not None:
            payload["user_data"] = user_data.hex()
        result = self._json("POST", "/v1/attestation", payload)
        try:
            return base64.b64decode(result["document"], validate=True)
        except (KeyError, TypeError, ValueError) as exc:
            raise EnclaveError(
                "the runtime's attestation answer has no valid base64 `document`; "
                "check that --socket/--cid points at this project's runtime") from exc

    def receipt(self, run_id: str, nonce: bytes) -> dict[str, Any]:
        return self._json("POST", f"/v1/runs/{quote(run_id, safe='')}/receipt",
                          {"nonce": nonce.hex()})

    def logs(self, since: int = 0) -> dict[str, Any]:
        return self._json("GET", "/v1/logs?" + urlencode({"since": since}))


