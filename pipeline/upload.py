"""Upload a build output into the host's sharing bucket: SSE-KMS under the host key, owner checked.

`python -m pipeline.upload FILE s3://bucket/prefix/ --kms-key-id ARN --expected-bucket-owner ID`

The host bucket policy only admits uploads encrypted under its own key, and the expected owner
guards against a bucket name that was taken over by another account. Multipart for large EIFs
(s3transfer carries both settings into every part request).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

_S3_URL = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(?P<key>.*)$")
_ACCOUNT = re.compile(r"^\d{12}$")


class UploadError(ValueError):
    """Bad arguments; the message says what was expected."""


def destination(url: str, file_name: str) -> tuple[str, str]:
    """(bucket, key) for `url`; a key ending in '/' (or empty) gets the file's base name."""
    match = _S3_URL.match(url)
    if not match:
        raise UploadError(f"destination {url!r} is not an S3 URL: expected s3://bucket/prefix/")
    key = match["key"]
    if not key or key.endswith("/"):
        key += os.path.basename(file_name)
    return match["bucket"], key


def upload(s3_client: Any, path: str, url: str, *, kms_key_id: str,
           expected_bucket_owner: str) -> str:
    """Upload `path`; returns the s3:// URL written."""
    if not _ACCOUNT.match(expected_bucket_owner):
        raise UploadError(f"expected bucket owner {expected_bucket_owner!r}: expected a 12-digit "
                          "account number")
    if not os.path.isfile(path):
        raise UploadError(f"{path} is not a file: expected the build output to upload")
    bucket, key = destination(url, path)
    s3_client.upload_file(path, bucket, key, ExtraArgs={
        "ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id,
        "ExpectedBucketOwner": expected_bucket_owner})
    return f"s3://{bucket}/{key}"


def main(argv: Sequence[str] | None = None) -> int:
    import boto3
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    parser = argparse.ArgumentParser(prog="python -m pipeline.upload", description=__doc__)
    parser.add_argument("file")
    parser.add_argument("destination", help="s3://bucket/prefix/ or s3://bucket/key")
    parser.add_argument("--kms-key-id", required=True, help="the host bucket's KMS key ARN")
    parser.add_argument("--expected-bucket-owner", required=True, help="host account number")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 0 if exc.code == 0 else 2
    try:
        written = upload(boto3.client("s3"), args.file, args.destination,
                         kms_key_id=args.kms_key_id,
                         expected_bucket_owner=args.expected_bucket_owner)
    except UploadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
        print(f"error: upload failed: {exc}", file=sys.stderr)
        return 1
    print(f"uploaded {args.file} to {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
