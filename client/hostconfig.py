"""The enclave host's settings, written by HostStack's user data to `/etc/sealed-enclave/host.json`.

The client reads them as defaults (region, ports, enclave size, where the pipeline's image is);
a command-line option always wins. `$SEALED_HOST_CONFIG` names another file (the `sealed-client`
wrapper sets it). Off the host (a laptop, the simulation) there is no file and nothing changes.

The file is written by this project's own bootstrap, so an unknown or missing key is refused
rather than ignored: it means the user data and the client have drifted apart.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from client.errors import UsageError

DEFAULT_PATH = Path("/etc/sealed-enclave/host.json")
ENVIRONMENT_VARIABLE = "SEALED_HOST_CONFIG"


@dataclass(frozen=True)
class HostConfig:
    region: str
    kms_endpoint: str
    enclave_key_arn: str | None  # None until the third party's key is known
    vsock_proxy_port: int
    enclave_port: int
    enclave_cpu_count: int
    enclave_memory_mib: int
    bucket: str
    encrypted_app_prefix: str
    enclave_image_prefix: str
    app_id: str

    @property
    def enclave_image_url(self) -> str:
        """Where the pipeline uploads the image (its measurements: same key, `.json`)."""
        return f"s3://{self.bucket}/{self.enclave_image_prefix}{self.app_id}.eif"


# Expected JSON type of each field; ints must be positive, strings non-empty.
_TYPES: dict[str, tuple[type, bool]] = {  # name -> (type, may be null)
    "region": (str, False),
    "kms_endpoint": (str, False),
    "enclave_key_arn": (str, True),
    "vsock_proxy_port": (int, False),
    "enclave_port": (int, False),
    "enclave_cpu_count": (int, False),
    "enclave_memory_mib": (int, False),
    "bucket": (str, False),
    "encrypted_app_prefix": (str, False),
    "enclave_image_prefix": (str, False),
    "app_id": (str, False),
}
KEYS = frozenset(field.name for field in fields(HostConfig))


def config_path() -> tuple[Path, bool]:
    """The file to read, and whether the user named it explicitly (`$SEALED_HOST_CONFIG`)."""
    named = os.environ.get(ENVIRONMENT_VARIABLE)
    return (Path(named), True) if named else (DEFAULT_PATH, False)


def load_host_config() -> HostConfig | None:
    """The host's settings, or None when there is no host file (not an enclave host).

    A file named by `$SEALED_HOST_CONFIG` that does not exist is an error, not silence: the
    variable says the settings should be there.
    """
    path, explicit = config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        if explicit:
            raise UsageError(f"{ENVIRONMENT_VARIABLE} names {path}, which does not exist; fix "
                             f"the path or unset {ENVIRONMENT_VARIABLE}") from None
        return None
    except OSError as exc:
        raise UsageError(f"cannot read host settings {path}: {exc.strerror}; check its "
                         "permissions (the bootstrap writes it 0644)") from exc
    return parse_host_config(text, path)


def parse_host_config(text: str, path: Path | str = DEFAULT_PATH) -> HostConfig:
    where = f"host settings {path}"
    try:
        data: Any = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{where} is not valid JSON ({exc}); rerun the host bootstrap or fix "
                         "the file") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{where} must be a JSON object, not {type(data).__name__}")
    unknown, missing = sorted(set(data) - KEYS), sorted(KEYS - set(data))
    if unknown or missing:
        problems = ([f"unknown keys {unknown}"] if unknown else []) + \
                   ([f"missing keys {missing}"] if missing else [])
        raise UsageError(f"{where} has {' and '.join(problems)}; expected exactly "
                         f"{sorted(KEYS)}: the file and this client come from different "
                         "versions, redeploy HostStack or update the client")
    for name, (kind, nullable) in _TYPES.items():
        value = data[name]
        if value is None and nullable:
            continue
        if kind is int:
            valid = isinstance(value, int) and not isinstance(value, bool) and value > 0
            expected = "a positive integer"
        else:
            valid = isinstance(value, str) and bool(value)
            expected = "a non-empty string" + (" or null" if nullable else "")
        if not valid:
            raise UsageError(f"{where}: {name} is {json.dumps(value)}, expected {expected}")
    return HostConfig(**data)
