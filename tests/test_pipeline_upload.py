"""The builds' upload helper: SSE-KMS under the host key, expected owner, against moto S3."""

import boto3
import pytest
from moto import mock_aws

from pipeline.upload import UploadError, destination, main, upload

HOST_KEY = "arn:aws:kms:us-east-1:222222222222:key/00000000-0000-4000-8000-000000000001"


@pytest.fixture
def s3(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="host-bucket")
        yield client


def test_prefix_destination_gets_the_file_name():
    assert destination("s3://host-bucket/enclave-images/", "build/enclave.eif") == \
        ("host-bucket", "enclave-images/enclave.eif")


def test_full_key_destination_is_kept():
    assert destination("s3://host-bucket/a/app.eif", "enclave.eif") == ("host-bucket", "a/app.eif")


@pytest.mark.parametrize("url", ["host-bucket/x", "s3://", "https://host-bucket/x"])
def test_non_s3_destination_is_refused(url):
    with pytest.raises(UploadError, match="not an S3 URL"):
        destination(url, "f")


def test_upload_encrypts_under_the_host_key(s3, tmp_path):
    path = tmp_path / "enclave.eif"
    path.write_bytes(b"eif")
    written = upload(s3, str(path), "s3://host-bucket/enclave-images/", kms_key_id=HOST_KEY,
                     expected_bucket_owner="123456789012")
    head = s3.head_object(Bucket="host-bucket", Key="enclave-images/enclave.eif")
    assert written == "s3://host-bucket/enclave-images/enclave.eif"
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"].endswith(HOST_KEY.rsplit("/", 1)[1])


def test_malformed_expected_owner_is_refused_before_any_call(tmp_path):
    path = tmp_path / "f"
    path.write_text("x")
    with pytest.raises(UploadError, match="12-digit"):
        upload(None, str(path), "s3://host-bucket/", kms_key_id=HOST_KEY,
               expected_bucket_owner="host")


def test_cli_missing_file_is_a_usage_error(s3, tmp_path, capsys):
    status = main([str(tmp_path / "absent"), "s3://host-bucket/p/", "--kms-key-id", HOST_KEY,
                   "--expected-bucket-owner", "123456789012"])
    assert status == 2
    assert "not a file" in capsys.readouterr().err
