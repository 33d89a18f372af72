"""`simulate up | down | status`: the whole enclave side on this machine, no AWS needed.

`up` starts three background processes, each with its own log in the state directory: the local
KMS endpoint (`client.sim.kms`), the simulated NSM (`client.sim.nsm`) and the real runtime
(`python -m enclave serve --unix ...`) using both. It registers two simulated principals (the
host role and the third party) with the local KMS and records everything in `state.json`, which
every other command reads when no enclave is given: `push`, `run`, `attest`... work unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from client import simstate
from client.api import RuntimeClient, UnixAddress
from client.errors import ClientError, EnclaveError, ExitStatus
from client.output import emit

PROJECT_ROOT = simstate.PROJECT_ROOT
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 5.0
# stop order: the runtime first, its services after (vsock_proxy and kms_tls: --jail only)
POLICY_FILE = "policy.json"  # the image's measured policy, as the simulation's runtime reads it
COMPONENTS = ("runtime", "vsock_proxy", "nsm", "kms_tls", "kms")


def register(subparsers: argparse._SubParsersAction,
             parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "simulate", parents=parents, help="run the enclave side locally (KMS, NSM, runtime)",
        description="Start, stop or inspect the local simulation. State lives in "
                    f"{simstate.sim_dir()} (or ${simstate.ENV_VAR}).")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser("up", parents=parents, help="start the simulation")
    up.add_argument("--debug-mode", action="store_true",
                    help="simulate a debug-mode enclave (every PCR zero: KMS must refuse it)")
    up.add_argument("--host-role-arn", help="principal of the simulated host role "
                                            "(default: from cdk.json, as HostStack names it)")
    up.add_argument("--third-party-arn", help="principal of the simulated third party")
    up.add_argument("--jail", action="store_true",
                    help="run the image's own command in an emulated enclave (Linux namespaces; "
                         "needs root): docs/emulation.md")
    up.set_defaults(func=up_command)
    down = actions.add_parser("down", parents=parents, help="stop the simulation")
    down.add_argument("--purge", action="store_true",
                      help="also delete the state directory (keys, PKI, exchange area)")
    down.set_defaults(func=down_command)
    status = actions.add_parser("status", parents=parents, help="report what runs")
    status.set_defaults(func=status_command)


# -- principals ---------------------------------------------------------------------------------


def cdk_context() -> dict[str, Any]:
    try:
        return json.loads((PROJECT_ROOT / "cdk.json").read_text()).get("context", {})
    except (OSError, ValueError):
        return {}


def default_principals(context: dict[str, Any]) -> tuple[str, str]:
    """The host role HostStack creates and a third-party administrator, from cdk.json."""
    host_account = context.get("HostAWSAccountNumber", "222222222222")
    third_account = context.get("ThirdPartyAWSAccountNumber", "111111111111")
    role_name = context.get("HostRoleName") or \
        f"sealed-enclave-host-{context.get('ThirdPartyName', 'third-party')}"[:64]
    host = context.get("HostRoleArn") or f"arn:aws:iam::{host_account}:role/{role_name}"
    return host, f"arn:aws:iam::{third_account}:role/sealed-enclave-third-party-admin"


def new_principal(arn: str) -> dict[str, str]:
    """Simulated credentials: the local KMS identifies callers by access key id."""
    return {"arn": arn, "access_key_id": "ASIASIM" + secrets.token_hex(7).upper(),
            "secret_access_key": secrets.token_urlsafe(30),
            "session_token": secrets.token_urlsafe(48)}


def register_principals(state_dir: Path, principals: dict[str, dict[str, str]]) -> None:
    from client.sim.kms import register_principal

    for principal in principals.values():
        register_principal(state_dir, principal["access_key_id"], principal["arn"])


# -- processes ------------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def spawn(name: str, command: list[str], state_dir: Path) -> dict[str, Any]:
    log_path = state_dir / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, cwd=state_dir, env=child_env(),
                                   start_new_session=True)
    return {"pid": process.pid, "log": str(log_path), "command": command, "_process": process,
            "_log_start": log_path.stat().st_size}


def wait_for(component: dict[str, Any], ready: Any, what: str,
             timeout: float = START_TIMEOUT_SECONDS) -> Any:
    deadline = time.monotonic() + timeout
    process: subprocess.Popen = component["_process"]
    while True:
        value = ready()
        if value:
            return value
        if process.poll() is not None:
            raise ClientError(f"{what} exited at start (status {process.returncode}): "
                              f"{last_line(Path(component['log']))}; see {component['log']}")
        if time.monotonic() > deadline:
            raise ClientError(f"{what} did not become ready within {timeout:g}s; see "
                              f"{component['log']}")
        time.sleep(0.05)


def kms_port(component: dict[str, Any]) -> int | None:
    """The port the local KMS prints as its first line."""
    with open(component["log"], "rb") as log:
        log.seek(component["_log_start"])
        first = log.readline().strip()
    return int(first) if first.isdigit() else None


def runtime_healthy(socket_path: Path) -> bool:
    if not socket_path.exists():
        return False
    try:
        with RuntimeClient(UnixAddress(str(socket_path)), timeout=2) as client:
            return client.health().get("status") == "ok"
    except ClientError:
        return False


def runtime_command(socket_path: Path, state_dir: Path, nsm_socket: Path, kms_endpoint: str,
                    region: str) -> list[str]:
    """The image's own command with the transport, paths and endpoints swapped (one source)."""
    from enclave.__main__ import simulation_argv

    return simulation_argv(socket_path=socket_path, exchange=state_dir / "exchange",
                           private=state_dir / "private", nsm_device=nsm_socket,
                           kms_endpoint=kms_endpoint, region=region,
                           policy=state_dir / POLICY_FILE)


