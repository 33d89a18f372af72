"""The image policy: what this enclave image will ever unseal, written into the image itself.

The KMS key policy sees only the enclave's measurement, and the NSM serves every process in the
enclave, so whatever runs inside an allowed image can obtain the key's data keys. The measured
image must therefore decide by itself what it runs. The image build writes this file
(`python -m enclave.policy write ...`, called by the `nitro-image-builder` build); it lands at
`/opt/enclave/policy.json`, so PCR0 commits to it, and the runtime refuses to start without it.

Before any request reaches KMS, a bundle's header must name only `aws-kms` data keys under a
pinned key ARN (at least one), an app id the policy pins, and a version at or above the pinned
minimum. Nothing the host sends can widen that choice: the run request carries no app id, key or
region of its own.

    {"format": 1, "region": "us-east-1",
     "kms_key_arns": ["arn:aws:kms:us-east-1:111111111111:key/..."],
     "app_ids": ["sample-inference"], "minimum_app_version": "1.2.0"}

Pure except for `load_policy`, `write_policy` and the command line.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclave.manifest import APP_ID_PATTERN

POLICY_FORMAT = 1
PRODUCTION_POLICY_PATH = "/opt/enclave/policy.json"
KMS_PROVIDER_ID = "aws-kms"
MAX_PINNED = 16
MAX_POLICY_BYTES = 64 * 1024
KEY_ARN_PATTERN = re.compile(
    r"arn:(aws|aws-cn|aws-us-gov):kms:([a-z]{2}(-[a-z]+)+-\d):(\d{12}):key/[A-Za-z0-9-]{1,128}")
REGION_PATTERN = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")
NUMERIC_VERSION_PATTERN = re.compile(r"\d{1,9}(\.\d{1,9}){0,7}")


class PolicyError(ValueError):
    """The policy file is missing or malformed; the message names the field and the form."""


class BundleRefused(Exception):
    """A bundle this image does not trust; the message names what it carries and what is pinned."""


@dataclass(frozen=True)
class ImagePolicy:
    region: str
    kms_key_arns: tuple[str, ...]
    app_ids: tuple[str, ...]
    minimum_app_version: str | None = None

    def __post_init__(self) -> None:
        if not REGION_PATTERN.fullmatch(self.region):
            raise PolicyError(f"region {self.region!r} is not an AWS region like us-east-1")
        _check_list("kms_key_arns", self.kms_key_arns)
        _check_list("app_ids", self.app_ids)
        for arn in self.kms_key_arns:
            match = KEY_ARN_PATTERN.fullmatch(arn)
            if not match:
                raise PolicyError(f"kms_key_arns: {arn!r} is not a KMS key ARN "
                                  "(arn:aws:kms:<region>:<account>:key/<id>; no alias)")
            if match.group(2) != self.region:
                raise PolicyError(f"kms_key_arns: {arn} is in {match.group(2)}, the policy's "
                                  f"region is {self.region}: the enclave reaches one KMS region")
        for app_id in self.app_ids:
            if not isinstance(app_id, str) or not APP_ID_PATTERN.fullmatch(app_id):
                raise PolicyError(f"app_ids: {app_id!r} is not an app id (1-63 lowercase "
                                  "letters, digits and inner hyphens)")
        if self.minimum_app_version is not None and not NUMERIC_VERSION_PATTERN.fullmatch(
                str(self.minimum_app_version)):
            raise PolicyError(f"minimum_app_version {self.minimum_app_version!r} is not a dotted "
                              "numeric version like 1.2.0")

    def to_json(self) -> dict[str, Any]:
        return {"format": POLICY_FORMAT, "region": self.region,
                "kms_key_arns": list(self.kms_key_arns), "app_ids": list(self.app_ids),
                "minimum_app_version": self.minimum_app_version}

    def canonical_bytes(self) -> bytes:
        """The file's exact bytes: the same policy always measures the same."""
        return (json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n").encode("ascii")

    def describe(self) -> str:
        minimum = self.minimum_app_version or "any"
        return (f"key(s) {', '.join(self.kms_key_arns)}; app id(s) {', '.join(self.app_ids)}; "
                f"minimum version {minimum}")

    # -- decisions --------------------------------------------------------------------------

    def check_header(self, data_keys: Sequence[tuple[str, str]],
                     encryption_context: Mapping[str, str]) -> str:
        """Decide on a bundle from its header alone; return the pinned key ARN to decrypt with.

        `data_keys` are (provider id, key info) of every encrypted data key in the header.
        Raises `BundleRefused` for anything this image does not trust.
        """
        if not data_keys:
            raise BundleRefused("the bundle carries no encrypted data key")
        for provider, key in data_keys:
            if provider != KMS_PROVIDER_ID or key not in self.kms_key_arns:
                raise BundleRefused(
                    f"the bundle has a data key for {provider} {key!r}; this image trusts only "
                    f"{KMS_PROVIDER_ID} keys {', '.join(self.kms_key_arns)}: refused before any "
                    "KMS request. Seal with the third party's enclave key")
        self.check_context(encryption_context)
        return data_keys[0][1]

    def check_context(self, encryption_context: Mapping[str, str]) -> None:
        """The bundle's app id and version against the pinned ones; raises `BundleRefused`."""
        app_id = encryption_context.get("app_id")
        version = encryption_context.get("app_version")
        if app_id not in self.app_ids:
            raise BundleRefused(
                f"the bundle is app {app_id!r}; this image runs only {', '.join(self.app_ids)}")
        if self.minimum_app_version is not None:
            if not isinstance(version, str) or not NUMERIC_VERSION_PATTERN.fullmatch(version):
                raise BundleRefused(
                    f"the bundle's version {version!r} is not a dotted numeric version, and this "
                    f"image requires at least {self.minimum_app_version}")
            if version_key(version) < version_key(self.minimum_app_version):
                raise BundleRefused(
                    f"the bundle is {app_id} {version}, below this image's minimum version "
                    f"{self.minimum_app_version} (an older release is not run again)")


def version_key(version: str) -> tuple[int, ...]:
    """1.2 == 1.2.0 < 1.10: numeric parts, trailing zeros ignored."""
    parts = [int(part) for part in version.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def _check_list(name: str, values: Any) -> None:
    if not isinstance(values, tuple) or not 1 <= len(values) <= MAX_PINNED:
        raise PolicyError(f"{name} must list 1 to {MAX_PINNED} values")
    if len(set(values)) != len(values):
        raise PolicyError(f"{name} lists a value twice")


def policy_from_json(raw: Any, source: str = "policy") -> ImagePolicy:
    if not isinstance(raw, dict):
        raise PolicyError(f"{source} is not a JSON object")
    expected = {"format", "region", "kms_key_arns", "app_ids", "minimum_app_version"}
    if set(raw) != expected:
        raise PolicyError(f"{source} has fields {sorted(raw)}; expected {sorted(expected)}")
    if raw["format"] != POLICY_FORMAT:
        raise PolicyError(f"{source} format {raw['format']!r} is not {POLICY_FORMAT}")
    for name in ("kms_key_arns", "app_ids"):
        if not isinstance(raw[name], list) or not all(isinstance(v, str) for v in raw[name]):
            raise PolicyError(f"{source} {name} must be a list of strings")
    if not isinstance(raw["region"], str):
        raise PolicyError(f"{source} region must be a string")
    minimum = raw["minimum_app_version"]
    if minimum is not None and not isinstance(minimum, str):
        raise PolicyError(f"{source} minimum_app_version must be a string or null")
    try:
        return ImagePolicy(region=raw["region"], kms_key_arns=tuple(raw["kms_key_arns"]),
                           app_ids=tuple(raw["app_ids"]), minimum_app_version=minimum)
    except PolicyError as exc:
        raise PolicyError(f"{source}: {exc}") from None


def load_policy(path: str | Path) -> ImagePolicy:
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_POLICY_BYTES + 1)
    except FileNotFoundError:
        raise PolicyError(f"no image policy at {path}: the image build writes it "
                          "(python -m enclave.policy write); this runtime runs nothing "
                          "without one") from None
    except OSError as exc:
        raise PolicyError(f"cannot read the image policy {path}: {exc.strerror}") from None
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError(f"image policy {path} is over {MAX_POLICY_BYTES} bytes")
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise PolicyError(f"image policy {path} is not JSON ({exc})") from None
    return policy_from_json(raw, f"image policy {path}")


def write_policy(path: str | Path, policy: ImagePolicy) -> None:
    Path(path).write_bytes(policy.canonical_bytes())


# -- command line: the image build writes the file ------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m enclave.policy",
        description="Write or show the image policy that the enclave image pins.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    write = commands.add_parser("write", help="write the policy file for an image build")
    write.add_argument("--output", "-o", required=True, type=Path, metavar="PATH")
    write.add_argument("--region", required=True)
    write.add_argument("--key-arn", action="append", required=True, metavar="ARN",
                       help="a KMS key ARN the image may decrypt with (repeatable)")
    write.add_argument("--app-id", action="append", required=True, metavar="ID",
                       help="an app id the image may run (repeatable)")
    write.add_argument("--minimum-app-version", metavar="VERSION", default=None,
                       help="refuse bundles below this dotted numeric version (anti-rollback)")
    show = commands.add_parser("show", help="validate and print a policy file")
    show.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "write":
            policy = ImagePolicy(region=args.region, kms_key_arns=tuple(args.key_arn),
                                 app_ids=tuple(args.app_id),
                                 minimum_app_version=args.minimum_app_version or None)
            write_policy(args.output, policy)
            print(f"image policy written to {args.output}: {policy.describe()}")
        else:
            print(load_policy(args.path).canonical_bytes().decode(), end="")
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
