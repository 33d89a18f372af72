"""Shared test setup. `cdk.App()` under pytest does not read cdk.json, so load its context here."""

import json
import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# `make mutate` runs the tests from a copy of the project in mutants/: it names the fixtures.
FIXTURES = Path(os.environ.get("SEALED_FIXTURES_DIR", PROJECT_ROOT.parent / "shared" / "fixtures"))


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


@pytest.fixture(scope="session")
def synthesized_cdk_out(tmp_path_factory) -> Path:
    """Both stacks synthesized once per session (in-process), as `make synth` writes them."""
    import aws_cdk as cdk

    from app import build_app

    outdir = tmp_path_factory.mktemp("cdk.out")
    build_app(cdk.App(context=cdk_json_context(), outdir=str(outdir))).synth()
    return outdir


@pytest.fixture(scope="session")
def third_party_template_path(synthesized_cdk_out: Path) -> Path:
    return synthesized_cdk_out / "ThirdPartyStack.template.json"


@pytest.fixture
def exchange_runtime(tmp_path):
    """The real runtime server on a Unix socket (tests/runtime_harness.py), for client tests."""
    from tests.runtime_harness import start_runtime, stop_runtime

    runtime = start_runtime(tmp_path)
    yield runtime
    stop_runtime(runtime)


def pytest_collection_modifyitems(items):
    """A test that needs a real FUSE mount (it asks for `fuse_usable`) carries the `fuse` mark."""
    for item in items:
        if "fuse_usable" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.fuse)
