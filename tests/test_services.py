"""Services through the real API: unsealed once, isolated like runs, limits enforced, wiped.

The service app below is a standard-library HTTP server on SEALED_SERVICE_SOCKET with paths that
misbehave on purpose (hang, crash mid-request, answer too much, probe other apps' files).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from runtime_harness import Runtime, start_runtime, stop_runtime

from enclave.isolation import processes_of
from enclave.manifest import ManifestError, parse_manifest
from enclave.sealing import seal_directory

SERVICE_APP = '''\
import http.server, json, os, socket, socketserver, sys, time

if sys.argv[1] == "exit-at-once":
    sys.exit(4)
if sys.argv[1] == "wait":  # a run that sits in its private directory
    open(os.path.join(os.environ["HOME"], "marker"), "w").write("run data")
    time.sleep(60)
    sys.exit(0)


def probe(target):
    try:
        if target.endswith(".sock"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(target)
            s.close()
            return "connected"
        if os.path.isdir(target):
            return sorted(os.listdir(target))
        return open(target, "rb").read(64).decode("latin-1")
    except OSError as exc:
        return "denied: " + type(exc).__name__


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.answer()

    def do_POST(self):
        self.answer()

    def answer(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/hang":
            time.sleep(60)
        if self.path == "/crash":
            os._exit(7)
        if self.path == "/big":
            out = b"x" * 100000
        elif self.path == "/whoami":
            out = json.dumps({"uid": os.getuid(), "cwd": os.getcwd(),
                              "socket": os.environ["SEALED_SERVICE_SOCKET"],
                              "pid": os.getpid()}).encode()
        elif self.path == "/escape":
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    time.sleep(60)
                os._exit(0)
            out = b"forked"
        elif self.path == "/redirect":  # swap its own socket for a link to another one
            mine = os.environ["SEALED_SERVICE_SOCKET"]
            os.rename(mine, mine + ".old")
            os.symlink(body.decode(), mine)
            out = b"redirected"
        elif self.path == "/peek":
            out = json.dumps({t: probe(t) for t in json.loads(body)}).encode()
        else:
            out = b"echo " + self.path.encode() + b" " + body
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


Server(os.environ["SEALED_SERVICE_SOCKET"], Handler).serve_forever()
'''

SERVICE_LIMITS = {"max_concurrent_requests": 2, "max_request_bytes": 1024,
                  "max_response_bytes": 4096, "request_timeout_seconds": 1,
                  "ready_timeout_seconds": 10}

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root: services get their own users")


def service_manifest(**service: Any) -> dict:
    return {
        "format": 1,
        "app_id": "test-app",
        "app_version": "1.0.0",
        "entrypoints": {
            "serve": {"kind": "service", "command": ["python3", "svc.py", "serve"],
                      "service": {**SERVICE_LIMITS, **service}},
            "dies": {"kind": "service", "command": ["python3", "svc.py", "exit-at-once"],
                     "service": {**SERVICE_LIMITS, **service}},
            "wait": {"command": ["python3", "svc.py", "wait"]},
        },
        "time_limit_seconds": 30,
    }


def seal_service(rt: Runtime, tmp_path: Path, name: str = "svc.sealed", *,
                 app_id: str = "test-app", **service: Any) -> str:
    source = tmp_path / f"src-{name}"
    source.mkdir()
    (source / "manifest.json").write_text(json.dumps({**service_manifest(**service),
                                                      "app_id": app_id}))
    (source / "svc.py").write_text(SERVICE_APP)
    with open(rt.inbox / name, "wb") as out:
        seal_directory(source, out, key_provider=rt.key_provider)
    return name


CREDENTIALS = {"access_key_id": "AKIDEXAMPLE",
               "secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}


def start_service(rt: Runtime, bundle: str = "svc.sealed", entrypoint: str = "serve") -> dict:
    status, body, _ = rt.request("POST", "/v1/services", {
        "bundle": bundle, "entrypoint": entrypoint, "credentials": CREDENTIALS})
    assert status == 202, body
    return wait_state(rt, body["id"], lambda s: s != "starting")


def wait_state(rt: Runtime, service_id: str, accept: Any, timeout: float = 20.0) -> dict:
    return wait_view(rt, service_id, lambda view: accept(view["state"]), timeout)


def wait_view(rt: Runtime, service_id: str, accept: Any, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, view, _ = rt.request("GET", f"/v1/services/{service_id}")
        assert status == 200, view
        if accept(view):
            return view
        time.sleep(0.05)
    raise AssertionError(f"service {service_id} stayed {view['state']}")


def call(rt: Runtime, service_id: str, path: str, body: bytes = b"", method: str = "POST",
         timeout: float = 10.0) -> tuple[int, Any]:
    conn = rt.connection(timeout=timeout)
    try:
        conn.request(method, f"/v1/services/{service_id}/http{path}", body=body,
                     headers={"Content-Type": "text/plain"})
        response = conn.getresponse()
        raw = response.read()
        if response.getheader("Content-Type") == "application/json":
            return response.status, json.loads(raw)
        return response.status, raw
    finally:
        conn.close()


def stop(rt: Runtime, service_id: str) -> dict:
    status, view, _ = rt.request("DELETE", f"/v1/services/{service_id}")
    assert status == 200, view
    return view


def service_dirs(rt: Runtime) -> list[Path]:
    return sorted(rt.config.private_root.glob("svc-*"))


@pytest.fixture
def rt(tmp_path: Path):
    # User ids of this process's own: a root test run elsewhere on the machine (whose pool
    # starts at the default base) kills every process of the ids it hands out.
    runtime = start_runtime(tmp_path, app_uid_base=200_000 + (os.getpid() % 100_000) * 8)
    yield runtime
    runtime.server.services.shutdown(timeout=15)
    runtime.server.runner.shutdown(timeout=15)
    stop_runtime(runtime)


# -- what a service does -----------------------------------------------------------------------

def test_service_answers_many_requests_from_one_unseal(rt: Runtime, tmp_path: Path) -> None:
    seal_service(rt, tmp_path)
    view = start_service(rt)
    assert view["state"] == "ready", (view["error"], view)
    for i in range(5):
        assert call(rt, view["id"], f"/predict?n={i}", b"hi") == (200, f"echo /predict?n={i} hi"
                                                                  .encode())
    described = wait_state(rt, view["id"], lambda s: True)
    assert described["requests_served"] == 5 and described["errors"] == 0
    assert len(rt.key_provider.decrypts) == 1  # one unseal for the service's whole lifetime
    status, listed, _ = rt.request("GET", "/v1/services")
    assert [s["id"] for s in listed["services"]] == [view["id"]]


def test_stop_wipes_the_plaintext(rt: Runtime, tmp_path: Path) -> None:
    seal_service(rt, tmp_path)
    view = start_service(rt)
    assert [d for d in service_dirs(rt) if (d / "app" / "svc.py").exists()]
    stopped = stop(rt, view["id"])
    assert stopped["state"] == "stopped"
    assert service_dirs(rt) == []
    assert call(rt, view["id"], "/predict")[0] == 503


def test_run_cannot_start_a_service_entrypoint_nor_a_service_a_run(rt: Runtime,
                                                                  tmp_path: Path) -> None:
    seal_service(rt, tmp_path)
    status, body, _ = rt.request("POST", "/v1/runs", {
        "bundle": "svc.sealed", "entrypoint": "serve", "args": [], "credentials": CREDENTIALS})
    assert status == 202
    run = rt.wait_run(body["id"])
    assert run["state"] == "failed" and "service start" in run["error"]
    view = start_service(rt, entrypoint="wait")
    assert view["state"] == "failed" and "is not a service" in view["error"]
    assert service_dirs(rt) == []


def test_service_bundle_is_checked_by_the_image_policy_before_any_key_request(
        rt: Runtime, tmp_path: Path) -> None:
    seal_service(rt, tmp_path, "other.sealed", app_id="other-app")
    rt.key_provider.decrypts.clear()
    view = start_service(rt, bundle="other.sealed")
    assert view["state"] == "failed" and "'other-app'" in view["error"]
    assert rt.key_provider.decrypts == []
    assert service_dirs(rt) == []


# -- limits -------------------------------------------------------------------------------------

def test_oversized_request_is_refused_and_the_service_keeps_serving(rt: Runtime,
                                                                    tmp_path: Path) -> None:
    seal_service(rt, tmp_path)
    view = start_service(rt)
    status, error = call(rt, view["id"], "/echo", b"x" * 1025)
    assert status == 413 and error["error"]["code"] == "request_too_large"
    assert "allows 1024" in error["error"]["message"]
    assert call(rt, view["id"], "/echo", b"x" * 1024)[0] == 200
    assert wait_state(rt, view["id"], lambda s: True)["errors"] == 1


def test_oversized_response_is_withheld(rt: Runtime, tmp_path: Path) -> None:
    seal_service(rt, tmp_path)
    view = start_service(rt)
    status, error = call(rt, view["id"], "/big")
    assert status == 502 and error["error"]["code"] == "response_too_large"
    assert call(rt, view["id"], "/echo")[0] == 200


def test_hanging_request_gets_504_and_other_requests_are_answered(rt: Runtime,
                                                                 tmp_path: Path) -> None:
    seal_service(rt, tmp_path)
    view = start_service(rt)
    results: list = []
    hung = threading.Thread(target=lambda: results.append(call(rt, view["id"], "/hang")))
    started = time.monotonic()
    hung.start()
    time.sleep(0.2)
    assert call(rt, view["id"], "/echo", b"meanwhile") == (200, b"echo /echo meanwhile")
    hung.join(10)
    status, error = results[0]
    assert status == 504 and error["error"]["code"] == "service_timeout"
    assert time.monotonic() - started < 3  # the manifest's 1 s, not the app's 60 s
    assert call(rt, view["id"], "/echo")[0] == 200
    assert wait_state(rt, view["id"], lambda s: True)["state"] == "ready"


def test_requests_beyond_the_concurrency_limit_are_refused(rt: Runtime, tmp_path: Path) -> None:
    seal_service(rt, tmp_path, max_concurrent_requests=1, request_timeout_seconds=3)
    view = start_service(rt)
    hung = threading.Thread(target=lambda: call(rt, view["id"], "/hang"))
    hung.start()
    time.sleep(0.3)
    status, error = call(rt, view["id"], "/echo")
    assert status == 429 and error["error"]["code"] == "busy"
    hung.join(10)
    assert call(rt, view["id"], "/echo")[0] == 200


def test_crash_mid_request_fails_that_request_only_and_leaves_nothing(rt: Runtime,
                                                                      tmp_path: Path) -> None:
    seal_service(rt, tmp_path, request_timeout_seconds=5)
    view = start_service(rt)
    slow: list = []
    waiting = threading.Thread(target=lambda: slow.append(call(rt, view["id"], "/hang")))
    waiting.start()
    time.sleep(0.2)
    status, error = call(rt, view["id"], "/crash")
    assert status == 502 and error["error"]["code"] == "service_failed"
    waiting.join(10)
    assert slow[0][0] == 502  # the other request in flight died with the process, clearly
    crashed = wait_state(rt, view["id"], lambda s: s in ("crashed", "failed", "stopped"))
    assert crashed["state"] == "crashed" and "status 7" in crashed["error"]
    assert service_dirs(rt) == []
    assert rt.server.runner.users is None or all(
        not processes_of(uid) for uid in range(rt.config.app_uid_base,
                                               rt.config.app_uid_base + 4))


def test_crashed_service_restarts_per_its_policy(rt: Runtime, tmp_path: Path) -> None:
    seal_service(rt, tmp_path, restart="on-failure", max_restarts=1)
    view = start_service(rt)
    assert call(rt, view["id"], "/crash")[0] == 502
    wait_view(rt, view["id"], lambda v: v["restarts"] == 1 and v["state"] == "ready")
    assert call(rt, view["id"], "/echo", b"back")[1] == b"echo /echo back"
    assert call(rt, view["id"], "/crash")[0] == 502
    final = wait_state(rt, view["id"], lambda s: s == "crashed")
    assert final["restarts"] == 1
    assert service_dirs(rt) == []
    assert len(rt.key_provider.decrypts) == 1  # the restart reused the unsealed files


def test_service_that_never_comes_up_is_crashed_and_wiped(rt: Runtime, tmp_path: Path) -> None:
    seal_service(rt, tmp_path, restart="on-failure", max_restarts=2)
    view = start_service(rt, entrypoint="dies")
    final = wait_state(rt, view["id"], lambda s: s in ("crashed", "failed"))
    assert final["state"] == "crashed" and final["restarts"] == 2
    assert "status 4 before it was ready" in final["error"]
    assert service_dirs(rt) == []


# -- isolation (needs root) -----------------------------------------------------------------------

def whoami(rt: Runtime, service_id: str) -> dict:
    status, raw = call(rt, service_id, "/whoami", method="GET")
    assert status == 200, raw
    return json.loads(raw)


@needs_root
def test_service_runs_as_its_own_user_in_a_private_directory(rt: Runtime, tmp_path: Path) -> None:
    seal_service(rt, tmp_path)
    view = start_service(rt)
    me = whoami(rt, view["id"])
    base = rt.config.app_uid_base
    assert base <= me["uid"] < base + rt.config.max_active_runs
    private = Path(me["socket"]).parent
    assert private.parent == rt.config.private_root and Path(me["cwd"]) == private / "app"
    st = private.stat()
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == me["uid"]


@needs_root
def test_service_cannot_reach_another_services_socket_or_files(rt: Runtime,
                                                               tmp_path: Path) -> None:
    seal_service(rt, tmp_path)
    victim = start_service(rt)
    attacker = start_service(rt)
    target = whoami(rt, victim["id"])
    assert whoami(rt, attacker["id"])["uid"] != target["uid"]
    victim_dir = Path(target["socket"]).parent
    probes = [target["socket"], str(victim_dir), str(victim_dir / "app" / "svc.py"),
              str(rt.config.private_root)]
    status, raw = call(rt, attacker["id"], "/peek", json.dumps(probes).encode())
    assert status == 200
    report = json.loads(raw)
    assert report == {p: "denied: PermissionError" for p in probes}
    assert call(rt, victim["id"], "/echo")[0] == 200


def test_service_cannot_redirect_the_runtime_to_another_socket(rt: Runtime,
                                                              tmp_path: Path) -> None:
    seal_service(rt, tmp_path)
    victim = start_service(rt)
    attacker = start_service(rt)
    target = whoami(rt, victim["id"])["socket"]
    assert call(rt, attacker["id"], "/redirect", target.encode())[1] == b"redirected"
    status, error = call(rt, attacker["id"], "/whoami", method="GET")
    assert status == 502 and error["error"]["code"] == "service_failed"  # not the victim's answer
    assert wait_state(rt, victim["id"], lambda s: True)["requests_served"] == 1  # whoami only


@needs_root
def test_service_cannot_reach_a_runs_directory(rt: Runtime, tmp_path: Path) -> None:
    seal_service(rt, tmp_path)
    service = start_service(rt)
    status, body, _ = rt.request("POST", "/v1/runs", {
        "bundle": "svc.sealed", "entrypoint": "wait", "args": [], "credentials": CREDENTIALS})
    assert status == 202
    deadline = time.monotonic() + 10
    while not list(rt.config.private_root.glob("run-*/home/marker")):
        assert time.monotonic() < deadline, "the run did not start"
        time.sleep(0.05)
    run_dir = next(rt.config.private_root.glob("run-*"))
    probes = [str(run_dir), str(run_dir / "home" / "marker"), str(run_dir / "app" / "svc.py")]
    status, raw = call(rt, service["id"], "/peek", json.dumps(probes).encode())
    assert json.loads(raw) == {p: "denied: PermissionError" for p in probes}
    rt.request("DELETE", f"/v1/runs/{body['id']}")
    rt.wait_run(body["id"])


@needs_root
def test_stop_kills_processes_that_detached_from_the_service(rt: Runtime,
                                                             tmp_path: Path) -> None:
    seal_service(rt, tmp_path)
    view = start_service(rt)
    uid = whoami(rt, view["id"])["uid"]
    assert call(rt, view["id"], "/escape")[1] == b"forked"
    time.sleep(0.2)
    assert len(processes_of(uid)) >= 2  # the server and the detached grandchild
    stop(rt, view["id"])
    assert processes_of(uid) == []
    assert service_dirs(rt) == []


@needs_root
def test_service_socket_is_not_reachable_by_other_users(rt: Runtime, tmp_path: Path) -> None:
    seal_service(rt, tmp_path)
    view = start_service(rt)
    socket_path = whoami(rt, view["id"])["socket"]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child: an unrelated unprivileged user
        code = 1
        try:
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(socket_path)
            except PermissionError:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# -- the manifest ---------------------------------------------------------------------------------

def test_manifest_service_entrypoint_is_validated() -> None:
    manifest = parse_manifest(json.dumps(service_manifest()).encode())
    spec = manifest.entrypoint("serve").service
    assert manifest.entrypoint("serve").kind == "service" and spec is not None
    assert spec.max_request_bytes == 1024 and spec.restart == "never"
    assert manifest.entrypoint("wait").kind == "run"


@pytest.mark.parametrize(("change", "message"), [
    ({"kind": "daemon"}, "kind must be one of run, service"),
    ({"args": [{"name": "x", "kind": "value"}]}, "a service takes no arguments"),
    ({"service": {"restart": "always"}}, "restart must be one of never, on-failure"),
    ({"service": {"max_restarts": 2}}, "max_restarts needs"),
    ({"service": {"max_request_bytes": -1}}, "max_request_bytes must be between"),
    ({"service": {"request_timeout_seconds": 0}}, "request_timeout_seconds must be between"),
    ({"service": {"port": 80}}, "unknown field(s) port"),
])
def test_bad_service_entrypoints_are_refused(change: dict, message: str) -> None:
    raw = service_manifest()
    raw["entrypoints"]["serve"].update(change)
    with pytest.raises(ManifestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_manifest(json.dumps(raw).encode())


def test_a_run_entrypoint_cannot_carry_a_service_spec() -> None:
    raw = service_manifest()
    raw["entrypoints"]["wait"]["service"] = {}
    with pytest.raises(ManifestError, match="only allowed with"):
        parse_manifest(json.dumps(raw).encode())


def test_plaintext_a_dead_runtime_left_in_a_service_directory_is_wiped_at_start(
        tmp_path: Path) -> None:
    from runtime_harness import traversable_dir

    base = traversable_dir(tmp_path)
    leftover = base / "sealed" / "svc-deadbeef" / "app"
    leftover.mkdir(parents=True)
    (leftover / "model.bin").write_bytes(b"weights")
    runtime = start_runtime(tmp_path, exchange_root=base / "exchange",
                            private_root=base / "sealed")
    try:
        assert os.listdir(runtime.config.private_root) == []
    finally:
        stop_runtime(runtime)


def test_credentials_are_never_shown_or_logged(rt: Runtime, tmp_path: Path) -> None:
    seal_service(rt, tmp_path)
    view = start_service(rt)
    _, listed, _ = rt.request("GET", "/v1/services")
    _, logs, _ = rt.request("GET", "/v1/logs")
    shown = json.dumps([view, listed, logs])
    assert CREDENTIALS["secret_access_key"] not in shown
    assert CREDENTIALS["access_key_id"] not in shown


@needs_root
def test_service_cannot_open_the_nsm_device(rt: Runtime, tmp_path: Path) -> None:
    from enclave.isolation import restrict_device

    # A socket standing for /dev/nsm (the simulation's NSM is one), restricted as at start-up.
    nsm_path = str(rt.config.private_root.parent / "nsm.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(nsm_path)
    listener.listen(1)
    os.chmod(nsm_path, 0o777)
    restrict_device(nsm_path)
    try:
        seal_service(rt, tmp_path)
        view = start_service(rt)
        status, raw = call(rt, view["id"], "/peek", json.dumps([nsm_path]).encode())
        assert json.loads(raw) == {nsm_path: "denied: PermissionError"}
    finally:
        listener.close()
