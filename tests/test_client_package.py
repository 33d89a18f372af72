"""The client as a package: pyproject metadata, the wheel the hosts get, its hashed dependencies,
and `pip install .` into a fresh virtualenv giving a `sealed-client` that works from /tmp."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from constructs import client_package
from constructs.client_package import HOST_REQUIREMENTS, PACKAGE_SOURCES, build_client_wheel

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
# The enclave hosts: Amazon Linux 2023 on Graviton, python3.11.
HOST_ENVIRONMENT = {**default_environment(), "sys_platform": "linux", "platform_system": "Linux",
                    "platform_machine": "aarch64", "python_version": "3.11",
                    "platform_python_implementation": "CPython", "implementation_name": "cpython",
                    "extra": ""}
ATTESTATION = "nitro/att_3.cbor"
ATTESTATION_PCR0 = ("d265a83faa7b4fa0d73b82b6d06253e894445922937d0ee5a74fe4891da98176"
                    "11a71e71b98e5329232902de3cf419af")


def pins(text: str) -> dict[str, str]:
    """name -> version of every `name==version` requirement (continuation lines joined)."""
    found = {}
    for line in text.replace("\\\n", " ").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            requirement = Requirement(line.split(" --hash", 1)[0].strip())
            (specifier,) = requirement.specifier
            found[requirement.name.lower()] = specifier.version
    return found


def host_requirement_lines() -> list[str]:
    text = HOST_REQUIREMENTS.read_text().replace("\\\n", " ")
    return [" ".join(line.split()) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


# ---- metadata ---------------------------------------------------------------------------------


def test_console_script_is_the_clients_main():
    assert PYPROJECT["project"]["scripts"] == {"sealed-client": "client.cli:main"}


def test_dependencies_are_pinned_as_in_requirements_txt():
    dependencies = [Requirement(d) for d in PYPROJECT["project"]["dependencies"]]
    assert all(str(d.specifier).startswith("==") for d in dependencies)
    project = pins((PROJECT_ROOT / "requirements.txt").read_text())
    assert {d.name.lower(): str(d.specifier)[2:] for d in dependencies} == {
        d.name.lower(): project[d.name.lower()] for d in dependencies}


def test_build_backend_is_pinned_as_in_requirements_txt():
    (backend,) = PYPROJECT["build-system"]["requires"]
    pinned = pins((PROJECT_ROOT / "requirements.txt").read_text())["setuptools"]
    assert backend == f"setuptools=={pinned}"


# ---- the hashed dependencies the host installs --------------------------------------------------


def test_every_host_requirement_is_pinned_and_hashed():
    for line in host_requirement_lines():
        assert re.fullmatch(r"[a-z0-9-]+==[^ ]+( --hash=sha256:[0-9a-f]{64})+", line), line


def test_host_requirements_pin_the_project_dependencies():
    host = pins(HOST_REQUIREMENTS.read_text())
    for dependency in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(dependency)
        assert host[requirement.name.lower()] == str(requirement.specifier)[2:]


def test_host_requirements_are_the_tested_versions_and_complete_for_the_host():
    """Every dependency, down to the leaves, as the host evaluates markers, is listed, at the
    version requirements.txt pins and the tests run with (pip refuses an incomplete hashed
    list on the host, too late)."""
    host = pins(HOST_REQUIREMENTS.read_text())
    project = pins((PROJECT_ROOT / "requirements.txt").read_text())
    seen: set[str] = set()
    todo = [Requirement(d).name.lower() for d in PYPROJECT["project"]["dependencies"]]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        assert name in host, f"{name} is needed on the host but not in {HOST_REQUIREMENTS.name}"
        assert host[name] == project[name] == importlib.metadata.version(name), name
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(HOST_ENVIRONMENT):
                todo.append(requirement.name.lower().replace("_", "-"))
    assert set(host) == seen, f"not needed on the host: {sorted(set(host) - seen)}"


# ---- the wheel ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel():
    return build_client_wheel()


def test_wheel_holds_the_client_the_runtime_and_their_data_only(wheel):
    names = zipfile.ZipFile(wheel.path).namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert top == {"client", "enclave", "sealed_enclave-0.1.0.dist-info"}
    assert {"client/data/aws_nitro_root_g1.pem", "enclave/openapi.yaml",
            "client/commands/run.py", "client/sim/nsm.py"} <= set(names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_wheel_declares_the_console_script_and_pinned_dependencies(wheel):
    archive = zipfile.ZipFile(wheel.path)
    entry_points = archive.read("sealed_enclave-0.1.0.dist-info/entry_points.txt").decode()
    assert "sealed-client = client.cli:main" in entry_points
    metadata = archive.read("sealed_enclave-0.1.0.dist-info/METADATA").decode()
    requires = {line.split(": ", 1)[1] for line in metadata.splitlines()
                if line.startswith("Requires-Dist: ")}
    assert requires == set(PYPROJECT["project"]["dependencies"])


def test_wheel_is_byte_identical_across_builds(wheel, monkeypatch):
    monkeypatch.setattr(client_package, "_built", {})
    again = build_client_wheel()
    assert again.path != wheel.path and again.sha256 == wheel.sha256


def test_wheel_build_leaves_no_litter_in_the_checkout(wheel):
    assert not list(PROJECT_ROOT.glob("*.egg-info"))


# ---- pip install . into a fresh virtualenv ------------------------------------------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """`pip install .` of a clean copy of the package sources into a new virtualenv."""
    root = tmp_path_factory.mktemp("pip-install")
    source = root / "checkout"
    source.mkdir()
    for name in PACKAGE_SOURCES:
        path = PROJECT_ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet",
                           "--disable-pip-version-check", "."], cwd=source,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return venv


def _run_in_tmp(argv: list[str]) -> subprocess.CompletedProcess[str]:
    # From /tmp, with no PYTHONPATH: only what the virtualenv installed can be imported.
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    return subprocess.run(argv, cwd="/tmp", env=env, capture_output=True, text=True, timeout=120)


def test_installed_sealed_client_verifies_an_attestation_from_tmp(installed, fixtures_dir):
    done = _run_in_tmp([str(installed / "bin" / "sealed-client"), "verify-attestation",
                        str(fixtures_dir / ATTESTATION), "--at", "2023-01-18T13:07:20Z",
                        "--expect-pcr", f"0={ATTESTATION_PCR0}"])
    assert done.returncode == 0, done.stderr
    assert "attestation document verified" in done.stdout


def test_installed_python_dash_m_client_works_from_tmp(installed):
    done = _run_in_tmp([str(installed / "bin" / "python"), "-m", "client", "--help"])
    assert done.returncode == 0, done.stderr
    assert "verify-attestation" in done.stdout


def test_installed_client_is_not_the_checkout(installed):
    done = _run_in_tmp([str(installed / "bin" / "python"), "-c",
                        "import client; print(client.__file__)"])
    assert done.returncode == 0, done.stderr
    assert "site-packages" in done.stdout and str(PROJECT_ROOT) not in done.stdout
