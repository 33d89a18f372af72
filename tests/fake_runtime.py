"""A small stand-in for the enclave runtime's HTTP API, for client tests.

It follows docs/ARCHITECTURE.md "Runtime HTTP API" closely enough for the client's plumbing
(streaming, ranges, error mapping) to be exercised over a real Unix socket; it confines
nothing and runs nothing, so it is never a model for the real server.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit


class FakeRuntime:
    def __init__(self, root: Path, socket_path: Path) -> None:
        self.root = root
        (root / "inbox").mkdir(parents=True, exist_ok=True)
        (root / "outbox").mkdir(parents=True, exist_ok=True)
        self.socket_path = socket_path
        self.runs: dict[str, dict] = {}
        self.run_requests: list[dict] = []
        self.attestation_requests: list[dict] = []
        self.run_script: list[str] = ["succeeded"]  # states a run goes through, one per poll
        self.run_exit_code = 0
        self.document = b"\x84fake-document"
        self.requests: list[tuple[str, str]] = []
        runtime = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def address_string(self) -> str:
                return "unix"

            def do_GET(self) -> None:
                runtime.dispatch(self, "GET")

            def do_PUT(self) -> None:
                runtime.dispatch(self, "PUT")

            def do_POST(self) -> None:
                runtime.dispatch(self, "POST")

            def do_DELETE(self) -> None:
                runtime.dispatch(self, "DELETE")

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.server = Server(str(socket_path), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)

    def __enter__(self) -> FakeRuntime:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- responses --------------------------------------------------------------------------

    @staticmethod
    def send_json(h: BaseHTTPRequestHandler, status: int, value: object) -> None:
        body = json.dumps(value).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def error(self, h: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        if h.command == "PUT" and length:
            h.close_connection = True  # refuse without reading the body
        self.send_json(h, status, {"error": {"code": code, "message": message}})

    def dispatch(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(h.path)
        self.requests.append((method, h.path))
        path = unquote(url.path)
        query = url.query
        if path == "/v1/health":
            return self.send_json(h, 200, {"status": "ok", "version": "fake"})
        if path.startswith("/v1/fs/"):
            return self.fs(h, method, path[len("/v1/fs/"):], query)
        if path == "/v1/runs" and method == "POST":
            return self.start_run(h)
        if path == "/v1/runs" and method == "GET":
            return self.send_json(h, 200, {"runs": list(self.runs.values())})
        if path.startswith("/v1/runs/") and method == "GET":
            return self.get_run(h, path.rsplit("/", 1)[1])
        if path.startswith("/v1/runs/") and method == "DELETE":
            run = self.runs.get(path.rsplit("/", 1)[1])
            if run is None:
                return self.error(h, 404, "no_such_run", "no such run")
            run["state"] = "cancelled"
            return self.send_json(h, 200, run)
        if path == "/v1/attestation" and method == "POST":
            request = self.read_json(h)
            self.attestation_requests.append(request)
            return self.send_json(h, 200, {"document": base64.b64encode(self.document).decode()})
        if path == "/v1/logs":
            since = int(parse_qs(query).get("since", ["0"])[0])
            lines = ["runtime started", "run r1 succeeded"][since:]
            return self.send_json(h, 200, {"lines": lines, "next": since + len(lines)})
        return self.error(h, 404, "not_found", f"no route {method} {path}")

    def read_json(self, h: BaseHTTPRequestHandler) -> dict:
        length = int(h.headers.get("Content-Length") or 0)
        return json.loads(h.rfile.read(length) or b"{}")

    def fs(self, h: BaseHTTPRequestHandler, method: str, rest: str, query: str) -> None:
        area, _, rel = rest.partition("/")
        if area not in ("inbox", "outbox"):
            return self.error(h, 400, "bad_area", f"unknown area {area!r}")
        if ".." in rel.split("/") or "\x00" in rel:
            return self.error(h, 400, "bad_path", "path escapes the exchange area")
        target = self.root / area / rel
        if method == "GET" and query == "stat":
            if not target.exists():
                return self.error(h, 404, "not_found", f"{area}/{rel} does not exist")
            st = target.stat()
            kind = "dir" if target.is_dir() else "file"
            return self.send_json(h, 200, {"path": rel, "type": kind, "mtime": st.st_mtime,
                                           "size": st.st_size if kind == "file" else 0})
        if method == "GET" and query == "list":
            if not target.is_dir():
                return self.error(h, 404, "not_found", f"{area}/{rel} is not a directory")
            entries = [{"name": p.name, "type": "dir" if p.is_dir() else "file",
                        "size": p.stat().st_size if p.is_file() else 0, "mtime": p.stat().st_mtime}
                       for p in sorted(target.iterdir()) if not p.name.startswith(".")]
            return self.send_json(h, 200, {"entries": entries})
        if method == "GET":
            return self.get_file(h, target, area, rel)
        if method == "PUT":
            if area != "inbox":
                return self.error(h, 403, "read_only", "the outbox is read-only for the host")
            if "Content-Length" not in h.headers:
                return self.error(h, 411, "length_required", "Content-Length required")
            if target.is_dir():
                return self.error(h, 409, "is_a_directory", f"{rel} is a directory")
            if not target.parent.is_dir():
                return self.error(h, 404, "not_found", f"parent of {rel} does not exist")
            length = int(h.headers["Content-Length"])
            tmp = target.with_name(f".{target.name}.upload")
            digest = hashlib.sha256()
            with tmp.open("wb") as f:
                left = length
                while left:
                    chunk = h.rfile.read(min(1 << 20, left))
                    if not chunk:
                        tmp.unlink()
                        return
                    digest.update(chunk)
                    f.write(chunk)
                    left -= len(chunk)
            os.replace(tmp, target)
            return self.send_json(h, 201, {"path": rel, "size": length,
                                           "sha256": digest.hexdigest()})
        if method == "POST" and query == "mkdir":
            if area != "inbox":
                return self.error(h, 403, "read_only", "the outbox is read-only for the host")
            if target.exists():
                return self.error(h, 409, "exists", f"{rel} already exists")
            if not target.parent.is_dir():
                return self.error(h, 404, "not_found", f"parent of {rel} does not exist")
            target.mkdir()
            return self.send_json(h, 201, {"path": rel})
        if method == "DELETE":
            if area != "inbox":
                return self.error(h, 403, "read_only", "the outbox is read-only for the host")
            if not target.exists():
                return self.error(h, 404, "not_found", f"{rel} does not exist")
            if target.is_dir():
                if any(target.iterdir()):
                    return self.error(h, 409, "not_empty", f"{rel} is not empty")
                target.rmdir()
            else:
                target.unlink()
            return self.send_json(h, 200, {"path": rel})
        return self.error(h, 405, "method_not_allowed", "no such operation")

    def get_file(self, h: BaseHTTPRequestHandler, target: Path, area: str, rel: str) -> None:
        if not target.is_file():
            return self.error(h, 404, "not_found", f"{area}/{rel} does not exist")
        size = target.stat().st_size
        start, end = 0, size - 1
        status = 200
        wanted = h.headers.get("Range")
        if wanted:
            a, _, b = wanted.removeprefix("bytes=").partition("-")
            start = int(a)
            end = min(int(b), size - 1) if b else size - 1
            if start >= size:
                return self.error(h, 416, "range_not_satisfiable", "range beyond end")
            status = 206
        h.send_response(status)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(end - start + 1))
        if status == 206:
            h.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        h.end_headers()
        with target.open("rb") as f:
            f.seek(start)
            left = end - start + 1
            while left:
                chunk = f.read(min(1 << 20, left))
                h.wfile.write(chunk)
                left -= len(chunk)

    def start_run(self, h: BaseHTTPRequestHandler) -> None:
        request = self.read_json(h)
        self.run_requests.append(request)
        if not (self.root / "inbox" / request.get("bundle", "")).is_file():
            return self.error(h, 404, "no_such_bundle", f"no bundle {request.get('bundle')}")
        run_id = f"r{len(self.runs) + 1}"
        self.runs[run_id] = {"id": run_id, "bundle": request["bundle"],
                             "entrypoint": request["entrypoint"], "state": "unsealing",
                             "exit_code": None, "stdout": None, "stderr": None, "error": None,
                             "started_at": time.time(), "ended_at": None, "output_digests": {},
                             "_script": list(self.run_script)}
        return self.send_json(h, 202, {"id": run_id, "state": "unsealing"})

    def get_run(self, h: BaseHTTPRequestHandler, run_id: str) -> None:
        run = self.runs.get(run_id)
        if run is None:
            return self.error(h, 404, "no_such_run", f"no run {run_id}")
        if run["_script"]:
            run["state"] = run["_script"].pop(0)
        if run["state"] in ("succeeded", "failed"):
            run["exit_code"] = self.run_exit_code
            if run["state"] == "failed":
                run["error"] = f"the application exited with status {self.run_exit_code}"
            run["stdout"] = "prediction: 0.93\n"
            run["ended_at"] = time.time()
        return self.send_json(h, 200, {k: v for k, v in run.items() if not k.startswith("_")})
