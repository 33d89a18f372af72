"""Name resolution inside the enclave: the KMS host name must lead to the in-enclave bridge.

nitro-cli builds the EIF with linuxkit, which replaces the image's /etc/hosts with a
localhost-only file and writes an empty resolv.conf, so whatever the Dockerfile put there is gone
and `kms.<region>.amazonaws.com` resolves nowhere. The runtime therefore maps that name to
127.0.0.1, where enclave/bridge.py listens, when it starts. boto3 keeps using the real host name,
so TLS still checks KMS's certificate for it (SNI and hostname verification are unchanged).

`hosts_with_names` decides (pure); `map_names_to_bridge` reads and rewrites the file in place (in
the emulated enclave /etc/hosts is a bind mount, which cannot be replaced by a rename).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

HOSTS_FILE = Path("/etc/hosts")
BRIDGE_ADDRESS = "127.0.0.1"


def endpoint_hostname(kms_endpoint: str, region: str) -> str:
    """The host name of the KMS endpoint template for `region`."""
    host = urlsplit(kms_endpoint.replace("{region}", region)).hostname
    if not host:
        raise ValueError(f"KMS endpoint {kms_endpoint!r} names no host")
    return host


def hosts_with_names(hosts: str, names: list[str], address: str = BRIDGE_ADDRESS) -> str:
    """`hosts` with one `address name` line added for each name it does not map to `address`."""
    mapped: set[str] = set()
    for line in hosts.splitlines():
        fields = line.split("#", 1)[0].split()
        if fields and fields[0] == address:
            mapped.update(name.lower() for name in fields[1:])
    missing = [name for name in dict.fromkeys(n.lower() for n in names) if name not in mapped]
    if not missing:
        return hosts
    prefix = hosts if not hosts or hosts.endswith("\n") else hosts + "\n"
    return prefix + "".join(f"{address}\t{name}\n" for name in missing)


def map_names_to_bridge(names: list[str], hosts_file: Path = HOSTS_FILE) -> bool:
    """Add the names to `hosts_file`; True when the file changed."""
    try:
        current = hosts_file.read_text()
    except FileNotFoundError:
        current = ""
    wanted = hosts_with_names(current, names)
    if wanted == current:
        return False
    with hosts_file.open("w") as handle:  # in place: the file may be a mount point
        handle.write(wanted)
    return True
