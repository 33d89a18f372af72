"""A stand-in for the parent's `vsock-proxy`, in front of the local KMS (emulated enclave only).

    python -m client.sim.vsock_proxy --listen SOCKET --config vsock-proxy.yaml \\
        --remote kms.us-east-1.amazonaws.com:443 \\
        --resolve kms.us-east-1.amazonaws.com=127.0.0.1:PORT

Like vsock-proxy it forwards every connection, byte for byte, to one remote (host, port), and
refuses to start unless that remote is on the allow list of its configuration file (the same
`allowlist: [{address, port}]` YAML the enclave host writes). It listens on the Unix socket that
stands for (CID 3, VsockProxyPort) and serves at most `--workers` connections at once (vsock-proxy's
default is 4). The one thing the real proxy does differently is name resolution: it asks DNS; this
one takes the address from `--resolve` (the local KMS's TLS port; enclave/emulation.py).
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from enclave.bridge import Bridge

DEFAULT_WORKERS = 4


class ProxyRefused(Exception):
    """The configuration does not allow the requested remote."""


def allowed_remotes(config: Any) -> set[tuple[str, int]]:
    """(address, port) pairs of a vsock-proxy configuration's allow list."""
    if not isinstance(config, dict) or not isinstance(config.get("allowlist"), list):
        raise ProxyRefused("the configuration has no `allowlist:` list")
    remotes = set()
    for entry in config["allowlist"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("address"), str) \
                or not isinstance(entry.get("port"), int):
            raise ProxyRefused(f"allow list entry {entry!r} is not {{address, port}}")
        remotes.add((entry["address"].lower(), entry["port"]))
    return remotes


def check_remote(remote: tuple[str, int], allowed: set[tuple[str, int]]) -> None:
    if (remote[0].lower(), remote[1]) not in allowed:
        listed = ", ".join(f"{a}:{p}" for a, p in sorted(allowed)) or "nothing"
        raise ProxyRefused(f"remote {remote[0]}:{remote[1]} is not on the allow list "
                           f"(it allows {listed})")


def parse_host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> int:
    import yaml

    parser = argparse.ArgumentParser(prog="python -m client.sim.vsock_proxy",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="Unix socket standing for (3, port)")
    parser.add_argument("--config", required=True, type=Path, help="allow-list YAML")
    parser.add_argument("--remote", required=True, type=parse_host_port, help="HOST:PORT")
    parser.add_argument("--resolve", required=True, help="HOST=ADDRESS:PORT for the remote")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    args = parser.parse_args(argv)
    name, _, target = args.resolve.partition("=")
    if name.lower() != args.remote[0].lower():
        parser.error(f"--resolve names {name}, not the remote {args.remote[0]}")
    address = parse_host_port(target)
    try:
        check_remote(args.remote, allowed_remotes(yaml.safe_load(args.config.read_text())))
    except ProxyRefused as exc:
        print(f"vsock-proxy: {exc}", file=sys.stderr)
        return 1

    def connect() -> socket.socket:
        upstream = socket.create_connection(address, timeout=10)
        print(f"forwarding a connection to {args.remote[0]}:{args.remote[1]}", flush=True)
        return upstream

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    Path(args.listen).unlink(missing_ok=True)
    listener.bind(args.listen)
    listener.listen(16)
    print(f"vsock-proxy stand-in: {args.listen} -> {args.remote[0]}:{args.remote[1]} "
          f"({address[0]}:{address[1]})", flush=True)
    try:
        Bridge(listener, connect, max_connections=args.workers).serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
