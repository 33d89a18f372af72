"""Seal an application directory for the enclave (and check a sealed bundle).

    python envelope_encryptor.py encrypt -d DIR -k KEY [--app-id ID] [--app-version V] [-o FILE]
        [--upload s3://BUCKET/PREFIX/ --bucket-key-arn ARN --expected-bucket-owner ACCOUNT]
    python envelope_encryptor.py decrypt -i FILE -o DIR -k KEY_ARN [--app-id ID] [--app-version V]

`encrypt` seals DIR (which must hold a valid manifest.json) under the KMS key KEY into one AWS
Encryption SDK message (see enclave/bundle_format.py for the format) and optionally uploads it with
SSE-KMS under the bucket owner's key, refusing a bucket owned by another account. `decrypt` is
for the owner's own checks with their own KMS access; the enclave unseals with attestation.

Credentials, profile, region and endpoints come from the standard AWS environment
(AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL, ...).

Exit status: 0 success; 1 unexpected or local I/O error; 2 bad command line; 3 the application
directory or manifest is not acceptable; 4 the bundle was rejected (wrong key, altered,
truncated, not for this app); 5 an AWS call failed (credentials, KMS, S3).
"""

from __future__ import annotations

import argparse
import enum
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import boto3
import botocore.session
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from enclave.bundle_format import KeyProviderError, SealError, UnsealError, kms_key_provider
from enclave.manifest import ManifestError, load_manifest
from enclave.sealing import seal_directory, unseal_bundle

MIB = 1024 * 1024
# Parts of 64 MiB keep a 10 GiB bundle under S3's 10,000-part limit with few requests.
MULTIPART_THRESHOLD = 64 * MIB
MULTIPART_CHUNKSIZE = 64 * MIB
UPLOAD_CONCURRENCY = 4

_S3_URL = re.compile(r"s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<key>.*))?")
_KMS_KEY_ARN = re.compile(r"arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+")
_ACCOUNT = re.compile(r"\d{12}")


class ExitStatus(enum.IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    INVALID_INPUT = 3
    BUNDLE_REJECTED = 4
    AWS_ERROR = 5


class UsageError(Exception):
    """A combination of options argparse cannot express."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="envelope_encryptor.py",
        description="Seal an application directory for a Nitro Enclave, or check a sealed bundle.",
        epilog="Exit status: 0 ok, 1 error, 2 usage, 3 invalid app directory or manifest, "
        "4 bundle rejected, 5 AWS call failed.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    enc = commands.add_parser("encrypt", help="seal a directory (with its manifest.json)")
    enc.add_argument("-d", "--dir", required=True, type=Path, help="application directory")
    enc.add_argument(
        "-k", "--key", required=True, help="the enclave KMS key (key ARN, alias ARN or key id)"
    )
    enc.add_argument("--app-id", help="must equal the manifest's app_id (default: the manifest's)")
    enc.add_argument("--app-version", help="must equal the manifest's app_version")
    enc.add_argument(
        "-o", "--output", type=Path, help="bundle file (default: <app_id>-<app_version>.sealed)"
    )
    enc.add_argument(
        "--upload",
        metavar="S3_URL",
        help="upload to s3://bucket/prefix/ (a URL ending in '/' gets the file name appended)",
    )
    enc.add_argument("--bucket-key-arn", help="KMS key ARN for the bucket's SSE-KMS (--upload)")
    enc.add_argument(
        "--expected-bucket-owner", help="12-digit account that must own the bucket (--upload)"
    )
    enc.set_defaults(func=_encrypt)

    dec = commands.add_parser("decrypt", help="unseal a bundle into a new or empty directory")
    dec.add_argument("-i", "--input", required=True, type=Path, help="bundle file")
    dec.add_argument("-o", "--output", required=True, type=Path, help="target directory")
    dec.add_argument("-k", "--key", required=True, help="the enclave KMS key ARN")
    dec.add_argument("--app-id", help="reject the bundle unless it was sealed for this app id")
    dec.add_argument("--app-version", help="reject the bundle unless sealed for this version")
    dec.set_defaults(func=_decrypt)
    return parser


def main(argv: list[str] | None = None, *, session: boto3.session.Session | None = None) -> int:
    """Run the command line; return the exit status. `session` (for S3 calls) is for tests."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has already printed usage or help
        return int(exc.code or 0)
    try:
        args.func(args, session or boto3.session.Session(), sys.stdout)
        return ExitStatus.OK
    except UsageError as exc:
        return _fail(f"{parser.prog}: {exc}", ExitStatus.USAGE)
    except (ManifestError, SealError) as exc:
        if _aws_cause(exc):
            return _fail(f"error: {exc}", ExitStatus.AWS_ERROR)
        return _fail(f"error: {exc}", ExitStatus.INVALID_INPUT)
    except UnsealError as exc:
        return _fail(f"rejected: {exc}", ExitStatus.BUNDLE_REJECTED)
    except KeyProviderError as exc:
        return _fail(f"error: {exc}", ExitStatus.AWS_ERROR)
    except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
        return _fail(f"AWS error: {_one_line(exc)}", ExitStatus.AWS_ERROR)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"error: {where}{exc.strerror or exc}", ExitStatus.ERROR)
    except KeyboardInterrupt:
        return _fail("interrupted", ExitStatus.ERROR)


