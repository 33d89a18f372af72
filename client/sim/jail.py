"""The emulated enclave: the image's own command in Linux namespaces (`simulate up --jail`).

A real enclave runs the image's CMD under the Nitro init: a RAM root file system built by
linuxkit, tmpfs `noexec` /run and /tmp, a localhost-only /etc/hosts and an empty resolv.conf, no
network but vsock (`lo` down until someone brings it up), the image's environment and nothing
else. This module rebuilds that on a development or CI machine, as root, with `unshare --mount
--net --pid --fork` and client/sim/jail_init.py as PID 1, so the defects of an image that only
real hardware used to reveal show up in `make test`. What cannot be reproduced (the socket family,
the NSM, the certificate authority, ...) is replaced as enclave/emulation.py lists, nowhere else.

The pieces are pure functions of the image definition (`image_spec` reads containers/Dockerfile)
and of the paths (`jail_plan`), plus `start`, which prepares the files and spawns the processes:
the local KMS's TLS endpoint for kms.<region>.amazonaws.com (test CA), the vsock-proxy stand-in
with the host's allow list, and the jail itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.errors import ClientError
from client.sim.tls import ensure_kms_certificate, kms_hostname
from enclave.emulation import (
    BOTOCORE_CA_BUNDLE,
    EMULATED_ENCLAVE_CID,
    HIDDEN_HOST_PATHS,
    HOST_DEVICES,
    HOST_ETC_FILES,
    HOST_USR,
    IMAGE_INTERPRETERS,
    IMAGE_SYSTEM_PYTHON3,
    INIT_PATH,
    INIT_WORKING_DIRECTORY,
    LINUXKIT_HOSTS,
    LINUXKIT_RESOLV_CONF,
    NOEXEC_TMPFS,
    NSM_DEVICE,
    NSM_TRANSPORT,
    PARENT_CID,
    PYTHON3_STANDIN,
    VSOCK_DIR_IN_JAIL,
    vsock_socket_path,
)
from enclave.image import APP_SITE

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = PROJECT_ROOT / "containers" / "Dockerfile"
REQUIREMENT_FILES = ("containers/requirements-enclave.txt", "containers/requirements-app.txt")
IMAGE_SITE = APP_SITE  # the image's packages (the Dockerfile's pip --target)
IMAGE_APP = "/opt/enclave/app"
IMAGE_POLICY = "/opt/enclave/policy.json"
# The Amazon Linux base image's configuration sets only PATH (docker's default for it).
BASE_IMAGE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
DEFAULT_ENCLAVE_PORT = 5005
DEFAULT_VSOCK_PROXY_PORT = 8000


class JailUnavailable(ClientError):
    """This machine cannot run the emulated enclave (the message says why)."""


@dataclass(frozen=True)
class ImageSpec:
    """What the image hands the init: its command and its environment."""

    argv: list[str]
    env: dict[str, str]


# -- the image definition --------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _substitute(value: str, variables: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return variables.get(name, "")
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", replace, value)


def image_spec(dockerfile: str, build_args: dict[str, str]) -> ImageSpec:
    """The final stage's CMD (exec form) and environment, with build args applied as docker
    build does (`ARG` defaults overridden by `--build-arg`, substituted into `ENV`)."""
    stages: dict[str, dict[str, Any]] = {}
    stage: dict[str, Any] = {"env": dict(BASE_IMAGE_ENV), "cmd": []}
    args: dict[str, str] = {}
    for keyword, rest in dockerfile_instructions(dockerfile):
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            parent = stages.get(words[0])
            stage = {"env": dict(parent["env"]) if parent else dict(BASE_IMAGE_ENV),
                     "cmd": list(parent["cmd"]) if parent else []}
            args = {}
            if len(words) >= 3 and words[1].upper() == "AS":
                stages[words[2]] = stage
        elif keyword == "ARG":
            name, has_default, default = rest.partition("=")
            args[name] = build_args.get(name, default if has_default else "")
        elif keyword == "ENV":
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                stage["env"][name] = _substitute(value, {**args, **stage["env"]})
        elif keyword == "CMD":
            try:
                stage["cmd"] = json.loads(rest)
            except ValueError:
                raise ClientError("containers/Dockerfile's CMD must use the exec (JSON) form") \
                    from None
    env, cmd = stage["env"], stage["cmd"]
    if not cmd:
        raise ClientError("containers/Dockerfile has no CMD")
    return ImageSpec(argv=list(cmd), env=env)


def jail_argv(image_argv: list[str]) -> list[str]:
    """The image's command with only the interpreter path, the socket family and the NSM's
    transport mapped."""
    argv = list(image_argv)
    argv[0] = IMAGE_INTERPRETERS.get(argv[0], argv[0])
    if "serve" not in argv:
        raise ClientError(f"the image's command {argv} does not run `enclave serve`")
    at = argv.index("serve") + 1
    return (argv[:at] + ["--emulate-vsock-dir", VSOCK_DIR_IN_JAIL, "--nsm-transport", NSM_TRANSPORT]
            + argv[at:])


# -- the root file system ----------------------------------------------------------------------


@dataclass(frozen=True)
class JailPaths:
    root: Path  # empty directory: the tmpfs root is mounted here
    site: Path  # the image's /opt/enclave/site, installed with pip
    ca_bundle: Path  # botocore's bundle plus the test CA
    hosts: Path
    resolv_conf: Path
    usr_layer: Path  # mount point of the RAM layer over /usr (outside the jail's root)
    vsock_dir: Path
    nsm_socket: Path
    enclave_code: Path = PROJECT_ROOT / "enclave"
    policy: Path | None = None  # the image's measured policy file, when the simulation has one


def jail_plan(paths: JailPaths, spec: ImageSpec) -> dict[str, Any]:
    """Everything jail_init does, as data."""
    noexec = ["nosuid", "nodev", "noexec"]
    steps: list[dict[str, Any]] = [
        {"op": "tmpfs", "target": "/", "data": "mode=0755"},
        # this machine's /usr under a RAM layer where the image's differences are made
        {"op": "overlay", "source": HOST_USR, "target": "/usr", "scratch": str(paths.usr_layer)},
        {"op": "file", "target": IMAGE_SYSTEM_PYTHON3, "content": PYTHON3_STANDIN, "mode": 0o755},
    ]
    steps += [{"op": "symlink", "target": f"/{name}", "to": f"usr/{name}"}
              for name in ("bin", "sbin", "lib", "lib64") if os.path.islink(f"/{name}")]
    steps += [{"op": "remove", "target": hidden} for hidden in HIDDEN_HOST_PATHS]
    steps += [{"op": "remount", "target": "/usr", "flags": ["ro", "nosuid", "nodev"]},
              {"op": "dir", "target": "/etc"}]
    steps += [{"op": "bind", "source": name, "target": name, "flags": ["ro"]}
              for name in HOST_ETC_FILES]
    steps += [
        {"op": "bind", "source": str(paths.hosts), "target": "/etc/hosts"},
        {"op": "bind", "source": str(paths.resolv_conf), "target": "/etc/resolv.conf"},
        {"op": "bind", "source": str(paths.site), "target": IMAGE_SITE,
         "flags": ["ro", "nosuid", "nodev"]},
        {"op": "bind", "source": str(paths.ca_bundle),
         "target": f"{IMAGE_SITE}/{BOTOCORE_CA_BUNDLE}", "flags": ["ro"]},
        {"op": "bind", "source": str(paths.enclave_code), "target": f"{IMAGE_APP}/enclave",
         "flags": ["ro", "nosuid", "nodev"]},
    ]
    if paths.policy is not None:
        steps.append({"op": "bind", "source": str(paths.policy), "target": IMAGE_POLICY,
                      "flags": ["ro"]})
    steps += [{"op": "tmpfs", "target": target, "flags": noexec, "data": data}
              for target, data in NOEXEC_TMPFS.items() if not target.startswith("/dev/")]
    steps.append({"op": "tmpfs", "target": "/dev", "flags": ["nosuid", "noexec"],
                  "data": "mode=0755"})
    steps += [{"op": "bind", "source": f"/dev/{name}", "target": f"/dev/{name}"}
              for name in HOST_DEVICES]
    steps += [
        {"op": "bind", "source": str(paths.nsm_socket), "target": NSM_DEVICE},
        *({"op": "tmpfs", "target": target, "flags": noexec, "data": data}
          for target, data in NOEXEC_TMPFS.items() if target.startswith("/dev/")),
        {"op": "symlink", "target": "/dev/fd", "to": "/proc/self/fd"},
        {"op": "symlink", "target": "/dev/stdin", "to": "/proc/self/fd/0"},
        {"op": "symlink", "target": "/dev/stdout", "to": "/proc/self/fd/1"},
        {"op": "symlink", "target": "/dev/stderr", "to": "/proc/self/fd/2"},
        {"op": "proc", "target": "/proc", "flags": noexec},
        {"op": "bind", "source": str(paths.vsock_dir), "target": VSOCK_DIR_IN_JAIL,
         "flags": ["nosuid", "nodev", "noexec"]},
    ]
    return {"root": str(paths.root), "steps": steps, "argv": jail_argv(spec.argv),
            "env": spec.env, "cwd": INIT_WORKING_DIRECTORY, "lookup_path": INIT_PATH}


# -- preparation (I/O) -------------------------------------------------------------------------


def unavailable_reason() -> str | None:
    """Why this machine cannot run the jail, or None when it can."""
    if os.geteuid() != 0:
        return "the emulated enclave needs root (mount, network and PID namespaces)"
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    for interpreter in IMAGE_INTERPRETERS.values():
        if not os.access(interpreter, os.X_OK):
            return f"{interpreter} (the image's interpreter) is not installed here"
    try:
        probe = subprocess.run(["unshare", "--mount", "--net", "--pid", "--fork", "true"],
                               capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare failed: {exc}"
    if probe.returncode != 0:
        return f"unshare is not permitted here: {probe.stderr.decode(errors='replace').strip()}"
    return None


def requirements_digest(project_root: Path = PROJECT_ROOT) -> str:
    digest = hashlib.sha256()
    for name in REQUIREMENT_FILES:
        digest.update((project_root / name).read_bytes())
    return digest.hexdigest()[:16]


def pip_commands(target: Path, project_root: Path = PROJECT_ROOT) -> list[list[str]]:
    """The Dockerfile's two pip installs, into `target`."""
    return [[sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "--no-cache-dir", "--no-deps", "--only-binary=:all:", "--require-hashes",
             "--target", str(target), "-r", str(project_root / name)]
            for name in REQUIREMENT_FILES]


