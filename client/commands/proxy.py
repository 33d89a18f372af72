"""`proxy -s kms [--region R] [--stop | --status]`: the enclave's only way out, to KMS.

Starts `vsock-proxy` detached, with the allow-list configuration, a pid file in the client's
state directory and its own log, and working directory `/`, so it does not depend on where the
command was typed. Starting it twice is harmless: the running one is reported. On the enclave
host, the listen port defaults to the host settings' `vsock_proxy_port` (`client.hostconfig`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from client import aws, hoststate
from client.errors import ClientError, ExitStatus, NotFoundError, UsageError
from client.hostconfig import load_host_config
from client.output import emit
from client.simstate import pid_alive

SERVICES = {"kms": "kms.{region}.amazonaws.com"}
DEFAULT_LISTEN_PORT = 8000
DEFAULT_CONFIG = Path("/etc/nitro_enclaves/vsock-proxy.yaml")
VSOCK_PROXY = "vsock-proxy"
STARTUP_GRACE_SECONDS = 0.5


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "proxy", parents=parents, help="start, check or stop the vsock-proxy to KMS",
        description="Run vsock-proxy so the enclave can reach the regional KMS endpoint, and "
                    "nothing else (the allow list in --config).")
    parser.add_argument("-s", "--service", required=True, choices=sorted(SERVICES),
                        help="the AWS service to proxy (kms)")
    parser.add_argument("--listen-port", type=int, metavar="PORT",
                        help="vsock port the enclave connects to (default: the host settings' "
                             f"vsock_proxy_port, else {DEFAULT_LISTEN_PORT})")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                        help=f"vsock-proxy allow-list file (default {DEFAULT_CONFIG})")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--stop", action="store_true", help="stop the running proxy")
    action.add_argument("--status", action="store_true", help="report whether it runs")
    parser.set_defaults(func=proxy_command)


def endpoint_for(service: str, region: str) -> str:
    return SERVICES[service].format(region=region)


def listen_port(explicit: int | None) -> int:
    """`--listen-port`, else the host settings' `vsock_proxy_port` (the port the enclave image
    was told to use), else vsock-proxy's usual 8000."""
    if explicit is not None:
        return explicit
    host = load_host_config()
    return host.vsock_proxy_port if host is not None else DEFAULT_LISTEN_PORT


def pid_file(service: str) -> Path:
    return hoststate.state_dir() / f"proxy-{service}.json"


def running_proxy(service: str) -> dict[str, Any] | None:
    record = hoststate.read_json(pid_file(service).name)
    if record and pid_alive(record.get("pid")) and _is_vsock_proxy(record["pid"]):
        return record
    return None


def _is_vsock_proxy(pid: int) -> bool:
    """Guard against a recycled pid: only signal a process that is a vsock-proxy."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # argv[0] for the binary; argv[1] when an interpreter runs a vsock-proxy script
    return any(os.path.basename(a.decode(errors="replace")) == VSOCK_PROXY for a in argv[:2])


def check_allow_list(config: Path, endpoint: str) -> None:
    try:
        text = config.read_text()
    except FileNotFoundError as exc:
        raise NotFoundError(f"vsock-proxy config {config} does not exist; install "
                            "aws-nitro-enclaves-cli or pass --config") from exc
    except OSError as exc:
        raise UsageError(f"cannot read vsock-proxy config {config}: {exc.strerror}") from exc
    if endpoint not in text:
        raise UsageError(f"{endpoint} is not in the allow list {config}; add `- {{address: "
                         f"{endpoint}, port: 443}}` under allowlist, or pass --region")


def proxy_command(args: argparse.Namespace) -> int:
    service = args.service
    if args.status:
        record = running_proxy(service)
        data = {"service": service, "running": record is not None, **(record or {})}
        text = (f"{service} proxy running (pid {record['pid']}): vsock port "
                f"{record['listen_port']} -> {record['endpoint']}:443" if record
                else f"{service} proxy not running; start it with `python -m client proxy -s "
                     f"{service}`")
        emit(args, data, text)
        return 0 if record else int(ExitStatus.NOT_FOUND)
    if args.stop:
        return stop_proxy(args, service)
    return start_proxy(args, service)


def start_proxy(args: argparse.Namespace, service: str) -> int:
    region = aws.get_region(args.region)
    endpoint = endpoint_for(service, region)
    port = listen_port(args.listen_port)
    existing = running_proxy(service)
    if existing:
        if existing.get("endpoint") != endpoint or existing.get("listen_port") != port:
            raise UsageError(f"a {service} proxy already runs (pid {existing['pid']}, port "
                             f"{existing['listen_port']} -> {existing['endpoint']}); stop it "
                             "first with --stop")
        emit(args, {"service": service, "started": False, **existing},
             f"{service} proxy already running (pid {existing['pid']})")
        return 0
    binary = shutil.which(VSOCK_PROXY)
    if binary is None:
        raise NotFoundError("vsock-proxy is not installed; install aws-nitro-enclaves-cli "
                            "(dnf install aws-nitro-enclaves-cli)")
    config = args.config.resolve()
    check_allow_list(config, endpoint)
    log_path = hoststate.state_dir() / f"proxy-{service}.log"
    command = [binary, str(port), endpoint, "443", "--config", str(config)]
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   cwd="/", start_new_session=True, close_fds=True)
    time.sleep(STARTUP_GRACE_SECONDS)
    if process.poll() is not None:
        raise ClientError(f"vsock-proxy exited at once (status {process.returncode}): "
                          f"{_last_line(log_path)}; see {log_path}")
    record = {"pid": process.pid, "service": service, "endpoint": endpoint, "region": region,
              "listen_port": port, "config": str(config), "log": str(log_path),
              "command": command}
    hoststate.write_json(pid_file(service).name, record)
    emit(args, {"started": True, **record},
         f"{service} proxy started (pid {process.pid}): vsock port {port} -> "
         f"{endpoint}:443, log {log_path}")
    return 0


def stop_proxy(args: argparse.Namespace, service: str, *, wait: float = 5.0) -> int:
    record = running_proxy(service)
    path = pid_file(service)
    if record is None:
        path.unlink(missing_ok=True)
        emit(args, {"service": service, "stopped": False}, f"{service} proxy was not running")
        return 0
    pid = record["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    emit(args, {"service": service, "stopped": True, "pid": pid},
         f"{service} proxy stopped (pid {pid})")
    return 0


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no output"
    return lines[-1] if lines else "no output"
