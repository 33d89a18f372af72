"""Online inference three ways, side by side: a service, the same server direct, a run each.

    .venv/bin/python bench/service_bench.py                    # 2000 requests, 20 runs
    .venv/bin/python bench/service_bench.py --requests 500 --runs 5    # a quick run

The sealed sample app (src/sample-inference) answers `POST /predict` for one patient:

- direct (the floor): its `serve.py` started by hand on a local Unix socket, from a plaintext
  copy, and called over one keep-alive connection;
- service forward: the same entrypoint started by the real runtime (`service start`: unsealed
  once, its own user and private directory when root) and called through
  `python -m client service forward` over one keep-alive connection to the local listener;
- run per request: `run -s predict` on a one-patient CSV, then the result read from the outbox:
  an unseal, an interpreter start and a model load every time (today's only way before services).

The runtime is the real one (`enclave.server.make_server`) in its own process, on a Unix socket
as in the simulation; the KMS key is the runtime tests' stand-in (tests/fake_kms_key.py): the
same bundle format and image policy, no network round trip, so the run path's unseal is, if
anything, faster here than in the simulation. Target: p50 of service forward <= 2 ms over direct;
one unseal per service lifetime (counted and printed).
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(PROJECT_ROOT / "tests"))

from benchlib import ram_workdir  # noqa: E402  (beside this script)

SAMPLE = PROJECT_ROOT / "src" / "sample-inference"
PATIENT = {"patient_id": "p1", "age": 61, "bmi": 33.0, "fasting_glucose": 131,
           "systolic_bp": 142, "hdl_cholesterol": 38, "smoker": 1, "family_history": 1}
IMAGE_PYTHON = "/usr/bin/python3.11"


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 30.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def app_site() -> str:
    import numpy

    return str(Path(numpy.__file__).parent.parent)


def interpreter() -> str:
    return IMAGE_PYTHON if os.path.isfile(IMAGE_PYTHON) else sys.executable


def serve_runtime(socket_path: str, base: str, unseals: Any) -> None:
    """The runtime in a process of its own, counting the key provider's decryptions."""
    from fake_kms_key import FakeKmsKeyProvider
    from runtime_harness import TEST_POLICY

    from enclave.config import RuntimeConfig
    from enclave.server import make_server

    config = RuntimeConfig(exchange_root=Path(base) / "exchange",
                           private_root=Path(base) / "sealed", image_policy=TEST_POLICY,
                           app_site=app_site(), app_interpreter=interpreter(),
                           app_uid_base=300_000 + (os.getpid() % 100_000) * 8)
    provider = FakeKmsKeyProvider()

    def factory(credentials: Any, key_arn: str, policy: Any) -> Any:
        with unseals.get_lock():
            unseals.value += 1
        return provider

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(socket_path)
    server = make_server(sock, config=config, key_provider_factory=factory)
    try:
        server.serve_forever(poll_interval=0.05)
    finally:
        server.services.shutdown()


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"service_bench: {what} did not happen within {timeout:g}s")
        time.sleep(0.02)


def timed_requests(conn: http.client.HTTPConnection, count: int, warmup: int) -> list[float]:
    body = json.dumps(PATIENT).encode()
    headers = {"Content-Type": "application/json"}
    latencies = []
    for i in range(warmup + count):
        started = time.perf_counter()
        conn.request("POST", "/predict", body=body, headers=headers)
        response = conn.getresponse()
        answer = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200 or b"risk_probability" not in answer:
            raise SystemExit(f"service_bench: bad answer {response.status} {answer[:200]!r}")
        if i >= warmup:
            latencies.append(elapsed)
    return latencies


def bench_direct(work: Path, count: int, warmup: int) -> list[float]:
    app = work / "direct-app"
    shutil.copytree(SAMPLE, app)
    path = str(work / "direct.sock")
    env = {"SEALED_SERVICE_SOCKET": path, "PYTHONPATH": app_site(), "PATH": "/usr/bin:/bin",
           "PYTHONDONTWRITEBYTECODE": "1"}
    server = subprocess.Popen([interpreter(), "serve.py"], cwd=app, env=env)
    try:
        wait_for(lambda: os.path.exists(path), "the direct server listening")
        conn = UnixConnection(path)
        try:
            return timed_requests(conn, count, warmup)
        finally:
            conn.close()
    finally:
        server.kill()
        server.wait()