def ensure_site(cache_root: Path, project_root: Path = PROJECT_ROOT) -> Path:
    """The image's /opt/enclave/site, installed as the Dockerfile does, once per requirements."""
    site = cache_root / f"site-{requirements_digest(project_root)}"
    if site.is_dir():
        return site
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".site-", dir=cache_root))
    try:
        for command in pip_commands(staging, project_root):
            done = subprocess.run(command, capture_output=True, text=True, timeout=900,
                                  check=False)
            if done.returncode != 0:
                raise ClientError("installing the image's packages failed: "
                                  f"{' '.join(command[3:])}: {done.stderr.strip()[-500:]}")
        # Readable by every app's own user, as the image's /opt/enclave/site is (mkdtemp: 0700).
        os.chmod(staging, 0o755)  # noqa: S103 - packages, no secrets
        try:
            staging.rename(site)
        except OSError:
            if not site.is_dir():  # another process installed the same site first: use it
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return site


def prepare_files(jail_dir: Path, site: Path, ca: Path, nsm_socket: Path,
                  policy: Path | None = None) -> JailPaths:
    jail_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths = JailPaths(root=jail_dir / "root", site=site, ca_bundle=jail_dir / "cacert.pem",
                      hosts=jail_dir / "hosts", resolv_conf=jail_dir / "resolv.conf",
                      usr_layer=jail_dir / "usr-layer",
                      vsock_dir=jail_dir / "vsock", nsm_socket=nsm_socket,
                      policy=policy if policy is not None and policy.is_file() else None)
    paths.root.mkdir(exist_ok=True)
    paths.usr_layer.mkdir(exist_ok=True)
    paths.vsock_dir.mkdir(exist_ok=True, mode=0o700)
    paths.ca_bundle.write_bytes((site / BOTOCORE_CA_BUNDLE).read_bytes() + b"\n" +
                                ca.read_bytes())
    paths.hosts.write_text(LINUXKIT_HOSTS)
    paths.resolv_conf.write_text(LINUXKIT_RESOLV_CONF)
    return paths