def stop_component(component: dict[str, Any], module: str) -> bool:
    """SIGTERM (then SIGKILL) a recorded process, if it still is the one we started."""
    module = component.get("module", module)
    pid = component.get("pid")
    if not isinstance(pid, int) or not simstate.pid_alive(pid) or not _runs_module(pid, module):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while simstate.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if simstate.pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    return True


def _runs_module(pid: int, module: str) -> bool:
    """Guard against a recycled pid: only signal a process running our module."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return module.encode() in argv


MODULES = {"runtime": "enclave", "nsm": "client.sim.nsm", "kms": "client.sim.kms",
           "kms_tls": "client.sim.kms", "vsock_proxy": "client.sim.vsock_proxy"}


# -- commands -------------------------------------------------------------------------------------


def up_command(args: argparse.Namespace) -> int:
    state_dir = simstate.sim_dir()
    existing = simstate.load_state(state_dir)
    if existing and simstate.runtime_running(existing):
        emit(args, {"started": False, **existing},
             f"simulation already running in {state_dir} (runtime "
             f"{existing['runtime']['socket']}); `simulate down` stops it")
        return 0
    if existing:
        stop_all(existing)  # leftovers of a crashed run
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    context = cdk_context()
    region = args.region or context.get("Region", "us-east-1")
    host_arn, third_arn = default_principals(context)
    principals = {"host": new_principal(args.host_role_arn or host_arn),
                  "third_party": new_principal(args.third_party_arn or third_arn)}
    nsm_socket = state_dir / "nsm.sock"
    runtime_socket = state_dir / "runtime.sock"
    for stale in (nsm_socket, runtime_socket):
        stale.unlink(missing_ok=True)
    started: dict[str, dict[str, Any]] = {}
    try:
        started["kms"] = spawn("kms", [sys.executable, "-m", "client.sim.kms", "--port", "0",
                                       "--state", str(state_dir)], state_dir)
        port = wait_for(started["kms"], lambda: kms_port(started["kms"]), "the local KMS")
        kms_endpoint = f"http://127.0.0.1:{port}"
        started["kms"].update(port=port, endpoint=kms_endpoint)
        register_principals(state_dir, principals)

        nsm_command = [sys.executable, "-m", "client.sim.nsm", "--socket", str(nsm_socket),
                       "--state", str(state_dir), "--project-root", str(PROJECT_ROOT)]
        if args.debug_mode:
            nsm_command.append("--debug")
        started["nsm"] = spawn("nsm", nsm_command, state_dir)
        wait_for(started["nsm"], nsm_socket.exists, "the simulated NSM")
        started["nsm"]["socket"] = str(nsm_socket)

        if args.jail:
            runtime_socket = start_jail(started, state_dir, region, nsm_socket)
        else:
            started["runtime"] = spawn("runtime", runtime_command(
                runtime_socket, state_dir, nsm_socket, kms_endpoint, region), state_dir)
            wait_for(started["runtime"], lambda: runtime_healthy(runtime_socket), "the runtime")
        started["runtime"]["socket"] = str(runtime_socket)
    except BaseException:
        for name in COMPONENTS:
            if name in started:
                stop_component(started[name], MODULES[name])
        raise
    from client.sim.measure import simulated_pcrs

    pcrs = simulated_pcrs(PROJECT_ROOT, debug=args.debug_mode)
    state = {
        "format": 1,
        "state_dir": str(state_dir),
        "region": region,
        "debug_mode": args.debug_mode,
        "mode": "jail" if args.jail else "plain",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "principals": principals,
        "dev_root": str(state_dir / "pki" / "root.pem"),
        "measurements": {f"PCR{i}": pcrs[i].hex() for i in (0, 1, 2)},
        **{name: {k: v for k, v in c.items() if not k.startswith("_")}
           for name, c in started.items()},
    }
    simstate.save_state(state, state_dir)
    emit(args, public_state(state),
         f"simulation up in {state_dir}\n  runtime  {runtime_socket} (pid "
         f"{started['runtime']['pid']})\n  NSM      {nsm_socket} (pid {started['nsm']['pid']})\n"
         f"  KMS      {kms_endpoint} (pid {started['kms']['pid']})\n  PCR0     "
         f"{state['measurements']['PCR0']}\nEvery command now uses it, e.g. "
         "`python -m client attest`; stop with `python -m client simulate down`.")
    return 0


def start_jail(started: dict[str, dict[str, Any]], state_dir: Path, region: str,
                nsm_socket: Path) -> Path:
    """The emulated enclave (client/sim/jail.py) in place of the plain runtime process."""
    from client.sim import jail

    context = cdk_context()
    return jail.start(
        started, state_dir=state_dir, region=region, nsm_socket=nsm_socket, spawn=spawn,
        wait_for=wait_for, kms_port=kms_port, runtime_healthy=runtime_healthy,
        enclave_port=int(context.get("EnclavePort", jail.DEFAULT_ENCLAVE_PORT)),
        vsock_proxy_port=int(context.get("VsockProxyPort", jail.DEFAULT_VSOCK_PROXY_PORT)))


def public_state(state: dict[str, Any]) -> dict[str, Any]:
    """The state without secret keys, for printing."""
    shown = json.loads(json.dumps(state))
    for principal in shown.get("principals", {}).values():
        principal.pop("secret_access_key", None)
        principal.pop("session_token", None)
    return shown


def stop_all(state: dict[str, Any]) -> list[str]:
    stopped = [name for name in COMPONENTS
               if name in state and stop_component(state[name], MODULES[name])]
    for name in ("runtime", "nsm", "vsock_proxy"):
        socket_path = (state.get(name) or {}).get("socket")
        if socket_path:
            Path(socket_path).unlink(missing_ok=True)
    return stopped


def down_command(args: argparse.Namespace) -> int:
    state_dir = simstate.sim_dir()
    state = simstate.load_state(state_dir)
    stopped = stop_all(state) if state else []
    (state_dir / simstate.STATE_FILE).unlink(missing_ok=True)
    if args.purge and state_dir.exists():
        shutil.rmtree(state_dir)
    text = (f"simulation stopped ({', '.join(stopped)})" if stopped
            else "no simulation was running")
    emit(args, {"stopped": stopped, "purged": bool(args.purge), "state_dir": str(state_dir)},
         text + (f"; removed {state_dir}" if args.purge else ""))
    return 0


def status_command(args: argparse.Namespace) -> int:
    state_dir = simstate.sim_dir()
    state = simstate.load_state(state_dir)
    if state is None:
        emit(args, {"running": False, "state_dir": str(state_dir)},
             f"no simulation in {state_dir}; start one with `python -m client simulate up`")
        return int(ExitStatus.NOT_FOUND)
    components = {name: simstate.pid_alive((state.get(name) or {}).get("pid"))
                  for name in COMPONENTS if name in state}
    healthy = runtime_healthy(Path(state["runtime"]["socket"]))
    running = all(components.values()) and healthy
    data = {"running": running, "healthy": healthy, "components": components,
            **public_state(state)}
    lines = [f"simulation in {state_dir}: {'running' if running else 'DEGRADED'}"]
    for name in components:
        c = state.get(name) or {}
        where = c.get("socket") or c.get("endpoint") or ""
        lines.append(f"  {name:8} {'up  ' if components[name] else 'DOWN'} pid {c.get('pid')} "
                     f"{where}  log {c.get('log')}")
    emit(args, data, "\n".join(lines))
    if not running:
        raise EnclaveError(f"the simulation in {state_dir} is degraded; see the logs above, then "
                           "`simulate down` and `simulate up`")
    return 0


def last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no output"
    return lines[-1] if lines else "no output"
