"""How a command finds the enclave runtime it talks to.

In order: `--socket PATH` (a simulated runtime), `--cid` with `--port`, the one running enclave
that `nitro-cli describe-enclaves` lists, and last the running local simulation recorded in the
simulation state. Ambiguity is an error, never a guess. Without `--port`, an enclave's runtime
port is the host settings' `enclave_port`, else 5005.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from client import simstate
from client.api import RuntimeClient
from client.errors import ClientError, NotFoundError, UsageError
from client.hostconfig import load_host_config
from client.transport import DEFAULT_PORT, DEFAULT_TIMEOUT, Address, UnixAddress, VsockAddress

NITRO_CLI = "nitro-cli"


@dataclass(frozen=True)
class Target:
    address: Address
    source: str  # how it was found: "--socket", "--cid", "nitro-cli", "simulation"
    simulation: dict[str, Any] | None = field(default=None, compare=False)

    def client(self, timeout: float | None = DEFAULT_TIMEOUT) -> RuntimeClient:
        return RuntimeClient(self.address, timeout=timeout)


def describe_enclaves(nitro_cli: str = NITRO_CLI) -> list[dict[str, Any]] | None:
    """`nitro-cli describe-enclaves` parsed, or None when nitro-cli is not installed here."""
    if shutil.which(nitro_cli) is None:
        return None
    try:
        done = subprocess.run([nitro_cli, "describe-enclaves"], capture_output=True, text=True,
                              timeout=60, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ClientError("`nitro-cli describe-enclaves` did not answer within 60s; check the "
                          "nitro-enclaves-allocator service, or pass --cid") from exc
    if done.returncode != 0:
        raise ClientError(f"`nitro-cli describe-enclaves` failed (exit {done.returncode}): "
                          f"{_last_line(done.stderr)}; pass --cid to skip it")
    try:
        described = json.loads(done.stdout or "[]")
    except ValueError as exc:
        raise ClientError("`nitro-cli describe-enclaves` printed something that is not JSON; "
                          "pass --cid to skip it") from exc
    if not isinstance(described, list):
        raise ClientError("`nitro-cli describe-enclaves` did not print a JSON list; pass --cid")
    return described


def enclave_port(explicit: int | None) -> int:
    """`--port`, else the host settings' `enclave_port`, else the runtime's default."""
    if explicit is not None:
        return explicit
    host = load_host_config()
    return host.enclave_port if host is not None else DEFAULT_PORT


def running_enclaves(described: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in described if str(e.get("State", "")).upper() == "RUNNING"]


def resolve_target(args: Any, *,
                   describe: Callable[[], list[dict[str, Any]] | None] = describe_enclaves,
                   ) -> Target:
    socket_path = getattr(args, "socket", None)
    cid = getattr(args, "cid", None)
    port = getattr(args, "port", None)
    if socket_path and cid is not None:
        raise UsageError("--socket and --cid both given; use --socket for the simulation or "
                         "--cid for a real enclave, not both")
    if socket_path:
        # The simulation's own socket named explicitly is still the simulation (its principals
        # and development root apply).
        state = simstate.load_state()
        recorded = ((state or {}).get("runtime") or {}).get("socket")
        same = recorded is not None and os.path.realpath(recorded) == os.path.realpath(socket_path)
        return Target(UnixAddress(str(socket_path)), "--socket",
                      simulation=state if same else None)
    if cid is not None:
        return Target(VsockAddress(cid, enclave_port(port)), "--cid")

    described = describe()
    if described is not None:
        running = running_enclaves(described)
        if len(running) == 1:
            return Target(VsockAddress(int(running[0]["EnclaveCID"]), enclave_port(port)),
                          "nitro-cli")
        if len(running) > 1:
            listed = ", ".join(f"{e.get('EnclaveName', e.get('EnclaveID'))} (cid "
                               f"{e.get('EnclaveCID')})" for e in running)
            raise UsageError(f"{len(running)} enclaves are running ({listed}); "
                             "choose one with --cid")

    state = simstate.load_state()
    if state is not None and simstate.runtime_running(state):
        return Target(UnixAddress(state["runtime"]["socket"]), "simulation", simulation=state)

    where = "nitro-cli lists no running enclave" if described is not None else \
        "nitro-cli is not installed"
    raise NotFoundError(f"no enclave runtime found: {where} and no simulation is running in "
                        f"{simstate.sim_dir()}; run `python -m client enclave start --eif ...` or "
                        "`python -m client simulate up`, or pass --cid / --socket")


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"
