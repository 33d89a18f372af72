"""`python -m enclave serve`: the enclave runtime's entry point.

    python -m enclave serve (--vsock | --vsock-port PORT | --unix PATH) --exchange DIR --private DIR
        --policy FILE [--nsm-device PATH] [--kms-endpoint URL] [limits...]

The enclave image runs `production_argv()` (containers/Dockerfile's CMD, checked by a test); the
local simulation runs `simulation_argv(...)`, the same command with the transport, paths and
endpoints replaced, so what is tested locally is what the image starts.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import signal
import socket
import stat
import struct
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from enclave.config import ConfigError, GiB, KiB, RuntimeConfig
from enclave.isolation import harden_runtime, isolation_available, restrict_device
from enclave.nsm import NSM_TRANSPORTS, NsmClient
from enclave.policy import PolicyError, load_policy

# The image's interpreter, by absolute path: the enclave init looks a bare `python3` up on
# /sbin:/usr/sbin:/bin:/usr/bin, where Amazon Linux 2023 has Python 3.9.
IMAGE_PYTHON = "/usr/bin/python3.11"
# What the image bakes in from its build arguments (containers/Dockerfile ENV), which the
# pipeline takes from the same context keys as the host: Region, EnclavePort, VsockProxyPort.
# Where KMS is comes from the image policy; the image's region must agree with it.
IMAGE_REGION_ENV = "ENCLAVE_REGION"
IMAGE_PORT_ENV = "ENCLAVE_PORT"
IMAGE_PROXY_PORT_ENV = "ENCLAVE_KMS_PROXY_PORT"
VSOCK_PORT = 5005
PARENT_CID = 3  # the parent instance, where vsock-proxy listens
KMS_PROXY_PORT = 8000  # vsock-proxy's port for KMS (runbook: `vsock-proxy 8000 kms...`)

# The production command line, in this order: (option, value or None for a flag).
_PRODUCTION_OPTIONS: tuple[tuple[str, str | None], ...] = (
    ("--vsock", None),
    ("--exchange", "/run/exchange"),
    ("--private", "/run/sealed"),
    ("--nsm-device", "/dev/nsm"),
    ("--kms-endpoint", "https://kms.{region}.amazonaws.com"),
    ("--policy", "/opt/enclave/policy.json"),
)


def production_argv() -> list[str]:
    """The exact command the enclave image runs (its Dockerfile CMD)."""
    argv = [IMAGE_PYTHON, "-m", "enclave", "serve"]
    for option, value in _PRODUCTION_OPTIONS:
        argv += [option] if value is None else [option, value]
    return argv


def simulation_argv(*, socket_path: str | os.PathLike[str], exchange: str | os.PathLike[str],
                    private: str | os.PathLike[str], nsm_device: str | os.PathLike[str],
                    kms_endpoint: str, policy: str | os.PathLike[str],
                    python: str = sys.executable, app_interpreter: str | None = None,
                    app_site: str | os.PathLike[str] | None = None,
                    app_uid_base: int | None = None) -> list[str]:
    """`production_argv()` with only the transport, paths and endpoints replaced.

    Outside an image (plain simulation) the image's interpreter and packages may live elsewhere:
    `app_interpreter` and `app_site` then name them (appended options; the image uses defaults).
    """
    replacements = {
        "--vsock": ("--unix", str(socket_path)),
        "--exchange": ("--exchange", str(exchange)),
        "--private": ("--private", str(private)),
        "--nsm-device": ("--nsm-device", str(nsm_device), "--nsm-transport", "simulation"),
        "--kms-endpoint": ("--kms-endpoint", kms_endpoint),
        "--policy": ("--policy", str(policy)),
    }
    argv = [python, *production_argv()[1:4]]
    for option, _value in _PRODUCTION_OPTIONS:
        argv += list(replacements[option])
    if app_interpreter is not None:
        argv += ["--app-interpreter", app_interpreter]
    if app_site is not None:
        argv += ["--app-site", str(app_site)]
    if app_uid_base is not None:
        argv += ["--app-uid-base", str(app_uid_base)]
    return argv


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m enclave",
                                     description="The sealed-application enclave runtime.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve the runtime API",
                                description="Serve the runtime HTTP API (enclave/openapi.yaml).")
    where = serve.add_mutually_exclusive_group(required=True)
    where.add_argument("--vsock", action="store_true",
                       help=f"listen on AF_VSOCK, port ${IMAGE_PORT_ENV} (the image's; default "
                            f"{VSOCK_PORT}) (enclave)")
    where.add_argument("--vsock-port", type=int, help="listen on this AF_VSOCK port (enclave)")
    where.add_argument("--unix", metavar="PATH", help="listen on this Unix socket (simulation)")
    serve.add_argument("--exchange", required=True, metavar="DIR",
                       help="exchange root: inbox/ and outbox/ are created under it")
    serve.add_argument("--private", required=True, metavar="DIR",
                       help="root for private run directories (outside --exchange; RAM)")
    serve.add_argument("--nsm-device", default="/dev/nsm", metavar="PATH",
                       help="NSM device, or the simulated NSM's Unix socket with "
                            "--nsm-transport simulation (default /dev/nsm)")
    serve.add_argument("--nsm-transport", choices=NSM_TRANSPORTS, default="device",
                       help="how to reach the NSM: the device's ioctl (default, the enclave), or "
                            "the simulated NSM's Unix socket (simulation and emulated enclave)")
    serve.add_argument("--kms-endpoint", default="https://kms.{region}.amazonaws.com",
                       metavar="URL", help="KMS endpoint; {region} is replaced per run")
    serve.add_argument("--policy", required=True, metavar="FILE",
                       help="the image policy (enclave/policy.py, written into the image by "
                            "`python -m enclave.policy write`): which keys, apps and versions "
                            "this image unseals, and its KMS region; the runtime does not start "
                            "without it")
    serve.add_argument("--app-interpreter", default=IMAGE_PYTHON, metavar="PATH",
                       help=f"the interpreter apps run with (default: the image's {IMAGE_PYTHON})")
    serve.add_argument("--app-site", default="/opt/enclave/site", metavar="DIR",
                       help="the image's packages, apps' PYTHONPATH (default /opt/enclave/site)")
    serve.add_argument("--app-uid-base", type=int, default=None, metavar="UID",
                       help="first of the user ids runs get (default: a random 4096-aligned "
                            "block above 2^20, so runtimes sharing a kernel, as simulations do, "
                            "never share app users)")
    serve.add_argument("--max-connections", type=int, default=32)
    serve.add_argument("--max-upload-bytes", type=int, default=64 * GiB)
    serve.add_argument("--max-json-bytes", type=int, default=64 * KiB)
    serve.add_argument("--header-timeout", type=float, default=30.0,
                       help="seconds for a whole request head, keep-alive idle included")
    serve.add_argument("--io-timeout", type=float, default=60.0,
                       help="seconds any single read or write may take")
    serve.add_argument("--max-active-runs", type=int, default=4)
    serve.add_argument("--kms-proxy-port", type=int, default=None,
                       help="vsock port of the parent's KMS vsock-proxy (with --vsock; default "
                            f"${IMAGE_PROXY_PORT_ENV}, the image's, else {KMS_PROXY_PORT})")
    serve.add_argument("--no-kms-bridge", action="store_true",
                       help="do not start the in-enclave KMS bridge (with --vsock-port)")
    serve.add_argument("--emulate-vsock-dir", metavar="DIR",
                       help="emulated enclave only (enclave/emulation.py): every vsock address "
                            "is a Unix socket in DIR")
    return parser


def image_ports(environ: Mapping[str, str]) -> tuple[int, int]:
    """(runtime port, vsock-proxy port) the image was built with, or the defaults."""
    ports = []
    for name, default in ((IMAGE_PORT_ENV, VSOCK_PORT), (IMAGE_PROXY_PORT_ENV, KMS_PROXY_PORT)):
        text = environ.get(name) or str(default)
        if not text.isdigit() or not 1024 <= int(text) <= 65535:
            raise ConfigError(f"${name}={text!r} is not a port: the image must be built with "
                              "a port 1024..65535 (EnclavePort / VsockProxyPort)")
        ports.append(int(text))
    return ports[0], ports[1]


def check_image_region(policy_region: str, environ: Mapping[str, str]) -> None:
    """The image's region build argument and its policy's region come from the same setting;
    if they differ the image was built wrong, and runs would reach another KMS than pinned."""
    image_region = environ.get(IMAGE_REGION_ENV)
    if image_region and image_region != policy_region:
        raise ConfigError(f"${IMAGE_REGION_ENV}={image_region} but the image policy's region is "
                          f"{policy_region}: rebuild the image with one region")


def config_from_args(args: argparse.Namespace) -> RuntimeConfig:
    return RuntimeConfig(
        exchange_root=Path(args.exchange),
        private_root=Path(args.private),
        nsm_device=args.nsm_device,
        kms_endpoint=args.kms_endpoint,
        image_policy=load_policy(args.policy),
        app_interpreter=args.app_interpreter,
        app_site=args.app_site,
        max_connections=args.max_connections,
        max_upload_bytes=args.max_upload_bytes,
        max_json_bytes=args.max_json_bytes,
        header_timeout=args.header_timeout,
        io_timeout=args.io_timeout,
        max_active_runs=args.max_active_runs,
        app_uid_base=args.app_uid_base,
    )


def bind_unix(path: str) -> socket.socket:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # a stale socket from an earlier run
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket is created 0600: only this user may connect
    try:
        sock.bind(path)
    finally:
        os.umask(old_umask)
    sock.listen(64)  # from here on, clients queue instead of being refused while we start
    return sock


def bind_vsock(port: int, emulate_dir: str | None = None) -> socket.socket:
    """Listen on AF_VSOCK `port`, or on its Unix socket stand-in in the emulated enclave."""
    if emulate_dir is not None:
        from enclave.emulation import EMULATED_ENCLAVE_CID, vsock_socket_path

        return bind_unix(vsock_socket_path(emulate_dir, EMULATED_ENCLAVE_CID, port))
    return listen_vsock(port)


def listen_vsock(port: int) -> socket.socket:  # pragma: no cover - hardware: AF_VSOCK
    sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    sock.bind((socket.VMADDR_CID_ANY, port))
    sock.listen(64)
    return sock


def unix_upstream(path: str) -> Any:
    """The bridge's connection to the parent's vsock-proxy, in the emulated enclave."""
    def connect() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10.0)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        return sock
    return connect


def bring_up_loopback() -> None:
    """An enclave boots with `lo` down; the KMS bridge listens on 127.0.0.1."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), siocgifflags, request))[1]
        if not flags & iff_up:
            fcntl.ioctl(s.fileno(), siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


def resolve_kms_to_bridge(kms_endpoint: str, region: str | None,
                          hosts_file: Path | None = None) -> None:
    """linuxkit leaves a localhost-only /etc/hosts: map the KMS host name to the bridge."""
    log = logging.getLogger("enclave")
    if not region:
        log.warning("no region: the KMS host name is not mapped to the bridge and KMS is "
                    "unreachable")
        return
    from enclave.resolution import HOSTS_FILE, endpoint_hostname, map_names_to_bridge

    name = endpoint_hostname(kms_endpoint, region)
    try:
        map_names_to_bridge([name], hosts_file or HOSTS_FILE)
    except OSError as exc:
        log.warning("could not map %s to the KMS bridge in /etc/hosts: %s", name, exc)
        return
    log.info("KMS: %s resolves to the bridge on 127.0.0.1", name)


def start_kms_bridge(proxy_port: int, emulate_dir: str | None = None) -> Any:
    """Start enclave.bridge's forwarder (127.0.0.1:443 -> parent vsock-proxy) if it exists."""
    try:
        from enclave import bridge
    except ImportError:
        logging.getLogger("enclave").warning("enclave.bridge is missing: KMS is unreachable")
        return None
    upstream = None
    if emulate_dir is not None:
        from enclave.emulation import vsock_socket_path

        upstream = unix_upstream(vsock_socket_path(emulate_dir, PARENT_CID, proxy_port))
    try:
        return bridge.start(local_port=443, parent_cid=PARENT_CID, parent_port=proxy_port,
                            connect_upstream=upstream)
    except OSError as exc:  # keep serving: attestation and files still work, runs will say why
        logging.getLogger("enclave").warning("KMS bridge did not start: %s", exc)
        return None


def serve(args: argparse.Namespace) -> int:
    from enclave.server import make_server

    config = config_from_args(args)
    if config.image_policy is not None:
        check_image_region(config.image_policy.region, os.environ)
    harden_runtime()
    if isolation_available():
        try:
            restrict_device(config.nsm_device)  # applications never reach the NSM
        except OSError as exc:
            logging.getLogger("enclave").warning("could not restrict %s: %s",
                                                 config.nsm_device, exc)
    nsm = NsmClient(config.nsm_device, transport=args.nsm_transport)
    sock, where = _listen(args, config)
    server = make_server(sock, config=config, nsm=nsm)

    def stop(signum: int, _frame: Any) -> None:
        # shutdown() waits for serve_forever() to return: call it off the main thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"enclave runtime serving on {where}", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.runner.shutdown(timeout=10)  # cancel runs, so their plaintext is wiped
        if server.services is not None:
            server.services.shutdown(timeout=10)  # stop services, wiping theirs
        server.server_close()
        if args.unix:
            try:
                os.unlink(args.unix)
            except OSError:
                pass
    return 0


def _listen(args: argparse.Namespace, config: RuntimeConfig) -> tuple[socket.socket, str]:
    """The bound listening socket and where it is: vsock (with the enclave's loopback and KMS
    bridge brought up first) or a Unix socket."""
    if args.vsock or args.vsock_port is not None:
        ports = image_ports(os.environ)
        args.vsock_port = args.vsock_port or ports[0]
        args.kms_proxy_port = args.kms_proxy_port or ports[1]
        try:
            bring_up_loopback()
        except OSError as exc:
            logging.getLogger("enclave").warning("could not bring up lo: %s", exc)
        if not args.no_kms_bridge:
            policy = config.image_policy
            resolve_kms_to_bridge(args.kms_endpoint, policy.region if policy else None)
            start_kms_bridge(args.kms_proxy_port, args.emulate_vsock_dir)
        sock = bind_vsock(args.vsock_port, args.emulate_vsock_dir)
        where = f"vsock port {args.vsock_port}"
    else:
        sock = bind_unix(args.unix)
        where = f"unix:{args.unix}"
    return sock, where


def main(argv: Sequence[str] | None = None) -> int:
    # Only the runtime's own event lines at INFO: libraries' INFO lines (encryption contexts,
    # credential sources) are not the host's business.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s",
                        stream=sys.stderr)
    logging.getLogger("enclave").setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    try:
        return serve(args)
    except (ConfigError, PolicyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot start the runtime: {exc}; check the socket and directories",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
