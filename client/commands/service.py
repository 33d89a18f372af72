"""`service start|list|status|stop|call|forward`: a sealed bundle's long-lived server.

A service entrypoint is unsealed once and answers many requests (online inference without an
unseal per request). The runtime applies the manifest's limits to every request; this side only
names the bundle and entrypoint, sends requests, and with `forward` offers a local HTTP listener
(127.0.0.1 by default) so that existing HTTP clients work unchanged.
"""

from __future__ import annotations

import argparse
import base64
import http.server
import json
import socketserver
import sys
import threading
import time
from pathlib import Path
from typing import Any

from client.api import RuntimeClient, ServiceAnswer, check_remote_path
from client.cli import global_options
from client.commands.run import run_credentials
from client.errors import ClientError, EnclaveError, TimeoutExpired, UsageError
from client.output import emit, terminal_safe
from client.target import resolve_target
from enclave.paths import split_area

ENDED_STATES = ("stopped", "crashed", "failed")
POLL_SECONDS = 0.1
# Request headers the forwarder passes on; the runtime passes on the same two to the service.
FORWARDED_HEADERS = ("Content-Type", "Accept")
MAX_FORWARD_BODY = 16 * 1024 * 1024  # the largest body any manifest may allow
OUTPUT_AS_JSON = object()  # `service call ID --json` with no body: the global output flag


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "service", parents=parents, help="start, call and stop a bundle's long-lived service",
        description="A service entrypoint is unsealed once and answers many HTTP requests, each "
                    "within the limits of the bundle's manifest.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    start = actions.add_parser("start", parents=parents, help="start a service; prints its id",
                               description="Start ENTRYPOINT (a service) of the sealed bundle "
                                           "FILE in the inbox and wait until it is ready.")
    start.add_argument("-f", "--file", required=True, metavar="FILE",
                       help="the sealed bundle, as a path in the inbox (e.g. app.sealed)")
    start.add_argument("-s", "--entrypoint", required=True, metavar="ENTRYPOINT",
                       help="a service entrypoint the bundle's manifest declares (e.g. serve)")
    start.add_argument("--wait-timeout", type=float, default=120.0, metavar="SECONDS",
                       help="stop waiting for readiness after this long (default 120; exit 7)")
    start.set_defaults(func=start_command)

    listing = actions.add_parser("list", parents=parents, help="list services")
    listing.set_defaults(func=list_command)

    status = actions.add_parser("status", parents=parents,
                                help="a service's state, restarts, requests served and errors")
    status.add_argument("id", metavar="ID")
    status.set_defaults(func=status_command)

    stop = actions.add_parser("stop", parents=parents,
                              help="stop a service: its processes killed, its plaintext wiped")
    stop.add_argument("id", metavar="ID")
    stop.set_defaults(func=stop_command)

    # `--json '{...}'` is the request body here; `--json` alone still asks for JSON output.
    # Fresh copies of the global options: "resolve" edits the actions it takes over.
    call = actions.add_parser("call", parents=[global_options()], conflict_handler="resolve",
                              help="send one request to a service",
                              description="Send one request and print the service's answer. "
                                          "Without --data or --json BODY it is a GET. For JSON "
                                          "output with a JSON body put --json before `service`.")
    call.add_argument("id", metavar="ID")
    call.add_argument("--path", default="/", help="the path on the service (default /)")
    call.add_argument("-X", "--method", choices=("GET", "POST", "PUT", "DELETE"),
                      help="the method (default POST with a body, else GET)")
    call.add_argument("--data", metavar="DATA|@FILE",
                      help="the request body as text, or @FILE for a file's bytes")
    call.add_argument("--json", dest="json_body", nargs="?", const=OUTPUT_AS_JSON,
                      metavar="'{...}'",
                      help="a JSON request body (checked here, sent as application/json); "
                           "without a value: machine-readable output")
    call.set_defaults(func=call_command)

    # `--port` is the local listener's here; the runtime's vsock port can still be given
    # before `service` (python -m client --port 5006 service forward ID --port 8080).
    forward = actions.add_parser("forward", parents=[global_options()],
                                 conflict_handler="resolve",
                                 help="a local HTTP listener forwarding to a service",
                                 description="Listen on 127.0.0.1:PORT and forward every request "
                                             "to the service, until interrupted.")
    forward.add_argument("id", metavar="ID")
    forward.add_argument("--port", dest="listen_port", type=int, required=True,
                         help="the local port to listen on (0 picks a free one)")
    forward.add_argument("--bind", default="127.0.0.1",
                         help="the local address (default 127.0.0.1: this host only)")
    forward.set_defaults(func=forward_command)


