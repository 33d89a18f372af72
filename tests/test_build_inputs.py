"""The image builder pins nitro-cli and the base image and records every build input."""

from __future__ import annotations

import json
import re

import pytest

from constructs.sealing_pipeline import load_buildspec
from pipeline.build_inputs import POLICY, base_images, build_record, main
from tests.conftest import PROJECT_ROOT

DOCKERFILE = (PROJECT_ROOT / "containers" / "Dockerfile").read_text()


def commands() -> list[str]:
    spec = load_buildspec("nitro-image-builder")
    return [" ".join(c.split()) for phase in spec["phases"].values()
            for c in phase.get("commands", [])]


def context() -> dict[str, bytes]:
    files = {f"containers/{p.name}": p.read_bytes()
             for p in (PROJECT_ROOT / "containers").iterdir() if p.is_file()}
    files[POLICY] = json.dumps({"region": "us-east-1", "app_ids": ["demo"]}).encode()
    files["enclave/__main__.py"] = (PROJECT_ROOT / "enclave" / "__main__.py").read_bytes()
    return files


def record(files: dict[str, bytes]) -> dict:
    return build_record(files, build_args={"AWS_REGION": "us-east-1"},
                        nitro_cli_package="aws-nitro-enclaves-cli-1.4.5-0.amzn2023",
                        nitro_cli_version="Nitro CLI 1.4.5\n",
                        measurements={"PCR0": "aa" * 48}, source_version="abc")


def test_base_image_comes_from_ecr_public_by_digest():
    (image,) = base_images(DOCKERFILE)
    assert re.fullmatch(r"public\.ecr\.aws/amazonlinux/amazonlinux:2023@sha256:[0-9a-f]{64}",
                        image)


def test_nitro_cli_is_installed_at_a_pinned_version_and_checked():
    spec = load_buildspec("nitro-image-builder")
    version = spec["env"]["variables"]["NITRO_CLI_PACKAGE_VERSION"]
    assert re.fullmatch(r"\d+\.\d+\.\d+-\d+\.amzn2023", version)
    steps = commands()
    install = next(s for s in steps if s.startswith("dnf install"))
    assert re.findall(r'"(aws-nitro-enclaves-cli[\w-]*)-\$\{NITRO_CLI_PACKAGE_VERSION\}"',
                      install) == ["aws-nitro-enclaves-cli", "aws-nitro-enclaves-cli-devel"]
    assert any(s.startswith('test "$(rpm -q aws-nitro-enclaves-cli)"') for s in steps)


def test_the_record_names_every_input():
    files = context()
    result = record(files)
    assert result["nitro_cli"] == {"package": "aws-nitro-enclaves-cli-1.4.5-0.amzn2023",
                                   "version": "Nitro CLI 1.4.5"}
    assert result["base_images"] == base_images(DOCKERFILE)
    assert set(result["files"]) == set(files)
    assert result["policy"] == {"region": "us-east-1", "app_ids": ["demo"]}
    assert result["measurements"]["PCR0"] == "aa" * 48


@pytest.mark.parametrize("changed", ["containers/requirements-app.txt", POLICY,
                                     "enclave/__main__.py"])
def test_changing_any_input_changes_the_record(changed):
    files = context()
    before = record(files)
    files[changed] += b"\n "
    assert record(files)["files"][changed] != before["files"][changed]


def test_an_unpinned_base_image_is_refused():
    files = context()
    files["containers/Dockerfile"] = b"FROM amazonlinux:2023 AS base\nFROM base\n"
    with pytest.raises(ValueError, match="not pinned by digest: amazonlinux:2023"):
        record(files)


def test_build_records_and_uploads_the_inputs_after_measuring():
    steps = commands()
    measure = next(i for i, s in enumerate(steps) if s.startswith("nitro-cli build-enclave"))
    record_at = next(i for i, s in enumerate(steps)
                     if s.startswith("python -m pipeline.build_inputs"))
    upload = next(i for i, s in enumerate(steps)
                  if s.startswith("python -m pipeline.upload build-inputs.json"))
    assert measure < record_at < upload
    assert '.build-inputs.json"' in steps[upload]


def test_the_policy_is_written_into_the_build_context_before_the_build():
    steps = commands()
    write = next(i for i, s in enumerate(steps) if s.startswith("python -m enclave.policy write"))
    build = next(i for i, s in enumerate(steps) if s.startswith("docker build"))
    assert write < build
    assert "--output build/image/containers/enclave-policy.json" in steps[write]
    for option in ('--region "${ENCLAVE_REGION}"', '--key-arn "${ENCLAVE_KEY_ARN}"',
                   '--app-id "${APP_ID}"',
                   '${MINIMUM_APP_VERSION:+--minimum-app-version "${MINIMUM_APP_VERSION}"}'):
        assert option in steps[write]
    assert "COPY containers/enclave-policy.json /opt/enclave/policy.json" in DOCKERFILE


def test_cli_writes_the_record(tmp_path):
    context_dir = tmp_path / "image"
    (context_dir / "containers").mkdir(parents=True)
    (context_dir / "containers" / "Dockerfile").write_text(DOCKERFILE)
    (tmp_path / "m.json").write_text(json.dumps({"Measurements": {"PCR0": "bb" * 48}}))
    assert main(["--context", str(context_dir), "--nitro-cli-package", "p", "--nitro-cli-version",
                 "v", "--build-arg", "AWS_REGION=eu-west-1", "--measurements",
                 str(tmp_path / "m.json"), "--output", str(tmp_path / "out.json")]) == 0
    written = json.loads((tmp_path / "out.json").read_text())
    assert written["build_args"] == {"AWS_REGION": "eu-west-1"}
    assert written["measurements"]["PCR0"] == "bb" * 48


@pytest.mark.cdk
def test_minimum_app_version_reaches_the_image_builder():
    from tests.test_ports import image_builder_env_of

    assert image_builder_env_of(MinimumAppVersion="1.2.0")["MINIMUM_APP_VERSION"] == "1.2.0"
