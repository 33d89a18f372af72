"""The simulation's background processes: how each is started (the image's own command with the
transport, paths and endpoints swapped), waited for, recognised again by its pid, and stopped;
and where the runs' files and the image's packages live outside the image."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from client import simstate
from client.api import RuntimeClient
from client.errors import ClientError
from client.transport import UnixAddress

PROJECT_ROOT = simstate.PROJECT_ROOT
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 5.0



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


def last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no output"
    return lines[-1] if lines else "no output"
