"""`simulate up | down | status`: the whole enclave side on this machine, no AWS needed.

`up` starts three background processes, each with its own log in the state directory: the local
KMS endpoint (`client.sim.kms`), the simulated NSM (`client.sim.nsm`) and the real runtime
(`python -m enclave serve --unix ...`) using both. It registers two simulated principals (the
host role and the third party) with the local KMS, plays the third party's image build
(`client/sim/image.py`: the enclave key and alias, the measured image policy, the allow list) and
records everything in `state.json`, which every other command reads when no enclave is given:
`push`, `run`, `attest`... work unchanged. `env` prints the shell exports that make a simulated
principal's AWS commands (`envelope_encryptor.py`, the AWS CLI) talk to the local KMS.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from client import simstate
from client.api import RuntimeClient
from client.errors import ClientError, EnclaveError, ExitStatus
from client.output import emit
from client.sim import image
from client.transport import UnixAddress
from enclave.policy import write_policy

PROJECT_ROOT = simstate.PROJECT_ROOT
# Where `make synth` writes it, in the directory the commands are run from (the project root).
DEFAULT_TEMPLATE = Path("cdk.out") / "ThirdPartyStack.template.json"
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 5.0
# stop order: the runtime first, its services after (vsock_proxy and kms_tls: --jail only)
COMPONENTS = ("runtime", "vsock_proxy", "nsm", "kms_tls", "kms")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
             parents: list[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "simulate", parents=parents, help="run the enclave side locally (KMS, NSM, runtime)",
        description="Start, stop or inspect the local simulation. State lives in "
                    f"{simstate.sim_dir()} (or ${simstate.ENV_VAR}).")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser("up", parents=parents, help="start the simulation")
    up.add_argument("--debug-mode", action="store_true",
                    help="simulate a debug-mode enclave (every PCR zero: KMS must refuse it)")
    up.add_argument("--host-role-arn", type=principal_arn,
                    help="principal of the simulated host role "
                         "(default: from cdk.json, as HostStack names it)")
    up.add_argument("--third-party-arn", type=principal_arn,
                    help="principal of the simulated third party")
    up.add_argument("--template", type=Path, default=DEFAULT_TEMPLATE, metavar="PATH",
                    help="synthesized ThirdPartyStack template whose key policy the enclave key "
                         "gets (default: cdk.out/ThirdPartyStack.template.json here; `make synth`)")
    up.add_argument("--key-arn", metavar="ARN",
                    help="pin this existing local KMS key instead of the configured alias's")
    up.add_argument("--app-id", action="append", metavar="ID",
                    help="an app id the image runs (repeatable; default: cdk.json AppId, else "
                         "ApplicationDirectory)")
    up.add_argument("--minimum-app-version", metavar="VERSION",
                    help="refuse bundles below this version (default: cdk.json "
                         "MinimumAppVersion, else none)")
    up.add_argument("--app-uid-base", type=int, metavar="UID",
                    help="first user id of this runtime's runs (default: the runtime draws a "
                         "random block, so simulations on one machine never share app users)")
    up.add_argument("--jail", action="store_true",
                    help="run the image's own command in an emulated enclave (Linux namespaces; "
                         "needs root): docs/emulation.md")
    up.set_defaults(func=up_command)
    env = actions.add_parser(
        "env", parents=parents, help="print shell exports for a simulated principal",
        description="Print the exports that point AWS tools at the local KMS as a simulated "
                    'principal: eval "$(python -m client simulate env)".')
    env.add_argument("--as", dest="principal", choices=("third-party", "host"),
                     default="third-party", help="whose credentials (default: third-party)")
    env.set_defaults(func=env_command)
    down = actions.add_parser("down", parents=parents, help="stop the simulation")
    down.add_argument("--purge", action="store_true",
                      help="also delete the state directory (keys, PKI, exchange area)")
    down.set_defaults(func=down_command)
    status = actions.add_parser("status", parents=parents, help="report what runs")
    status.set_defaults(func=status_command)


# -- principals ---------------------------------------------------------------------------------

# An IAM role or user, an assumed-role session, or an account root, as a key policy names them.
PRINCIPAL_ARN = re.compile(r"arn:aws[a-z-]*:(iam::\d{12}:(root|(role|user)/[\w+=,.@/-]{1,512})"
                           r"|sts::\d{12}:assumed-role/[\w+=,.@-]{1,64}/[\w+=,.@-]{2,64})")


def principal_arn(text: str) -> str:
    if not PRINCIPAL_ARN.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an IAM principal ARN; expected e.g. "
            "arn:aws:iam::222222222222:role/NAME or "
            "arn:aws:sts::222222222222:assumed-role/NAME/SESSION")
    return text



def cdk_context() -> dict[str, Any]:
    try:
        context = json.loads((PROJECT_ROOT / "cdk.json").read_text()).get("context", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return context if isinstance(context, dict) else {}


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
    from client.sim.kms.state import register_principal

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
    process: subprocess.Popen[bytes] = component["_process"]
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
                    policy: Path, private: Path | None = None,
                    app_site: Path | None = None, app_uid_base: int | None = None) -> list[str]:
    """The image's own command with the transport, paths and endpoints swapped (one source)."""
    from enclave.__main__ import simulation_argv

    return simulation_argv(socket_path=socket_path, exchange=state_dir / "exchange",
                           private=private or state_dir / "private", nsm_device=nsm_socket,
                           kms_endpoint=kms_endpoint, policy=policy,
                           app_interpreter=app_interpreter(), app_site=app_site,
                           app_uid_base=app_uid_base)