# -- start, list, status, stop ------------------------------------------------------------------

def start_command(args: argparse.Namespace) -> int:
    area, bundle = split_area(args.file, default="inbox")
    if area != "inbox":
        raise UsageError(f"the bundle must be in the inbox, not {area}/; push it first: "
                         f"python -m client push {bundle.rsplit('/', 1)[-1]}")
    bundle = check_remote_path(bundle)
    target = resolve_target(args)
    with target.client(timeout=args.timeout) as client:
        started = client.start_service(bundle=bundle, entrypoint=args.entrypoint,
                                       credentials=run_credentials(target))
        record = wait_until_ready(client, str(started["id"]), args.wait_timeout)
    emit(args, record, str(record["id"]))
    return 0


def wait_until_ready(client: RuntimeClient, service_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        record = client.get_service(service_id)
        state = record.get("state")
        if state == "ready":
            return record
        if state in ENDED_STATES:
            raise EnclaveError(f"service {service_id} {state}: "
                               f"{record.get('error') or 'no reason given'}")
        if time.monotonic() >= deadline:
            raise TimeoutExpired(f"service {service_id} still {state} after {timeout:g}s; it "
                                 f"goes on: check `python -m client service status {service_id}`")
        time.sleep(POLL_SECONDS)


def list_command(args: argparse.Namespace) -> int:
    with resolve_target(args).client(timeout=args.timeout) as client:
        services = client.list_services()
    lines = [f"{s['id']}  {s['state']:<10}  {s['bundle']} -s {s['entrypoint']}  "
             f"served {s['requests_served']}, errors {s['errors']}, restarts {s['restarts']}"
             for s in services]
    emit(args, {"services": services}, "\n".join(lines) if lines else "no services")
    return 0


def status_command(args: argparse.Namespace) -> int:
    with resolve_target(args).client(timeout=args.timeout) as client:
        record = client.get_service(args.id)
    emit(args, record, describe(record))
    return 0


def describe(record: dict[str, Any]) -> str:
    lines = [f"service {record['id']}: {record['state']}",
             f"  bundle {record['bundle']}, entrypoint {record['entrypoint']}"
             + (f", app {record['app_id']} {record['app_version']}" if record.get("app_id")
                else ""),
             f"  requests served {record['requests_served']}, errors {record['errors']}, "
             f"restarts {record['restarts']}"]
    if record.get("last_error"):
        lines.append(f"  last request error: {record['last_error']}")
    if record.get("error"):
        lines.append(f"  ended: {record['error']}")
    return "\n".join(lines)


def stop_command(args: argparse.Namespace) -> int:
    with resolve_target(args).client(timeout=args.timeout) as client:
        record = client.stop_service(args.id)
    emit(args, record, f"service {record['id']}: {record['state']}")
    return 0


# -- call -----------------------------------------------------------------------------------------

def request_body(args: argparse.Namespace) -> tuple[bytes, dict[str, str]]:
    if args.json_body is OUTPUT_AS_JSON:
        args.json, args.json_body = True, None
    if args.json_body is not None and args.data is not None:
        raise UsageError("give the body either with --data or with --json '{...}', not both")
    if args.json_body is not None:
        try:
            json.loads(args.json_body)
        except ValueError as exc:
            raise UsageError(f"--json is not valid JSON ({exc}); quote it for the shell, "
                             "e.g. --json '{\"x\": 1}'") from exc
        return args.json_body.encode(), {"Content-Type": "application/json"}
    if args.data is None:
        return b"", {}
    if args.data.startswith("@"):
        path = Path(args.data[1:])
        try:
            return path.read_bytes(), {"Content-Type": "application/octet-stream"}
        except OSError as exc:
            raise UsageError(f"--data {args.data}: cannot read {path} "
                             f"({exc.strerror or exc})") from exc
    return args.data.encode(), {"Content-Type": "text/plain; charset=utf-8"}


def call_command(args: argparse.Namespace) -> int:
    body, headers = request_body(args)
    method = args.method or ("POST" if args.data is not None or args.json_body is not None
                             else "GET")
    with resolve_target(args).client(timeout=args.timeout) as client:
        answer = client.service_request(args.id, method, args.path, body, headers)
    if args.json:
        emit(args, answer_json(answer))
    else:
        text = answer.body.decode("utf-8", "replace")
        sys.stdout.write(terminal_safe(text, sys.stdout))
        if text and not text.endswith("\n"):
            sys.stdout.write("\n")
        sys.stdout.flush()
    if answer.status >= 400:
        raise ServiceAnswered(f"the service answered HTTP {answer.status}")
    return 0


class ServiceAnswered(ClientError):
    """The service itself answered with an error status (its body is printed)."""

    status = EnclaveError.status


def answer_json(answer: ServiceAnswer) -> dict[str, Any]:
    record: dict[str, Any] = {"status": answer.status, "content_type": answer.content_type}
    try:
        record["body"] = answer.body.decode("utf-8")
    except UnicodeDecodeError:
        record["body_base64"] = base64.b64encode(answer.body).decode("ascii")
    return record


# -- forward --------------------------------------------------------------------------------------

class ForwardServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], client: RuntimeClient, service_id: str) -> None:
        self.client = client
        self.service_id = service_id
        super().__init__(address, _ForwardHandler)


