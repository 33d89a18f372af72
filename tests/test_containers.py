"""The enclave image definition: pinned inputs, and the command it runs is the one simulated."""

from __future__ import annotations

import ast
import json
import re
import shlex
from pathlib import Path

import pytest

from enclave.__main__ import build_parser, production_argv, simulation_argv

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "containers" / "Dockerfile"
ENCLAVE_REQUIREMENTS = ROOT / "containers" / "requirements-enclave.txt"
APP_REQUIREMENTS = ROOT / "containers" / "requirements-app.txt"

# Import name -> distribution name, for the runtime's third-party imports.
DISTRIBUTIONS = {"attr": "attrs", "aws_encryption_sdk": "aws-encryption-sdk", "yaml": "pyyaml"}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def image_command() -> list[str]:
    """What the image runs: ENTRYPOINT + CMD, each in exec (JSON) form."""
    entrypoint: list[str] = []
    cmd: list[str] = []
    for keyword, rest in dockerfile_instructions():
        if keyword in ("CMD", "ENTRYPOINT"):
            try:
                value = json.loads(rest)
            except ValueError:
                pytest.fail(f"{keyword} must use the exec (JSON) form, got: {rest}")
            if keyword == "CMD":
                cmd = value
            else:
                entrypoint = value
    return entrypoint + cmd


def requirement_lines(path: Path) -> list[str]:
    """Requirement lines with backslash continuations joined and comments dropped."""
    lines = []
    for line in re.sub(r"\\\n", " ", path.read_text()).splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append(" ".join(line.split()))
    return lines


def requirement_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in requirement_lines(path):
        name, _, version = line.split()[0].partition("==")
        pins[name.lower()] = version
    return pins


def test_image_runs_the_production_command() -> None:
    assert image_command() == production_argv()


def test_image_names_its_interpreter_by_absolute_path() -> None:
    """The init looks a bare name up on /sbin:/usr/sbin:/bin:/usr/bin (python3 = 3.9 on AL2023)."""
    assert image_command()[0] == "/usr/bin/python3.11"
    runs = [rest for keyword, rest in dockerfile_instructions() if keyword == "RUN"]
    assert not any(re.search(r"(^|[\s;&|])python3?\s", run) for run in runs), runs
    assert "dnf install -y python3.11 " in " ".join(runs)


def test_production_command_parses_as_vsock_serve() -> None:
    args = build_parser().parse_args(production_argv()[3:])
    assert (args.command, args.vsock, args.vsock_port, args.unix) == ("serve", True, None, None)
    assert (args.nsm_device, args.nsm_transport) == ("/dev/nsm", "device")


def test_simulation_runs_the_same_command_with_local_transport_and_paths() -> None:
    sim = simulation_argv(socket_path="/s/runtime.sock", exchange="/s/exchange",
                          private="/s/private", nsm_device="/s/nsm.sock",
                          kms_endpoint="http://127.0.0.1:4000", policy="/s/image/policy.json",
                          python="/venv/bin/python")
    prod = production_argv()
    assert sim[1:4] == prod[1:4]  # -m enclave serve
    # Same options in the same order; only the transports change: the socket family, and the
    # NSM reached as the simulation's socket, which the production command never asks for.
    prod_options = [a for a in prod[4:] if a.startswith("--")]
    sim_options = [a for a in sim[4:] if a.startswith("--")]
    mapped = {"--vsock": ["--unix"], "--nsm-device": ["--nsm-device", "--nsm-transport"]}
    assert sim_options == [m for o in prod_options for m in mapped.get(o, [o])]
    args = build_parser().parse_args(sim[3:])
    assert (args.unix, args.vsock_port, args.private) == ("/s/runtime.sock", None, "/s/private")
    assert args.nsm_transport == "simulation"


def test_client_simulation_starts_the_runtime_with_simulation_argv(tmp_path: Path) -> None:
    simulate = pytest.importorskip("client.sim.processes")
    command = simulate.runtime_command(tmp_path / "rt.sock", tmp_path, tmp_path / "nsm.sock",
                                       "http://127.0.0.1:4000", tmp_path / "policy.json")
    assert [str(a) for a in command] == simulation_argv(
        socket_path=tmp_path / "rt.sock", exchange=tmp_path / "exchange",
        private=tmp_path / "private", nsm_device=tmp_path / "nsm.sock",
        kms_endpoint="http://127.0.0.1:4000", policy=tmp_path / "policy.json",
        python=command[0], app_interpreter=command[command.index("--app-interpreter") + 1])