def app_interpreter() -> str:
    """The interpreter apps run with outside the image: the machine's own Python 3.11 at the
    image's path when the runtime is root (each app's user must be able to run it; the
    project's virtualenv may sit where they cannot reach), else this interpreter."""
    from enclave.__main__ import IMAGE_PYTHON

    if os.geteuid() == 0 and os.path.isfile(IMAGE_PYTHON):
        return IMAGE_PYTHON
    return sys.executable


def image_site() -> Path:
    """The image's packages (/opt/enclave/site), installed from containers/requirements-*.txt
    as the Dockerfile does, in RAM where every app user can read them; kept per requirements."""
    from client.sim import jail

    shm = Path("/dev/shm")  # noqa: S108 - one fixed cache name per requirements digest, 0755
    return jail.ensure_site(shm / "sealed-sim-image-site" if shm.is_dir()
                            else PROJECT_ROOT / ".sim" / "image-site")


def private_root() -> Path:
    """Where run directories go: RAM, and reachable by the runs' own users (the state directory
    need not be). In the enclave it is /run/sealed."""
    shm = "/dev/shm"  # noqa: S108 - mkdtemp makes a fresh, unguessable, 0700 directory there
    base = Path(tempfile.mkdtemp(prefix="sealed-sim-private-",
                                 dir=shm if os.path.isdir(shm) else None))
    os.chmod(base, 0o711)  # noqa: S103 - pass-through only: no listing, each run dir is 0700
    return base


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
        emit(args, {"started": False, **public_state(existing)},
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
    policy_file = state_dir / "image" / "enclave-policy.json"
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

        # The third party's image build: key, measured image policy, allow list.
        kms = image.kms_client_for(principals["third_party"], region, kms_endpoint)
        key = image.ensure_enclave_key(
            kms, key_arn=args.key_arn, alias=context.get("EncryptionKeyAlias", "alias/enclavekey"),
            template=args.template, account=account_of(principals["third_party"]["arn"]),
            region=region)
        policy = image.image_policy(
            key_arn=key.arn, region=region,
            app_ids=args.app_id or [context.get("AppId") or
                                    context.get("ApplicationDirectory", "sample-inference")],
            minimum_app_version=args.minimum_app_version or context.get("MinimumAppVersion"))
        policy_file.parent.mkdir(mode=0o700, exist_ok=True)
        write_policy(policy_file, policy)
        from client.sim.measure import simulated_pcrs

        pcrs = simulated_pcrs(PROJECT_ROOT, policy=policy.canonical_bytes(),
                              debug=args.debug_mode)
        allowed_now = False
        if key.managed and not args.debug_mode:
            allowed_now = image.allow_measurement(kms, key.arn, pcrs[0].hex(),
                                                  int(context.get("MeasurementsToKeep", 3)))

        nsm_command = [sys.executable, "-m", "client.sim.nsm", "--socket", str(nsm_socket),
                       "--state", str(state_dir), "--project-root", str(PROJECT_ROOT),
                       "--policy", str(policy_file)]
        if args.debug_mode:
            nsm_command.append("--debug")
        started["nsm"] = spawn("nsm", nsm_command, state_dir)
        wait_for(started["nsm"], nsm_socket.exists, "the simulated NSM")
        started["nsm"]["socket"] = str(nsm_socket)

        if args.jail:
            runtime_socket = start_jail(started, state_dir, region, nsm_socket, policy_file)
        else:
            private = private_root()
            started["runtime"] = spawn("runtime", runtime_command(
                runtime_socket, state_dir, nsm_socket, kms_endpoint, policy_file, private,
                image_site(), args.app_uid_base), state_dir)
            started["runtime"]["private_root"] = str(private)
            wait_for(started["runtime"], lambda: runtime_healthy(runtime_socket), "the runtime")
        started["runtime"]["socket"] = str(runtime_socket)
    except BaseException:
        for name in COMPONENTS:
            if name in started:
                stop_component(started[name], MODULES[name])
        raise
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
        "enclave_key": {"arn": key.arn, "alias": key.alias, "created": key.created},
        "image_policy": {"path": str(policy_file), **policy.to_json()},
        **{name: {k: v for k, v in c.items() if not k.startswith("_")}
           for name, c in started.items()},
    }
    simstate.save_state(state, state_dir)
    key_line = ("created" if key.created else "reused") + (f" as {key.alias}" if key.alias
                                                           else " (--key-arn)")
    allow_line = ("PCR0 added to the key's allow list" if allowed_now else
                  "PCR0 already on the key's allow list" if key.managed else
                  "key given by ARN: its allow list is left as it is")
    emit(args, public_state(state),
         f"simulation up in {state_dir}\n  runtime  {runtime_socket} (pid "
         f"{started['runtime']['pid']})\n  NSM      {nsm_socket} (pid {started['nsm']['pid']})\n"
         f"  KMS      {kms_endpoint} (pid {started['kms']['pid']})\n"
         f"  key      {key.arn} ({key_line})\n"
         f"  image    pins {policy.describe()}\n"
         f"  PCR0     {state['measurements']['PCR0']} ({allow_line})\n"
         "Every command now uses it, e.g. `python -m client attest`; seal as the third party "
         'after `eval "$(python -m client simulate env)"`; stop with '
         "`python -m client simulate down`.")
    return 0