class _ForwardHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body go out in two writes: with Nagle the body would wait for the client's
    # delayed ACK of the head (40 ms on Linux) on every keep-alive request.
    disable_nagle_algorithm = True
    server: ForwardServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        self._forward()

    def do_PUT(self) -> None:
        self._forward()

    def do_DELETE(self) -> None:
        self._forward()

    def _forward(self) -> None:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._answer(411, "application/json",
                         _error("length_required", "send a Content-Length, not chunks"))
            return
        length_text = self.headers.get("Content-Length", "0")
        if not length_text.isdigit() or int(length_text) > MAX_FORWARD_BODY:
            self.close_connection = True
            self._answer(413, "application/json",
                         _error("request_too_large", f"bodies above {MAX_FORWARD_BODY} bytes "
                                                     "are refused"))
            return
        body = self.rfile.read(int(length_text))
        headers = {name: value for name in FORWARDED_HEADERS
                   if (value := self.headers.get(name)) is not None}
        try:
            answer = self.server.client.service_request(self.server.service_id, self.command,
                                                        self.path, body, headers)
        except ClientError as exc:
            status = getattr(exc, "http_status", 502)
            code = getattr(exc, "code", "forward_failed")
            self._answer(status, "application/json", _error(code, str(exc)))
            return
        self._answer(answer.status, answer.content_type, answer.body)

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


def _error(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def make_forwarder(client: RuntimeClient, service_id: str, host: str = "127.0.0.1",
                   port: int = 0) -> ForwardServer:
    """The local listener of `service forward`; `serve_forever()` / `shutdown()` as usual."""
    return ForwardServer((host, port), client, service_id)


def forward_command(args: argparse.Namespace) -> int:
    target = resolve_target(args)
    client = target.client(timeout=args.timeout)
    record = client.get_service(args.id)  # fails early, clearly, for an unknown id
    if record.get("state") != "ready":
        raise EnclaveError(f"service {args.id} is {record.get('state')}, not ready; "
                           f"see `python -m client service status {args.id}`")
    try:
        server = make_forwarder(client, args.id, args.bind, args.listen_port)
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.bind}:{args.listen_port} "
                         f"({exc.strerror or exc}); pick another --port") from exc
    url = f"http://{args.bind}:{server.server_port}"
    if args.bind not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.bind}: other machines can call the service",
              file=sys.stderr)
    emit(args, {"url": url, "service": args.id},
         f"forwarding {url} -> service {args.id} (Ctrl-C to stop)", stream=sys.stderr
         if not args.json else None)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(0.5)
    finally:
        server.shutdown()
        server.server_close()
        client.close()
    return 0
