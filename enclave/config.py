"""`RuntimeConfig`: everything the enclave runtime is told at start-up, in one validated object.

Built by `python -m enclave serve` from its command line (`enclave/__main__.py`); tests build it
directly. Holds no secrets: AWS credentials arrive with each run request and are never stored here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from enclave.policy import ImagePolicy

RUNTIME_VERSION = "1.0.0"

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


class ConfigError(ValueError):
    """A start-up setting is unusable; the message names it and what is expected."""


@dataclass(frozen=True)
class RuntimeConfig:
    exchange_root: Path
    private_root: Path
    nsm_device: str = "/dev/nsm"
    # `{region}` is replaced by the image policy's region. In the enclave the host name resolves
    # to 127.0.0.1, where the bridge forwards to the host's vsock-proxy.
    kms_endpoint: str = "https://kms.{region}.amazonaws.com"
    max_connections: int = 32
    max_upload_bytes: int = 64 * GiB
    max_json_bytes: int = 64 * KiB
    max_request_line_bytes: int = 8 * KiB
    max_header_bytes: int = 16 * KiB
    header_timeout: float = 30.0  # whole request head, including keep-alive idle time
    io_timeout: float = 60.0  # any single read or write on a connection
    max_active_runs: int = 4
    max_kept_runs: int = 1000
    # What this image may unseal (enclave/policy.py); None refuses every run.
    image_policy: ImagePolicy | None = None
    # Runs take numeric user ids base .. base + max_active_runs - 1 (no file of the image has
    # them). None: a random block high above any real user, so that runtimes sharing a machine
    # (simulations, tests) never take, or kill, each other's app users.
    app_uid_base: int | None = None
    # What applications get from the image (enclave/image.py): the interpreter an entrypoint's
    # `python3` means (by absolute path, as the image's CMD names it), its packages, its PATH.
    app_interpreter: str = "/usr/bin/python3.11"
    app_site: str = "/opt/enclave/site"
    app_path: str = "/usr/local/bin:/usr/bin:/bin"
    version: str = RUNTIME_VERSION

    def __post_init__(self) -> None:
        exchange = Path(self.exchange_root).resolve()
        private = Path(self.private_root).resolve()
        object.__setattr__(self, "exchange_root", exchange)
        object.__setattr__(self, "private_root", private)
        # The plaintext directory must be unreachable through the exchange API: neither may
        # contain the other.
        if exchange == private or exchange in private.parents or private in exchange.parents:
            raise ConfigError(
                f"private root {private} and exchange root {exchange} overlap; "
                "give two separate directories, e.g. --exchange /run/exchange --private /run/sealed"
            )
        for name in ("max_connections", "max_upload_bytes", "max_json_bytes",
                     "max_request_line_bytes", "max_header_bytes", "max_active_runs",
                     "max_kept_runs"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be a positive integer")
        for name in ("header_timeout", "io_timeout"):
            if not float(getattr(self, name)) > 0:
                raise ConfigError(f"{name} must be a positive number of seconds")

    def kms_endpoint_for(self, region: str) -> str:
        return self.kms_endpoint.replace("{region}", region)