def test_production_command_requires_the_image_policy_the_image_carries() -> None:
    """The image copies the build's policy file to where its CMD tells the runtime to read it."""
    args = build_parser().parse_args(production_argv()[3:])
    assert args.policy == "/opt/enclave/policy.json"
    copies = [line.split() for line in DOCKERFILE.read_text().splitlines()
              if line.startswith("COPY ")]
    assert ["COPY", "containers/enclave-policy.json", "/opt/enclave/policy.json"] in copies


def test_every_base_image_is_pinned_by_digest() -> None:
    stages: set[str] = set()
    for keyword, rest in dockerfile_instructions():
        if keyword != "FROM":
            continue
        words = [w for w in rest.split() if not w.startswith("--platform")]
        image = words[0]
        if len(words) >= 3 and words[1].upper() == "AS":
            stages.add(words[2])
        if image in stages:
            continue
        assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", image), image


def test_base_is_amazon_linux_2023_arm64() -> None:
    first = next(rest for keyword, rest in dockerfile_instructions() if keyword == "FROM")
    assert "--platform=linux/arm64" in first and "amazonlinux:2023@" in first


@pytest.mark.parametrize("path", [ENCLAVE_REQUIREMENTS, APP_REQUIREMENTS], ids=["enclave", "app"])
def test_every_image_requirement_is_pinned_with_hashes(path: Path) -> None:
    for line in requirement_lines(path):
        assert re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.]+( --hash=sha256:[0-9a-f]{64})+",
                            line), line


def test_app_requirements_match_the_project_pins() -> None:
    project = requirement_pins(ROOT / "requirements.txt")
    for name, version in requirement_pins(APP_REQUIREMENTS).items():
        assert project.get(name) == version, f"{name}: {version} vs {project.get(name)}"


def test_enclave_requirements_match_the_project_pins() -> None:
    project = requirement_pins(ROOT / "requirements.txt")
    for name, version in requirement_pins(ENCLAVE_REQUIREMENTS).items():
        if name in project:
            assert project[name] == version, f"{name}: {version} vs {project[name]}"


def test_every_third_party_import_of_the_runtime_is_in_the_image() -> None:
    pinned = set(requirement_pins(ENCLAVE_REQUIREMENTS))
    stdlib = set(__import__("sys").stdlib_module_names)
    missing = set()
    for source in (ROOT / "enclave").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in stdlib or top in ("enclave", "__future__"):
                    continue
                if DISTRIBUTIONS.get(top, top).lower() not in pinned:
                    missing.add(f"{source.name}: {top}")
    assert not missing, f"imported by the runtime but not installed in the image: {missing}"


def test_pip_installs_require_hashes_and_wheels_only() -> None:
    installs = [rest for keyword, rest in dockerfile_instructions()
                if keyword == "RUN" and "pip install" in rest]
    assert installs
    for command in installs:
        for part in command.split("&&"):
            if "pip install" in part:
                words = shlex.split(part)
                assert "--require-hashes" in words and "--only-binary=:all:" in words, part


def test_image_tells_the_runtime_its_region_and_writes_no_etc_hosts() -> None:
    """linuxkit replaces /etc/hosts: the runtime maps the KMS name for the image's region."""
    from client.sim.jail import image_spec

    spec = image_spec(DOCKERFILE.read_text(), {"AWS_REGION": "eu-west-3"})
    assert spec.env["ENCLAVE_REGION"] == "eu-west-3"
    assert "/etc/hosts" not in " ".join(rest for keyword, rest in dockerfile_instructions()
                                        if keyword in ("COPY", "RUN", "ADD"))


def test_image_contains_the_runtime_code() -> None:
    copies = [rest for keyword, rest in dockerfile_instructions() if keyword == "COPY"]
    assert any(rest.split()[0] == "enclave/" for rest in copies)


def test_bytecode_caches_are_kept_out_of_the_image() -> None:
    ignore = (ROOT / "containers" / "Dockerfile.dockerignore").read_text().split()
    assert "**/__pycache__" in ignore and "**/*.pyc" in ignore
