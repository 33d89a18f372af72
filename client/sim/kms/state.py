"""The local KMS's state files: `<state>/kms/keys.json` (keys and aliases, mode 0600) and
`<state>/principals.json` (access key id -> principal ARN), shared by every process using the same
state directory under one lock."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEFAULT_ACCOUNT = "111111111111"
DEFAULT_REGION = "us-east-1"
_thread_lock = threading.Lock()


def register_principal(state_dir: Path, access_key_id: str, principal_arn: str) -> None:
    """Map an access key id to the principal ARN the simulation treats its caller as."""
    path = Path(state_dir) / "principals.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(Path(state_dir)):
        principals = json.loads(path.read_text()) if path.exists() else {}
        principals[access_key_id] = principal_arn
        atomic_write(path, json.dumps(principals, indent=2, sort_keys=True).encode())


@contextlib.contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    (state_dir / "kms").mkdir(parents=True, exist_ok=True, mode=0o700)
    with _thread_lock, open(state_dir / "kms" / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


class KmsState:
    """keys.json: {"account", "keys": {id: {...}}, "aliases": {name: id}}; read per request."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / "kms" / "keys.json"

    def load(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"account": DEFAULT_ACCOUNT, "keys": {}, "aliases": {}}
        data: dict[str, Any] = json.loads(self.path.read_text())
        return data

    def save(self, data: dict[str, Any]) -> None:
        atomic_write(self.path, json.dumps(data, indent=2, sort_keys=True).encode())

    def principals(self) -> dict[str, str]:
        path = self.state_dir / "principals.json"
        return json.loads(path.read_text()) if path.exists() else {}
