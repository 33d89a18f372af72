"""SourceRepository: the Third Party's CodeCommit repository, created and seeded, or imported.

The seed is assembled at synth time from this project's own files (one copy of each, nothing
duplicated in this project), into a deterministic zip that CloudFormation commits to `main` when it
creates the repository. Later changes to the project do not touch an existing repository: the seed
is the starting point the Third Party then owns.

Seeded layout (what the pipeline's builds expect):

    src/<app_directory>/   the sample application, manifest included (from src/sample-inference/,
                           its app_id set to the stack's AppId)
    containers/            the enclave image definition
    enclave/               the runtime (the encryptor and the image both use it)
    envelope_encryptor.py  the sealing CLI the application-encryptor build runs
    pipeline/              allowlist.py, upload.py and requirements.txt the builds run
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import aws_cdk as cdk
from aws_cdk import aws_codecommit as codecommit

from constructs import Construct

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_APP_DIRECTORY = "sample-inference"
# Caches, virtualenvs and editor litter never belong in the seed.
EXCLUDED_NAMES = frozenset({"__pycache__", ".venv", "venv", ".pytest_cache", ".mypy_cache",
                            ".ruff_cache", ".git", ".DS_Store", "node_modules", ".sim", "build"})
EXCLUDED_SUFFIXES = (".pyc", ".pyo", ".egg-info", ".swp", "~")
# Pipeline files the builds run; the buildspecs themselves live in the CodeBuild projects and the
# deploy-time merge handler in a Lambda asset, so copies of them in the repository could only drift.
PIPELINE_FILES = ("__init__.py", "allowlist.py", "upload.py", "build_inputs.py",
                  "requirements.txt")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class SeedError(ValueError):
    """A part of the seed is missing or unusable; the message names it."""


@dataclass(frozen=True)
class SeedPart:
    source: str  # relative to the project root
    target: str  # relative to the repository root
    is_directory: bool


def seed_parts(app_directory: str) -> tuple[SeedPart, ...]:
    parts = [
        SeedPart(f"src/{SAMPLE_APP_DIRECTORY}", f"src/{app_directory}", True),
        SeedPart("containers", "containers", True),
        SeedPart("enclave", "enclave", True),
        SeedPart("envelope_encryptor.py", "envelope_encryptor.py", False),
    ]
    parts += [SeedPart(f"pipeline/{name}", f"pipeline/{name}", False) for name in PIPELINE_FILES]
    return tuple(parts)


def _excluded(name: str) -> bool:
    return name in EXCLUDED_NAMES or name.endswith(EXCLUDED_SUFFIXES)


def _walk(directory: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not _excluded(d))
        for name in sorted(files):
            if not _excluded(name):
                yield Path(root) / name


def missing_parts(project_root: Path, app_directory: str) -> list[str]:
    """Seed sources that are absent (or an empty directory) in the project."""
    missing = []
    for part in seed_parts(app_directory):
        path = project_root / part.source
        present = (path.is_dir() and any(True for _ in _walk(path))) if part.is_directory \
            else path.is_file()
        if not present:
            missing.append(part.source)
    return missing


def seed_files(project_root: Path, app_directory: str) -> list[tuple[str, Path]]:
    """(repository path, project file) for every file of the seed, sorted; skips missing parts."""
    entries: dict[str, Path] = {}
    for part in seed_parts(app_directory):
        source = project_root / part.source
        files = ([(f, PurePosixPath(part.target) / f.relative_to(source).as_posix())
                  for f in _walk(source)] if part.is_directory and source.is_dir()
                 else [(source, PurePosixPath(part.target))] if source.is_file() else [])
        for path, target in files:
            if path.is_symlink():
                raise SeedError(f"seed file {path} is a symbolic link: expected regular files "
                                "only (a link could pull in files from outside the project)")
            if str(target) in entries:
                raise SeedError(f"seed path {target} comes from two project files")
            entries[str(target)] = path
    return sorted(entries.items())


def seeded_manifest(text: bytes, app_id: str) -> bytes:
    """The sample's manifest with `app_id` set: the build passes the stack's AppId as
    `--app-id`, and the key policy admits only that app id, so the seed must say the same."""
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SeedError(f"the sample manifest is not JSON ({exc.msg}): expected "
                        f"src/{SAMPLE_APP_DIRECTORY}/manifest.json to be valid") from exc
    if not isinstance(manifest, dict):
        raise SeedError("the sample manifest is not a JSON object")
    manifest["app_id"] = app_id
    return (json.dumps(manifest, indent=2) + "\n").encode()


def build_seed_zip(project_root: Path, app_directory: str, output: Path, *,
                   require_all: bool = True, app_id: str | None = None) -> list[str]:
    """Write the seed zip (deterministic: sorted names, fixed timestamps); returns its names.

    With `app_id`, the seeded application's manifest.json declares that app id."""
    missing = missing_parts(project_root, app_directory)
    if missing and require_all:
        raise SeedError(f"cannot seed the repository: {', '.join(missing)} missing under "
                        f"{project_root}; restore them (git checkout) or set "
                        "UseExistingRepository=true to import a repository instead")
    names = []
    with zipfile.ZipFile(output, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, path in seed_files(project_root, app_directory):
            info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            executable = path.stat().st_mode & stat.S_IXUSR
            info.external_attr = ((0o100755 if executable else 0o100644) << 16)
            info.compress_type = zipfile.ZIP_DEFLATED
            data = path.read_bytes()
            if app_id is not None and name == f"src/{app_directory}/manifest.json":
                data = seeded_manifest(data, app_id)
            archive.writestr(info, data)
            names.append(name)
    return names


class SourceRepository(Construct):
    """The CodeCommit repository the sealing pipeline builds from.

    `repository` is a new repository seeded on creation, or, with `use_existing=True`, the
    existing repository of that name (nothing is created or changed). Attribute `seed_files`
    lists the seeded paths (empty when imported).
    """

    def __init__(self, scope: Construct, construct_id: str, *, repository_name: str,
                 app_directory: str, app_id: str | None = None, use_existing: bool = False,
                 project_root: Path = PROJECT_ROOT, require_complete_seed: bool = True) -> None:
        super().__init__(scope, construct_id)
        self.seed_files: list[str] = []
        if use_existing:
            self.repository: codecommit.IRepository = codecommit.Repository.from_repository_name(
                self, "Repository", repository_name)
            return
        staging = Path(tempfile.mkdtemp(prefix="sealed-enclave-seed-"))
        # CDK copies the asset into the cloud assembly during synth; the zip is ours to remove.
        atexit.register(shutil.rmtree, staging, ignore_errors=True)
        seed_zip = staging / "seed.zip"
        missing = missing_parts(project_root, app_directory)
        if missing and not require_complete_seed:
            cdk.Annotations.of(self).add_warning_v2(
                "SealedEnclave:IncompleteSeed",
                f"repository seed lacks {', '.join(missing)}: the pipeline's builds will fail "
                "until the repository has them")
        self.seed_files = build_seed_zip(project_root, app_directory, seed_zip,
                                         require_all=require_complete_seed, app_id=app_id)
        repository = codecommit.Repository(
            self, "Repository", repository_name=repository_name,
            description="Sealed enclave application: src/ is sealed, containers/ becomes the EIF",
            code=codecommit.Code.from_zip_file(str(seed_zip), "main"),
        )
        # The repository holds the Third Party's source: never deleted with the stack.
        repository.apply_removal_policy(cdk.RemovalPolicy.RETAIN)
        self.repository = repository