def _fail(message: str, status: ExitStatus) -> int:
    print(message, file=sys.stderr)
    return status


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _aws_cause(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, BotoCoreError | ClientError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# --- encrypt ----------------------------------------------------------------------------------


def _kms_provider(key: str) -> Any:
    # A botocore session of its own: the SDK wraps it in a boto3 session, and two boto3
    # sessions over one botocore session register S3's transfer methods twice.
    return kms_key_provider(key, botocore_session=botocore.session.Session())


def _encrypt(args: argparse.Namespace, session: boto3.session.Session, out: TextIO) -> None:
    upload = _upload_target(args)
    if not args.dir.is_dir():
        raise SealError(f"{args.dir} is not a directory: give the application directory")
    manifest = load_manifest(args.dir)
    if args.app_id is not None and args.app_id != manifest.app_id:
        # The pipeline passes the stack's AppId here: say which side to change.
        raise SealError(
            f"--app-id {args.app_id!r} does not match app_id {manifest.app_id!r} in "
            f"{args.dir / 'manifest.json'}: the enclave key admits only {args.app_id!r} (the "
            f"stack's AppId); set app_id to {args.app_id!r} there, or deploy with "
            f"-c AppId={manifest.app_id}"
        )
    provider = _kms_provider(args.key)
    progress = _Progress("sealing") if sys.stderr.isatty() else None
    output: Path = args.output or Path(f"{manifest.app_id}-{manifest.app_version}.sealed")
    output.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and renamed when complete, so a failed run never leaves a
    # partial bundle that a later upload step could pick up.
    fd, partial = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    try:
        with open(fd, "wb", buffering=MIB) as f:
            result = seal_directory(
                args.dir,
                f,
                key_provider=provider,
                app_id=args.app_id,
                app_version=args.app_version,
                progress=progress,
            )
        os.chmod(partial, 0o644)
        os.replace(partial, output)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    finally:
        if progress is not None:
            progress.done()
    print(
        f"sealed {args.dir} -> {output} ({result.app_id} {result.app_version}, "
        f"{result.files} files, {_size(result.plaintext_bytes)} in, "
        f"{_size(result.ciphertext_bytes)} sealed, message {result.message_id[:16]})",
        file=out,
    )
    if upload is not None:
        bucket, key = upload
        key = key if key and not key.endswith("/") else f"{key or ''}{output.name}"
        version = _upload(session, output, bucket, key, args)
        suffix = f" (version {version})" if version else ""
        print(f"uploaded s3://{bucket}/{key}{suffix}", file=out)


def _upload_target(args: argparse.Namespace) -> tuple[str, str | None] | None:
    if args.upload is None:
        if args.bucket_key_arn or args.expected_bucket_owner:
            raise UsageError("--bucket-key-arn and --expected-bucket-owner need --upload")
        return None
    match = _S3_URL.fullmatch(args.upload)
    if not match:
        raise UsageError(f"--upload {args.upload!r}: expected s3://bucket/prefix/")
    if not args.bucket_key_arn or not _KMS_KEY_ARN.fullmatch(args.bucket_key_arn):
        raise UsageError(
            "--upload needs --bucket-key-arn with the bucket's KMS key ARN "
            "(arn:aws:kms:REGION:ACCOUNT:key/ID; the HostStack output KeyArn)"
        )
    if not args.expected_bucket_owner or not _ACCOUNT.fullmatch(args.expected_bucket_owner):
        raise UsageError(
            "--upload needs --expected-bucket-owner with the host's 12-digit account id"
        )
    return match["bucket"], match["key"]


def _upload(
    session: boto3.session.Session, path: Path, bucket: str, key: str, args: argparse.Namespace
) -> str:
    s3 = session.client("s3")
    extra = {
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": args.bucket_key_arn,
        "ExpectedBucketOwner": args.expected_bucket_owner,
    }
    config = TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD,
        multipart_chunksize=MULTIPART_CHUNKSIZE,
        max_concurrency=UPLOAD_CONCURRENCY,
    )
    progress = _Progress("uploading", total=path.stat().st_size) if sys.stderr.isatty() else None
    # The uploader may only PutObject (no GetObject, hence no HEAD): the version comes from the
    # upload's own response, PutObject's or CompleteMultipartUpload's, whichever ends it.
    versions: list[str] = []

    def record_version(http_response: Any, parsed: dict[str, Any], **_: Any) -> None:
        if parsed.get("VersionId"):
            versions.append(parsed["VersionId"])

    for operation in ("PutObject", "CompleteMultipartUpload"):
        s3.meta.events.register(f"after-call.s3.{operation}", record_version)
    try:
        s3.upload_file(
            str(path),
            bucket,
            key,
            ExtraArgs=extra,
            Config=config,
            Callback=progress.add if progress else None,
        )
    finally:
        if progress is not None:
            progress.done()
    return versions[-1] if versions else ""


