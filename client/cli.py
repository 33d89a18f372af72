"""`python -m client`: argument parsing and the mapping from exceptions to exit codes.

Each command lives in its own module under `client/commands/` and exposes
`register(subparsers, parents)`, which adds its parser and sets `func` to a callable
`(args) -> int`. `main(argv)` is the only place that turns exceptions into exit codes.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from client import commands
from client.errors import ClientError, ExitStatus


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def global_options() -> argparse.ArgumentParser:
    """Options every command accepts, before or after the command name."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="machine-readable output on stdout")
    parent.add_argument("--cid", type=int, default=argparse.SUPPRESS,
                        help="enclave CID (default: the one running enclave)")
    parent.add_argument("--port", type=int, default=argparse.SUPPRESS,
                        help="enclave runtime vsock port (default: the host settings' "
                             "enclave_port, else 5005)")
    parent.add_argument("--socket", default=argparse.SUPPRESS,
                        help="talk to a runtime on this Unix socket (local simulation)")
    parent.add_argument("--region", default=argparse.SUPPRESS,
                        help="AWS region (default: AWS_REGION or AWS_DEFAULT_REGION, then "
                             "the host settings file (/etc/sealed-enclave/host.json or "
                             "$SEALED_HOST_CONFIG), then IMDSv2)")
    parent.add_argument("--timeout", type=positive_seconds, default=argparse.SUPPRESS,
                        help="seconds to wait for the runtime to answer one request (default 30)")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parents = [global_options()]
    parser = argparse.ArgumentParser(
        prog="python -m client",
        description="Run sealed third-party applications in an AWS Nitro Enclave.",
        parents=parents,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):  # shared helpers, not commands
            continue
        module = importlib.import_module(f"{commands.__name__}.{module_info.name}")
        module.register(subparsers, parents)
    return parser


def apply_global_defaults(args: argparse.Namespace) -> argparse.Namespace:
    for name, default in (("json", False), ("cid", None), ("port", None), ("socket", None),
                          ("region", None), ("timeout", 30.0)):
        if not hasattr(args, name):
            setattr(args, name, default)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = apply_global_defaults(parser.parse_args(argv))
    except SystemExit as exc:  # argparse already printed its usage message
        return int(exc.code) if isinstance(exc.code, int) else ExitStatus.USAGE
    try:
        return int(args.func(args))
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(exc.status)
    except OSError as exc:  # a local file or process problem the logic did not anticipate
        print(f"error: {exc}", file=sys.stderr)
        return int(ExitStatus.ERROR)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return int(ExitStatus.INTERRUPTED)