HOST_USER_DATA = PROJECT_ROOT / "constructs" / "templates" / "enclave_host_user_data.sh"


def host_allowlist(user_data: str, region: str) -> str:
    """The vsock-proxy allow list the enclave host's user data writes, for `region`."""
    match = re.search(r"<<'ALLOWLIST'\n(.*?\n)ALLOWLIST\n", user_data, re.S)
    if match is None:
        raise ClientError("the enclave host's user data writes no vsock-proxy allow list")
    return match.group(1).replace("{{kms_endpoint}}", kms_hostname(region))


def allowlist_config(path: Path, region: str) -> Path:
    """The host's own allow list (constructs/templates/enclave_host_user_data.sh), written."""
    path.write_text(host_allowlist(HOST_USER_DATA.read_text(), region))
    return path


Spawn = Callable[[str, list[str], Path], dict[str, Any]]
WaitFor = Callable[..., Any]


def start(started: dict[str, dict[str, Any]], *, state_dir: Path, region: str,
          nsm_socket: Path, spawn: Spawn, wait_for: WaitFor, kms_port: Callable[..., Any],
          runtime_healthy: Callable[[Path], bool], enclave_port: int = DEFAULT_ENCLAVE_PORT,
          vsock_proxy_port: int = DEFAULT_VSOCK_PROXY_PORT,
          build_args: dict[str, str] | None = None, policy: Path | None = None) -> Path:
    """Start the KMS's TLS endpoint, the vsock-proxy stand-in and the jail; record them in
    `started` and return the Unix socket standing for the runtime's vsock port. `enclave_port`
    and `vsock_proxy_port` are the host's settings; the image gets its own from its build."""
    reason = unavailable_reason()
    if reason:
        raise JailUnavailable(f"cannot start the emulated enclave: {reason}")
    jail_dir = state_dir / "jail"
    site = ensure_site(PROJECT_ROOT / ".sim" / "image-site")
    hostname = kms_hostname(region)
    tls = ensure_kms_certificate(state_dir, hostname)
    paths = prepare_files(jail_dir, site, tls.ca, nsm_socket,
                          policy if policy is not None else state_dir / "policy.json")

    started["kms_tls"] = spawn("kms-tls", [
        sys.executable, "-m", "client.sim.kms", "--port", "0", "--state", str(state_dir),
        "--tls-certificate", str(tls.certificate), "--tls-key", str(tls.key)], state_dir)
    tls_port = wait_for(started["kms_tls"], lambda: kms_port(started["kms_tls"]),
                        "the local KMS (TLS)")
    started["kms_tls"].update(port=tls_port, module="client.sim.kms")

    proxy_socket = Path(vsock_socket_path(str(paths.vsock_dir), PARENT_CID, vsock_proxy_port))
    proxy_socket.unlink(missing_ok=True)
    started["vsock_proxy"] = spawn("vsock-proxy", [
        sys.executable, "-m", "client.sim.vsock_proxy", "--listen", str(proxy_socket),
        "--config", str(allowlist_config(jail_dir / "vsock-proxy.yaml", region)),
        "--remote", f"{hostname}:443", "--resolve", f"{hostname}=127.0.0.1:{tls_port}"],
        state_dir)
    wait_for(started["vsock_proxy"], proxy_socket.exists, "the vsock-proxy stand-in")
    started["vsock_proxy"].update(socket=str(proxy_socket), module="client.sim.vsock_proxy")

    # The image is built from the same settings as the host side, as the pipeline does.
    args = {"AWS_REGION": region, "ENCLAVE_PORT": str(enclave_port),
            "VSOCK_PROXY_PORT": str(vsock_proxy_port), **(build_args or {})}
    spec = image_spec(DOCKERFILE.read_text(), args)
    plan = jail_plan(paths, spec)
    plan_path = jail_dir / "plan.json"
    plan_path.write_text(json.dumps(plan, indent=2))
    runtime_socket = Path(vsock_socket_path(str(paths.vsock_dir), EMULATED_ENCLAVE_CID,
                                            enclave_port))
    runtime_socket.unlink(missing_ok=True)
    started["runtime"] = spawn("runtime", [
        "unshare", "--mount", "--net", "--pid", "--fork", "--kill-child=SIGTERM",
        sys.executable, "-m", "client.sim.jail_init", str(plan_path)], state_dir)
    started["runtime"].update(module="client.sim.jail_init", jail=True,
                              image_command=spec.argv)
    wait_for(started["runtime"], lambda: runtime_healthy(runtime_socket),
             f"the emulated enclave's runtime on vsock port {enclave_port}")
    return runtime_socket