# --- decrypt ----------------------------------------------------------------------------------


def _decrypt(args: argparse.Namespace, session: boto3.session.Session, out: TextIO) -> None:
    if not _KMS_KEY_ARN.fullmatch(args.key):
        raise UsageError(
            f"-k {args.key!r}: decryption needs the key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID), "
            "not an alias or key id"
        )
    provider = _kms_provider(args.key)
    with args.input.open("rb", buffering=MIB) as f:
        manifest = unseal_bundle(
            f,
            args.output,
            key_provider=provider,
            expected_app_id=args.app_id,
            expected_app_version=args.app_version,
        )
    entrypoints = ", ".join(sorted(manifest.entrypoints))
    print(
        f"unsealed {args.input} -> {args.output} ({manifest.app_id} {manifest.app_version}; "
        f"entrypoints: {entrypoints})",
        file=out,
    )


# --- progress ---------------------------------------------------------------------------------


class _Progress:
    """A one-line progress display on stderr, redrawn at most five times a second."""

    def __init__(self, label: str, total: int = 0) -> None:
        self.label = label
        self.total = total
        self.current = 0
        self._last = 0.0
        self._shown = False

    def __call__(self, done: int, total: int) -> None:
        self.current, self.total = done, total
        self._draw()

    def add(self, amount: int) -> None:
        self.current += amount
        self._draw()

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.2:
            return
        self._last = now
        percent = f" {100 * self.current // self.total:3d}%" if self.total else ""
        sys.stderr.write(
            f"\r{self.label}: {_size(self.current)} / {_size(self.total)}{percent}\x1b[K"
        )
        sys.stderr.flush()
        self._shown = True

    def done(self) -> None:
        if self._shown:
            self._draw(force=True)
            sys.stderr.write("\n")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < MIB:
        return f"{n / 1024:.1f} KiB"
    if n < 1024 * MIB:
        return f"{n / MIB:.1f} MiB"
    return f"{n / (1024 * MIB):.2f} GiB"


if __name__ == "__main__":
    sys.exit(main())