def account_of(arn: str) -> str:
    return arn.split(":")[4]


def env_command(args: argparse.Namespace) -> int:
    state = simstate.load_state()
    if state is None or not simstate.runtime_running(state):
        raise ClientError("no simulation is running; start one with `python -m client "
                          "simulate up`", status=ExitStatus.NOT_FOUND)
    principal = state["principals"]["third_party" if args.principal == "third-party" else "host"]
    exports = {
        "AWS_ACCESS_KEY_ID": principal["access_key_id"],
        "AWS_SECRET_ACCESS_KEY": principal["secret_access_key"],
        "AWS_SESSION_TOKEN": principal["session_token"],
        "AWS_DEFAULT_REGION": state["region"],
        "AWS_REGION": state["region"],
        "AWS_ENDPOINT_URL_KMS": state["kms"]["endpoint"],
        "ENCLAVE_KEY_ARN": (state.get("enclave_key") or {}).get("arn", ""),
    }
    if getattr(args, "json", False):
        emit(args, exports, "")
        return 0
    print("\n".join(f"export {name}={shlex.quote(value)}" for name, value in exports.items()))
    return 0


def start_jail(started: dict[str, dict[str, Any]], state_dir: Path, region: str,
               nsm_socket: Path, policy_file: Path) -> Path:
    """The emulated enclave (client/sim/jail.py) in place of the plain runtime process."""
    from client.sim import jail

    context = cdk_context()
    return jail.start(
        started, state_dir=state_dir, region=region, nsm_socket=nsm_socket, spawn=spawn,
        policy=policy_file,
        wait_for=wait_for, kms_port=kms_port, runtime_healthy=runtime_healthy,
        enclave_port=int(context.get("EnclavePort", jail.DEFAULT_ENCLAVE_PORT)),
        vsock_proxy_port=int(context.get("VsockProxyPort", jail.DEFAULT_VSOCK_PROXY_PORT)))


def public_state(state: dict[str, Any]) -> dict[str, Any]:
    """The state without secret keys, for printing."""
    shown: dict[str, Any] = json.loads(json.dumps(state))
    for principal in shown.get("principals", {}).values():
        principal.pop("secret_access_key", None)
        principal.pop("session_token", None)
    return shown


def stop_all(state: dict[str, Any]) -> list[str]:
    stopped = [name for name in COMPONENTS
               if name in state and stop_component(state[name], MODULES[name])]
    private = (state.get("runtime") or {}).get("private_root")
    if private and Path(private).name.startswith("sealed-sim-private-"):
        shutil.rmtree(private, ignore_errors=True)  # the runtime wiped its runs; this is the root
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
