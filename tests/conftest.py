"""Shared test setup. `cdk.App()` under pytest does not read cdk.json, so load its context here."""

import json
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = PROJECT_ROOT.parent / "shared" / "fixtures"


def cdk_json_context() -> dict:
    return json.loads((PROJECT_ROOT / "cdk.json").read_text())["context"]


@pytest.fixture
def context() -> dict:
    """A fresh copy of cdk.json's context, for tests to override keys in."""
    return cdk_json_context()


@pytest.fixture(autouse=True)
def no_host_settings(tmp_path, monkeypatch):
    """Built-in client defaults, even on an enclave host that has /etc/sealed-enclave/host.json.

    Tests of the host configuration itself point `DEFAULT_PATH` or `SEALED_HOST_CONFIG` at their
    own files after this runs.
    """
    from client import hostconfig

    monkeypatch.setattr(hostconfig, "DEFAULT_PATH", tmp_path / "no-host.json")
    monkeypatch.delenv("SEALED_HOST_CONFIG", raising=False)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"reference fixtures missing: expected {FIXTURES}")
    return FIXTURES
