"""The CodeCommit seed: the project's own files, one copy each, no litter, deterministic."""

import json
import os
import re
import zipfile
from pathlib import Path

import pytest

from constructs.sealing_pipeline import load_buildspec
from constructs.source_repository import (
    PIPELINE_FILES,
    SeedError,
    build_seed_zip,
    missing_parts,
    seed_parts,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def write(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def project(tmp_path) -> Path:
    """A miniature project with every seed part, plus the litter a real checkout carries."""
    root = tmp_path / "project"
    write(root / "src/sample-inference/manifest.json", "{}")
    write(root / "src/sample-inference/model/weights.json")
    write(root / "src/other-app/secret.txt")
    write(root / "containers/Dockerfile", "FROM scratch\n")
    write(root / "enclave/__init__.py")
    write(root / "enclave/sealing.py")
    write(root / "envelope_encryptor.py")
    for name in PIPELINE_FILES:
        write(root / "pipeline" / name)
    write(root / "pipeline/buildspecs/application-encryptor.yml")
    write(root / "pipeline/measurement_resource.py")
    write(root / "enclave/__pycache__/sealing.cpython-311.pyc")
    write(root / "src/sample-inference/.pytest_cache/v")
    write(root / "containers/.venv/bin/python")
    write(root / "enclave/stray.pyc")
    write(root / "tests/test_x.py")
    write(root / "requirements.txt")
    return root


def names(zip_path: Path) -> list[str]:
    with zipfile.ZipFile(zip_path) as archive:
        return archive.namelist()


def test_seed_has_the_runbook_layout(project, tmp_path):
    out = tmp_path / "seed.zip"
    build_seed_zip(project, "sample-inference", out)
    assert names(out) == sorted([
        "containers/Dockerfile", "enclave/__init__.py", "enclave/sealing.py",
        "envelope_encryptor.py", "pipeline/__init__.py", "pipeline/allowlist.py",
        "pipeline/build_inputs.py", "pipeline/requirements.txt", "pipeline/upload.py",
        "src/sample-inference/manifest.json", "src/sample-inference/model/weights.json"])


def test_seed_excludes_caches_virtualenvs_and_compiled_files(project, tmp_path):
    out = tmp_path / "seed.zip"
    build_seed_zip(project, "sample-inference", out)
    assert not [n for n in names(out)
                if re.search(r"(__pycache__|\.pytest_cache|\.venv|\.pyc$)", n)]


def test_seed_holds_no_copy_of_the_build_specs_or_the_deploy_time_handler(project, tmp_path):
    out = tmp_path / "seed.zip"
    build_seed_zip(project, "sample-inference", out)
    assert not [n for n in names(out) if "buildspecs" in n or "measurement_resource" in n]


def test_sample_app_is_seeded_under_the_configured_directory(project, tmp_path):
    out = tmp_path / "seed.zip"
    build_seed_zip(project, "fraud-model", out)
    app_files = [n for n in names(out) if n.startswith("src/")]
    assert app_files == ["src/fraud-model/manifest.json", "src/fraud-model/model/weights.json"]


def test_each_file_appears_once(project, tmp_path):
    out = tmp_path / "seed.zip"
    listed = build_seed_zip(project, "sample-inference", out)
    assert len(names(out)) == len(set(names(out))) == len(listed)


def test_seed_zip_is_byte_identical_across_builds(project, tmp_path):
    first, second = tmp_path / "a.zip", tmp_path / "b.zip"
    build_seed_zip(project, "sample-inference", first)
    os.utime(project / "envelope_encryptor.py", (1, 1))
    build_seed_zip(project, "sample-inference", second)
    assert first.read_bytes() == second.read_bytes()


def test_executable_bit_is_kept(project, tmp_path):
    (project / "envelope_encryptor.py").chmod(0o755)
    out = tmp_path / "seed.zip"
    build_seed_zip(project, "sample-inference", out)
    with zipfile.ZipFile(out) as archive:
        mode = archive.getinfo("envelope_encryptor.py").external_attr >> 16
    assert mode & 0o111


def test_symbolic_link_in_a_seed_part_is_refused(project, tmp_path):
    (project / "containers/escape").symlink_to("/etc/passwd")
    with pytest.raises(SeedError, match="symbolic link"):
        build_seed_zip(project, "sample-inference", tmp_path / "seed.zip")


def test_missing_part_is_a_clear_error_naming_it(project, tmp_path):
    (project / "envelope_encryptor.py").unlink()
    with pytest.raises(SeedError, match="envelope_encryptor.py missing"):
        build_seed_zip(project, "sample-inference", tmp_path / "seed.zip")


def test_empty_directory_counts_as_missing(project):
    for path in sorted((project / "containers").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    assert missing_parts(project, "sample-inference") == ["containers"]


def test_missing_part_is_tolerated_only_when_asked(project, tmp_path):
    (project / "envelope_encryptor.py").unlink()
    listed = build_seed_zip(project, "sample-inference", tmp_path / "seed.zip", require_all=False)
    assert "envelope_encryptor.py" not in listed


def test_project_seed_is_complete_and_clean(tmp_path):
    out = tmp_path / "seed.zip"
    listed = build_seed_zip(PROJECT_ROOT, "sample-inference", out)
    for expected in ("src/sample-inference/manifest.json", "containers/Dockerfile",
                     "enclave/__init__.py", "envelope_encryptor.py", "pipeline/allowlist.py",
                     "pipeline/upload.py", "pipeline/requirements.txt"):
        assert expected in listed
    assert not [n for n in listed if "__pycache__" in n or n.startswith(("tests/", "stacks/"))]


def test_seeded_dockerfile_finds_what_it_copies_in_the_image_context():
    """The builder's context is containers/ + enclave/: every COPY source must be in it."""
    dockerfile = (PROJECT_ROOT / "containers/Dockerfile").read_text()
    sources = [word for line in dockerfile.splitlines()
               if line.startswith("COPY ") and "--from=" not in line
               for word in line.split()[1:-1] if not word.startswith("--")]
    assert sources
    builder = (PROJECT_ROOT / "pipeline/buildspecs/nitro-image-builder.yml").read_text()
    for source in sources:
        assert source.split("/")[0] in ("containers", "enclave"), source
        if source == "containers/enclave-policy.json":
            # Not in the repository: the image build writes it before `docker build`.
            assert "python -m enclave.policy write" in builder
            assert "--output build/image/containers/enclave-policy.json" in builder
            continue
        assert (PROJECT_ROOT / source).exists(), source


def test_build_specs_only_use_files_the_seed_provides():
    seeded = {part.target for part in seed_parts("sample-inference")}
    for name in ("application-encryptor", "nitro-image-builder"):
        text = str(load_buildspec(name))
        for used in ("pipeline/requirements.txt", "envelope_encryptor.py", "containers"):
            if used in text:
                assert used in seeded, (name, used)
        for module in re.findall(r"python -m pipeline\.(\w+)", text):
            assert f"pipeline/{module}.py" in seeded, (name, module)


def requirement_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


def test_pipeline_requirements_pin_the_same_versions_as_the_project():
    project_pins = requirement_pins(PROJECT_ROOT / "requirements.txt")
    for name, version in requirement_pins(PROJECT_ROOT / "pipeline/requirements.txt").items():
        assert project_pins.get(name) == version, name


def test_seeded_manifest_takes_the_stack_app_id_and_keeps_the_rest(project, tmp_path):
    write(project / "src/sample-inference/manifest.json",
          json.dumps({"format": 1, "app_id": "sample-inference", "app_version": "1.0.0"}))
    out = tmp_path / "seed.zip"
    build_seed_zip(project, "fraud-model", out, app_id="fraud-model")
    with zipfile.ZipFile(out) as archive:
        manifest = json.loads(archive.read("src/fraud-model/manifest.json"))
    assert manifest == {"format": 1, "app_id": "fraud-model", "app_version": "1.0.0"}


def test_the_project_sample_manifest_seeds_a_valid_manifest_for_another_app_id(tmp_path):
    from enclave.manifest import load_manifest

    out = tmp_path / "seed.zip"
    build_seed_zip(PROJECT_ROOT, "fraud-model", out, app_id="fraud-model")
    with zipfile.ZipFile(out) as archive:
        archive.extractall(tmp_path / "repo")
    assert load_manifest(tmp_path / "repo/src/fraud-model").app_id == "fraud-model"
