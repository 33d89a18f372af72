"""The local KMS over HTTP: the KMS JSON 1.1 protocol (`X-Amz-Target: TrentService.<Op>`)."""

from __future__ import annotations

import http.server
import json
import re
import uuid
from pathlib import Path
from typing import Any

from client.sim.kms.fault import KmsFault
from client.sim.kms.service import LocalKms
from client.sim.kms.state import DEFAULT_REGION

MAX_BODY_BYTES = 1024 * 1024
CREDENTIAL_RE = re.compile(r"Credential=([A-Z0-9]+)/\d{8}/([a-z0-9-]+)/kms/aws4_request")


class _Handler(http.server.BaseHTTPRequestHandler):
    server: KmsHttpServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        operation, outcome = "?", "ok"
        try:
            target = self.headers.get("X-Amz-Target", "")
            operation = target.split(".", 1)[-1] or "?"
            if not target.startswith("TrentService."):
                raise KmsFault("UnknownOperationException",
                               f"X-Amz-Target {target!r} is not TrentService.<Operation>")
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 <= length <= MAX_BODY_BYTES:
                raise KmsFault("ValidationException", "request body too large")
            raw = self.rfile.read(length)
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise KmsFault("SerializationException", "the request body is not a JSON object")
            match = CREDENTIAL_RE.search(self.headers.get("Authorization", ""))
            access_key = match.group(1) if match else None
            region = match.group(2) if match else DEFAULT_REGION
            response = self.server.kms.call(target.split(".", 1)[1], body, access_key, region)
            self._reply(200, response)
        except KmsFault as fault:
            outcome = fault.kind
            self._reply(fault.status, {"__type": fault.kind, "message": str(fault)})
        except (ValueError, json.JSONDecodeError) as exc:
            self._reply(400, {"__type": "SerializationException", "message": str(exc)})
        except Exception as exc:  # the server keeps serving; the caller learns it failed
            outcome = "KMSInternalException"
            self._reply(500, {"__type": "KMSInternalException",
                              "message": f"local KMS failure: {type(exc).__name__}: {exc}"})
        finally:
            # One audit line per request (operation and outcome, never keys or data), as
            # CloudTrail would record it: the simulation's log shows what reached KMS.
            print(f"request {operation} {outcome}", flush=True)

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        # silent: request lines carry nothing useful and headers carry credentials
        return


class KmsHttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], kms: LocalKms) -> None:
        self.kms = kms
        super().__init__(address, _Handler)


def make_kms_server(host: str, port: int, *, state_dir: Path) -> KmsHttpServer:
    """A ready-to-serve local KMS bound to (host, port); port 0 picks a free one
    (`server.server_address[1]`). Call `serve_forever()`; stop with `shutdown()`."""
    return KmsHttpServer((host, port), LocalKms(Path(state_dir)))
