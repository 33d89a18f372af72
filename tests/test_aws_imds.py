"""client/aws.py against a fake IMDSv2 on loopback."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from client import aws
from client.errors import AwsError

ROLE = "sealed-enclave-host"
CREDS = {"Code": "Success", "AccessKeyId": "ASIAIMDS", "SecretAccessKey": "imds-secret",
         "Token": "imds-token", "Expiration": "2030-01-01T00:00:00Z", "Type": "AWS-HMAC"}


class FakeImds:
    def __init__(self, *, v1_only: bool = False, role: str | None = ROLE) -> None:
        self.requests: list[tuple[str, str, dict]] = []
        self.tokens: set[str] = set()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def reply(self, status, body=b"", ctype="text/plain"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self):
                fake.requests.append(("PUT", self.path, dict(self.headers)))
                ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
                if v1_only:
                    return self.reply(403)
                if self.path != "/latest/api/token" or not ttl or not 1 <= int(ttl) <= 21600:
                    return self.reply(400)
                token = f"token-{len(fake.tokens)}"
                fake.tokens.add(token)
                self.reply(200, token.encode())

            def do_GET(self):
                fake.requests.append(("GET", self.path, dict(self.headers)))
                if self.headers.get("X-aws-ec2-metadata-token") not in fake.tokens:
                    return self.reply(401)  # IMDSv2 only: no token, no answer
                base = "/latest/meta-data/iam/security-credentials/"
                if self.path == base:
                    return self.reply(200, role.encode()) if role else self.reply(404)
                if role and self.path == base + role:
                    return self.reply(200, json.dumps(CREDS).encode(), "application/json")
                if self.path == "/latest/dynamic/instance-identity/document":
                    doc = {"region": "ap-southeast-2", "instanceId": "i-0abc"}
                    return self.reply(200, json.dumps(doc).encode(), "application/json")
                self.reply(404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))


@pytest.fixture
def imds(monkeypatch):
    fake = FakeImds()
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", fake.endpoint)
    yield fake
    fake.close()


def test_role_credentials_from_imdsv2(imds):
    creds = aws.get_credentials()
    assert (creds.access_key_id, creds.secret_access_key, creds.session_token, creds.source) == \
        ("ASIAIMDS", "imds-secret", "imds-token", "imds")


def test_token_is_requested_with_a_ttl_then_sent_on_every_get(imds):
    aws.get_credentials()
    put = [r for r in imds.requests if r[0] == "PUT"]
    assert len(put) == 1 and put[0][1] == "/latest/api/token"
    assert int(put[0][2]["X-aws-ec2-metadata-token-ttl-seconds"]) == 21600
    gets = [r for r in imds.requests if r[0] == "GET"]
    assert gets and all(r[2].get("X-aws-ec2-metadata-token") == "token-0" for r in gets)


def test_region_from_identity_document(imds):
    assert aws.get_region() == "ap-southeast-2"


def test_explicit_region_wins(imds, monkeypatch):
    assert aws.get_region("us-west-2") == "us-west-2"
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    assert aws.get_region() == "eu-central-1"
    assert not imds.requests


def test_environment_credentials_override_imds(imds, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    creds = aws.get_credentials()
    assert creds.access_key_id == "AKIAENV" and creds.source == "environment"
    assert not imds.requests


def test_imdsv1_only_endpoint_is_refused(monkeypatch):
    fake = FakeImds(v1_only=True)
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", fake.endpoint)
    try:
        with pytest.raises(AwsError, match="IMDSv2 refused a session token"):
            aws.get_credentials()
    finally:
        fake.close()


def test_instance_without_role_says_attach_one(monkeypatch):
    fake = FakeImds(role=None)
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", fake.endpoint)
    try:
        with pytest.raises(AwsError, match="instance profile"):
            aws.get_credentials()
    finally:
        fake.close()


def test_unreachable_imds_falls_back_to_the_boto3_chain(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
    (tmp_path / "credentials").write_text(
        "[default]\naws_access_key_id = AKIAFILE\naws_secret_access_key = file-secret\n")
    creds = aws.get_credentials(aws.Imds(timeout=0.5))
    assert creds.access_key_id == "AKIAFILE" and creds.source.startswith("boto3:")


def test_no_credentials_anywhere_is_an_aws_error(monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(AwsError, match="no AWS credentials found"):
        aws.get_credentials()


def test_credentials_repr_hides_the_secret(imds):
    assert "imds-secret" not in repr(aws.get_credentials())


def test_bad_endpoint_setting_is_reported(monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "https://[::1")
    with pytest.raises(AwsError, match="AWS_EC2_METADATA_SERVICE_ENDPOINT"):
        aws.Imds()