def bench_forward(runtime_socket: str, count: int, warmup: int) -> tuple[list[float], str]:
    from client.api import RuntimeClient
    from client.transport import UnixAddress

    client = RuntimeClient(UnixAddress(runtime_socket))
    started = client.start_service(bundle="app.sealed", entrypoint="serve",
                                   credentials={"access_key_id": "bench",
                                                "secret_access_key": "bench"})
    service_id = started["id"]
    wait_for(lambda: client.get_service(service_id)["state"] == "ready", "the service ready")
    port = free_port()
    forwarder = subprocess.Popen(
        [sys.executable, "-m", "client", "--socket", runtime_socket, "service", "forward",
         service_id, "--port", str(port)], cwd=PROJECT_ROOT, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    try:
        wait_for(lambda: port_open(port), "service forward listening")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            latencies = timed_requests(conn, count, warmup)
        finally:
            conn.close()
    finally:
        forwarder.terminate()
        forwarder.wait()
    status = client.get_service(service_id)
    client.stop_service(service_id)
    client.close()
    return latencies, f"{status['requests_served']} served, {status['errors']} errors"


def bench_runs(runtime_socket: str, base: Path, count: int) -> list[float]:
    from client.api import RuntimeClient
    from client.transport import UnixAddress

    inbox = base / "exchange" / "inbox"
    features = [k for k in PATIENT if k != "patient_id"]
    (inbox / "one.csv").write_text("patient_id," + ",".join(features) + "\n"
                                   + "p1," + ",".join(str(PATIENT[k]) for k in features) + "\n")
    client = RuntimeClient(UnixAddress(runtime_socket))
    latencies = []
    for i in range(count):
        started = time.perf_counter()
        run = client.start_run(bundle="app.sealed", entrypoint="predict",
                               args=["one.csv", f"out-{i}.csv"],
                               credentials={"access_key_id": "bench",
                                            "secret_access_key": "bench"})
        while (record := client.get_run(run["id"]))["state"] in ("unsealing", "running"):
            time.sleep(0.005)
        if record["state"] != "succeeded":
            raise SystemExit(f"service_bench: run failed: {record.get('error')}")
        data = client.read_range("outbox", f"out-{i}.csv", 0, 4096)
        latencies.append(time.perf_counter() - started)
        if b"p1," not in data:
            raise SystemExit("service_bench: the run wrote no prediction")
    client.close()
    return latencies


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def row(name: str, latencies: list[float], floor: float | None) -> str:
    p50, p99 = percentile(latencies, 0.5) * 1e3, percentile(latencies, 0.99) * 1e3
    rate = len(latencies) / sum(latencies)
    over = "" if floor is None else f"{p50 - floor:+9.2f}"
    return f"{name:<22}{len(latencies):>9}{rate:>10.0f}{p50:>10.2f}{p99:>10.2f}{over:>12}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000,
                        help="timed requests for direct and service forward (default 2000)")
    parser.add_argument("--warmup", type=int, default=100, help="untimed requests first")
    parser.add_argument("--runs", type=int, default=20, help="runs for run-per-request")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="service-bench-", dir=ram_workdir()))
    os.chmod(base, 0o711)  # the app's own user passes through to its private directory
    runtime_socket = str(base / "runtime.sock")
    unseals = multiprocessing.Value("i", 0)
    runtime = multiprocessing.get_context("fork").Process(
        target=serve_runtime, args=(runtime_socket, str(base), unseals), daemon=True)
    runtime.start()
    try:
        wait_for(lambda: os.path.exists(runtime_socket), "the runtime listening")
        from fake_kms_key import FakeKmsKeyProvider

        from enclave.sealing import seal_directory

        with open(base / "exchange" / "inbox" / "app.sealed", "wb") as out:
            seal_directory(SAMPLE, out, key_provider=FakeKmsKeyProvider())
        print(f"sample app: {SAMPLE.relative_to(PROJECT_ROOT)}, POST /predict of one patient; "
              f"runtime isolation: {'per-app user' if os.geteuid() == 0 else 'none (not root)'}",
              flush=True)
        direct = bench_direct(base, args.requests, args.warmup)
        before = unseals.value
        forward, counts = bench_forward(runtime_socket, args.requests, args.warmup)
        service_unseals = unseals.value - before
        before = unseals.value
        runs = bench_runs(runtime_socket, base, args.runs)
        run_unseals = unseals.value - before
    finally:
        runtime.terminate()
        runtime.join(15)
        shutil.rmtree(base, ignore_errors=True)
    floor = percentile(direct, 0.5) * 1e3
    print(f"\n{'path':<22}{'requests':>9}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}"
          f"{'p50 vs direct':>14}")
    print(row("direct (floor)", direct, None))
    print(row("service forward", forward, floor))
    print(row("run per request", runs, floor))
    overhead = percentile(forward, 0.5) * 1e3 - floor
    print(f"\nunseals: service {service_unseals} for {args.requests + args.warmup} requests "
          f"({counts}); runs {run_unseals} for {args.runs} requests")
    verdict = "met" if overhead <= 2.0 and service_unseals == 1 else "MISSED"
    print(f"target p50 overhead <= 2 ms over direct, one unseal per service: {verdict} "
          f"({overhead:+.2f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
