"""Record every input of an enclave image build beside its measurements.

PCR0 is a function of everything that went into the EIF: the base image, the OS packages (locked
by that image's release), the Python packages, the runtime code, the measured policy file, the
build arguments, and nitro-cli itself (it supplies the EIF's kernel and init). The image builder
writes this record next to measurements.json and uploads both, so anyone can rebuild the image
and compare, or see why two measurements differ:

    python -m pipeline.build_inputs --context build/image \\
        --nitro-cli-package aws-nitro-enclaves-cli-1.4.5-0.amzn2023 \\
        --nitro-cli-version "$(nitro-cli --version)" \\
        --build-arg AWS_REGION=us-east-1 ... --measurements measurements.json \\
        --output build-inputs.json

`build_record` decides what goes in (pure); `main` reads the files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

RECORD_FORMAT = "sealed-enclave-build-inputs/1"
DOCKERFILE = "containers/Dockerfile"
POLICY = "containers/enclave-policy.json"


def base_images(dockerfile: str) -> list[str]:
    """The external images the Dockerfile starts from (stage names excluded), as written."""
    stages: set[str] = set()
    images = []
    for line in re.sub(r"\\\n", " ", dockerfile).splitlines():
        words = [w for w in line.split() if not w.startswith("--")]
        if not words or words[0].upper() != "FROM":
            continue
        if words[1] not in stages:
            images.append(words[1])
        if len(words) >= 4 and words[2].upper() == "AS":
            stages.add(words[3])
    return images


def build_record(files: Mapping[str, bytes], *, build_args: Mapping[str, str],
                 nitro_cli_package: str, nitro_cli_version: str,
                 measurements: Mapping[str, Any], source_version: str | None) -> dict[str, Any]:
    """The record of one build. `files`: every file of the build context by relative path."""
    if DOCKERFILE not in files:
        raise ValueError(f"the build context has no {DOCKERFILE}")
    unpinned = [i for i in base_images(files[DOCKERFILE].decode()) if "@sha256:" not in i]
    if unpinned:
        raise ValueError(f"base image(s) not pinned by digest: {', '.join(unpinned)}")
    record: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "source_version": source_version,
        "nitro_cli": {"package": nitro_cli_package, "version": nitro_cli_version.strip()},
        "base_images": base_images(files[DOCKERFILE].decode()),
        "build_args": dict(sorted(build_args.items())),
        "files": {path: hashlib.sha256(data).hexdigest() for path, data in sorted(files.items())},
        "measurements": dict(measurements),
    }
    if POLICY in files:
        record["policy"] = json.loads(files[POLICY])
    return record


def context_files(root: Path) -> dict[str, bytes]:
    found = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_file() and "__pycache__" not in relative.split("/"):
            found[relative] = path.read_bytes()
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.build_inputs",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--context", required=True, type=Path, help="the docker build context")
    parser.add_argument("--nitro-cli-package", required=True)
    parser.add_argument("--nitro-cli-version", required=True)
    parser.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--measurements", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args(argv)
    build_args = dict(arg.split("=", 1) for arg in args.build_arg)
    try:
        record = build_record(
            context_files(args.context), build_args=build_args,
            nitro_cli_package=args.nitro_cli_package, nitro_cli_version=args.nitro_cli_version,
            measurements=json.loads(args.measurements.read_text()).get("Measurements", {}),
            source_version=os.environ.get("CODEBUILD_RESOLVED_SOURCE_VERSION"))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.output.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    print(f"build inputs of {len(record['files'])} files recorded in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
