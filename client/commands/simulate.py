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
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from client import simstate
from client.errors import ClientError, EnclaveError, ExitStatus
from client.output import emit
from client.sim import image
from client.sim.principals import (
    cdk_context,
    default_principals,
    new_principal,
    principal_arn,
    register_principals,
)
from client.sim.processes import (
    MODULES,
    image_site,
    kms_port,
    private_root,
    runtime_command,
    runtime_healthy,
    spawn,
    stop_component,
    wait_for,
)
from enclave.policy import write_policy

PROJECT_ROOT = simstate.PROJECT_ROOT
# Where `make synth` writes it, in the directory the commands are run from (the project root).
DEFAULT_TEMPLATE = Path("cdk.out") / "ThirdPartyStack.template.json"
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
