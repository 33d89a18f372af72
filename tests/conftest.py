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


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"reference fixtures missing: expected {FIXTURES}")
    return FIXTURES
