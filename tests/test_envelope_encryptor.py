"""The sealing command line against moto KMS and S3."""

import http.client
import http.server
import io
import json
import os
import subprocess
import sys
import threading

import boto3
import botocore.exceptions
import pytest
from moto import mock_aws
from moto.server import ThreadedMotoServer

import envelope_encryptor
from envelope_encryptor import ExitStatus, main
from tests.conftest import PROJECT_ROOT

MANIFEST = {
    "format": 1,
    "app_id": "demo-app",
    "app_version": "2.1.0",
    "entrypoints": {"run": {"command": ["python3", "main.py"]}},
}
HOST_ACCOUNT = "123456789012"  # moto's default account
BUCKET = "host-sharing-bucket"
FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


@pytest.fixture
def aws_env(monkeypatch):
    for name, value in FAKE_ENV.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def aws(aws_env):
    """moto KMS and S3: the enclave key, the host's bucket key, the host's bucket."""
    with mock_aws():
        kms = boto3.client("kms", region_name="us-east-1")
        enclave_key = kms.create_key(Description="enclave key")["KeyMetadata"]["Arn"]
        host_key = kms.create_key(Description="host bucket key")["KeyMetadata"]["Arn"]
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        yield {"enclave_key": enclave_key, "host_key": host_key, "s3": s3}


@pytest.fixture
def session():
    """A boto3 session that records every S3 call's operation and parameters."""
    recorded = boto3.session.Session()
    recorded.calls = []

    def record(model, params, **kwargs):
        recorded.calls.append((model.name, dict(params)))

    recorded.events.register("provide-client-params.s3", record)
    return recorded


@pytest.fixture
def app_dir(tmp_path):
    app = tmp_path / "src" / "demo"
    app.mkdir(parents=True)
    (app / "manifest.json").write_text(json.dumps(MANIFEST))
    (app / "main.py").write_text("print('hello')\n")
    return app


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def run(*argv, session=None) -> int:
    return main([str(a) for a in argv], session=session)


def upload_args(aws, url=f"s3://{BUCKET}/encrypted/"):
    return [
        "--upload",
        url,
        "--bucket-key-arn",
        aws["host_key"],
        "--expected-bucket-owner",
        HOST_ACCOUNT,
    ]


# --- encrypt and decrypt ------------------------------------------------------------------------


def test_encrypt_writes_the_default_bundle_name(aws, app_dir, tmp_path, capsys):
    assert run("encrypt", "-d", app_dir, "-k", aws["enclave_key"]) == ExitStatus.OK
    assert (tmp_path / "demo-app-2.1.0.sealed").is_file()
    assert "sealed" in capsys.readouterr().out


def test_encrypt_then_decrypt_restores_the_directory(aws, app_dir, tmp_path, capsys):
    bundle = tmp_path / "build" / "demo-app.sealed"
    assert run("encrypt", "-d", app_dir, "-k", aws["enclave_key"], "-o", bundle) == 0
    out = tmp_path / "check"
    assert run("decrypt", "-i", bundle, "-o", out, "-k", aws["enclave_key"]) == 0
    assert (out / "main.py").read_text() == "print('hello')\n"
    assert "entrypoints: run" in capsys.readouterr().out


def test_matching_app_labels_are_accepted(aws, app_dir):
    argv = ["encrypt", "-d", app_dir, "-k", aws["enclave_key"]]
    assert run(*argv, "--app-id", "demo-app", "--app-version", "2.1.0") == 0


def test_app_id_differing_from_the_manifest_fails_and_writes_nothing(
    aws, app_dir, tmp_path, capsys
):
    status = run("encrypt", "-d", app_dir, "-k", aws["enclave_key"], "--app-id", "other")
    assert status == ExitStatus.INVALID_INPUT
    err = capsys.readouterr().err
    # One line that names both ids, the file to edit and the stack setting to change instead.
    assert err.count("\n") == 1
    assert "--app-id 'other' does not match app_id 'demo-app'" in err
    assert str(app_dir / "manifest.json") in err and "-c AppId=demo-app" in err
    assert list(tmp_path.glob("*.sealed")) == [] and list(tmp_path.glob(".*")) == []


def test_missing_manifest_is_an_input_error(aws, tmp_path, capsys):
    (tmp_path / "app").mkdir()
    assert run("encrypt", "-d", tmp_path / "app", "-k", aws["enclave_key"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no manifest" in err


def test_unknown_kms_key_is_an_aws_error(aws, app_dir, tmp_path, capsys):
    missing = aws["enclave_key"].rsplit("/", 1)[0] + "/00000000-0000-0000-0000-000000000000"
    assert run("encrypt", "-d", app_dir, "-k", missing) == ExitStatus.AWS_ERROR
    assert capsys.readouterr().err.startswith("error: encryption failed")
    assert list(tmp_path.glob("*.sealed")) == []


def test_decrypt_for_another_app_is_rejected(aws, app_dir, tmp_path, capsys):
    bundle = tmp_path / "b.sealed"
    run("encrypt", "-d", app_dir, "-k", aws["enclave_key"], "-o", bundle)
    out = tmp_path / "check"
    argv = ["decrypt", "-i", bundle, "-o", out, "-k", aws["enclave_key"], "--app-id", "x"]
    assert run(*argv) == ExitStatus.BUNDLE_REJECTED
    assert capsys.readouterr().err.startswith("rejected: ")
    assert not out.exists()


def test_decrypt_of_an_altered_bundle_is_rejected(aws, app_dir, tmp_path):
    bundle = tmp_path / "b.sealed"
    run("encrypt", "-d", app_dir, "-k", aws["enclave_key"], "-o", bundle)
    data = bytearray(bundle.read_bytes())
    data[-10] ^= 1
    bundle.write_bytes(bytes(data))
    out = tmp_path / "check"
    assert run("decrypt", "-i", bundle, "-o", out, "-k", aws["enclave_key"]) == 4
    assert not out.exists()


def test_decrypt_needs_a_key_arn(aws, tmp_path, capsys):
    status = run("decrypt", "-i", tmp_path / "x", "-o", tmp_path / "y", "-k", "alias/enclavekey")
    assert status == ExitStatus.USAGE
    assert "needs the key ARN" in capsys.readouterr().err


def test_missing_required_option_is_a_usage_error(capsys):
    assert run("encrypt", "-d", "somewhere") == ExitStatus.USAGE
    assert "-k/--key" in capsys.readouterr().err


def test_no_progress_is_drawn_when_stderr_is_not_a_terminal(aws, app_dir, capsys):
    assert run("encrypt", "-d", app_dir, "-k", aws["enclave_key"]) == 0
    assert capsys.readouterr().err == ""


def test_progress_is_drawn_on_a_terminal(aws, app_dir, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert run("encrypt", "-d", app_dir, "-k", aws["enclave_key"]) == 0
    assert "sealing:" in terminal.getvalue() and "100%" in terminal.getvalue()


# --- upload -------------------------------------------------------------------------------------


def test_upload_stores_the_bundle_with_sse_kms_under_the_prefix(aws, app_dir, session):
    argv = ["encrypt", "-d", app_dir, "-k", aws["enclave_key"], *upload_args(aws)]
    assert run(*argv, session=session) == 0
    head = aws["s3"].head_object(Bucket=BUCKET, Key="encrypted/demo-app-2.1.0.sealed")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == aws["host_key"]


def test_upload_sends_the_expected_bucket_owner(aws, app_dir, session):
    argv = ["encrypt", "-d", app_dir, "-k", aws["enclave_key"], *upload_args(aws)]
    assert run(*argv, session=session) == 0
    puts = [params for name, params in session.calls if name == "PutObject"]
    assert len(puts) == 1
    assert puts[0]["ExpectedBucketOwner"] == HOST_ACCOUNT
    assert puts[0]["SSEKMSKeyId"] == aws["host_key"]


def test_upload_to_an_exact_key(aws, app_dir, session):
    url = f"s3://{BUCKET}/apps/demo/latest.sealed"
    argv = ["encrypt", "-d", app_dir, "-k", aws["enclave_key"], *upload_args(aws, url)]
    assert run(*argv, session=session) == 0
    aws["s3"].head_object(Bucket=BUCKET, Key="apps/demo/latest.sealed")


def test_large_bundle_is_uploaded_in_parts_with_the_same_protections(
    aws, app_dir, session, monkeypatch
):
    monkeypatch.setattr(envelope_encryptor, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)
    monkeypatch.setattr(envelope_encryptor, "MULTIPART_CHUNKSIZE", 5 * 1024 * 1024)
    (app_dir / "model.bin").write_bytes(os.urandom(11 * 1024 * 1024))
    argv = ["encrypt", "-d", app_dir, "-k", aws["enclave_key"], *upload_args(aws)]
    assert run(*argv, session=session) == 0
    names = [name for name, _ in session.calls]
    assert names.count("UploadPart") >= 2 and "PutObject" not in names
    create = next(p for n, p in session.calls if n == "CreateMultipartUpload")
    assert create["ServerSideEncryption"] == "aws:kms"
    assert create["SSEKMSKeyId"] == aws["host_key"]
    assert all(
        p.get("ExpectedBucketOwner") == HOST_ACCOUNT
        for n, p in session.calls
        if n in ("CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload")
    )
    head = aws["s3"].head_object(Bucket=BUCKET, Key="encrypted/demo-app-2.1.0.sealed")
    assert head["ContentLength"] > 11 * 1024 * 1024


def test_upload_to_a_missing_bucket_is_an_aws_error(aws, app_dir, capsys):
    argv = ["encrypt", "-d", app_dir, "-k", aws["enclave_key"]]
    assert run(*argv, *upload_args(aws, "s3://no-such-bucket/x/")) == ExitStatus.AWS_ERROR
    assert capsys.readouterr().err.startswith("AWS error:")


@pytest.mark.parametrize(
    "drop,message",
    [("--bucket-key-arn", "--bucket-key-arn"), ("--expected-bucket-owner", "12-digit")],
)
def test_upload_without_its_protections_is_a_usage_error(aws, app_dir, capsys, drop, message):
    args = upload_args(aws)
    i = args.index(drop)
    del args[i : i + 2]
    assert run("encrypt", "-d", app_dir, "-k", aws["enclave_key"], *args) == ExitStatus.USAGE
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "option,value",
    [
        ("--upload", "https://bucket/prefix/"),
        ("--upload", "s3://"),
        ("--expected-bucket-owner", "12345"),
        ("--bucket-key-arn", "alias/hostkey"),
    ],
)
def test_malformed_upload_option_is_a_usage_error(aws, app_dir, tmp_path, option, value):
    args = upload_args(aws)
    args[args.index(option) + 1] = value
    assert run("encrypt", "-d", app_dir, "-k", aws["enclave_key"], *args) == ExitStatus.USAGE
    assert list(tmp_path.glob("*.sealed")) == []


def test_bucket_options_without_upload_are_a_usage_error(aws, app_dir):
    argv = ["encrypt", "-d", app_dir, "-k", aws["enclave_key"], "--bucket-key-arn"]
    assert run(*argv, aws["host_key"]) == ExitStatus.USAGE


# --- the standard AWS environment ---------------------------------------------------------------


@pytest.fixture
def moto_server():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_command_honours_aws_endpoint_url(aws_env, moto_server, app_dir, tmp_path):
    """The pipeline's exact invocation, as a process, against a KMS/S3 endpoint from the env."""
    kms = boto3.client("kms", endpoint_url=moto_server)
    s3 = boto3.client("s3", endpoint_url=moto_server)
    enclave_key = kms.create_key()["KeyMetadata"]["Arn"]
    host_key = kms.create_key()["KeyMetadata"]["Arn"]
    s3.create_bucket(Bucket=BUCKET)
    env = {**os.environ, **FAKE_ENV, "AWS_ENDPOINT_URL": moto_server}
    command = [
        sys.executable,
        str(PROJECT_ROOT / "envelope_encryptor.py"),
        "encrypt",
        "-d",
        str(app_dir),
        "-k",
        enclave_key,
        "-o",
        "build/demo-app.sealed",
        "--upload",
        f"s3://{BUCKET}/encrypted/",
        "--bucket-key-arn",
        host_key,
        "--expected-bucket-owner",
        HOST_ACCOUNT,
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    head = s3.head_object(Bucket=BUCKET, Key="encrypted/demo-app.sealed")
    assert head["SSEKMSKeyId"] == host_key
    assert (tmp_path / "build" / "demo-app.sealed").stat().st_size == head["ContentLength"]


# --- an S3 endpoint that, like the host's bucket policy, lets the uploader only write --------


class _WriteOnlyS3Proxy(http.server.BaseHTTPRequestHandler):
    """Forwards to moto everything but HEAD and GET, which it refuses as S3 does for a principal
    without s3:GetObject (the third party's case: the bucket policy grants only PutObject)."""

    upstream: tuple[str, int]
    refused: list[str]

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self._refuse()

    def do_GET(self):
        self._refuse()

    def do_PUT(self):
        self._forward()

    def do_POST(self):
        self._forward()

    def do_DELETE(self):
        self._forward()

    def _refuse(self):
        self.refused.append(f"{self.command} {self.path}")
        body = b"" if self.command == "HEAD" else (
            b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
            b"<Message>Access Denied</Message></Error>")
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                chunk = self.rfile.read(size + 2)[:size]
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += chunk
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self):
        body = self._body()
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("transfer-encoding", "content-length", "connection")}
        connection = http.client.HTTPConnection(*self.upstream, timeout=30)
        connection.request(self.command, self.path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        connection.close()


@pytest.fixture
def write_only_s3(aws_env, moto_server, monkeypatch):
    """KMS and S3 from moto; S3 reached only through a proxy that refuses HEAD and GET."""
    host, port = moto_server.removeprefix("http://").split(":")
    refused: list[str] = []
    handler = type("Handler", (_WriteOnlyS3Proxy,),
                   {"upstream": (host, int(port)), "refused": refused})
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    proxy_url = f"http://127.0.0.1:{proxy.server_address[1]}"
    kms = boto3.client("kms", endpoint_url=moto_server)
    s3 = boto3.client("s3", endpoint_url=moto_server)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy_url)
    yield {"enclave_key": kms.create_key()["KeyMetadata"]["Arn"],
           "host_key": kms.create_key()["KeyMetadata"]["Arn"],
           "s3": s3, "proxy_url": proxy_url, "refused": refused}
    proxy.shutdown()
    proxy.server_close()


def test_write_only_endpoint_refuses_what_the_third_party_may_not_do(write_only_s3):
    # Positive control: through the proxy a HEAD is refused, exactly as the real bucket would.
    through_proxy = boto3.client("s3", endpoint_url=write_only_s3["proxy_url"])
    through_proxy.put_object(Bucket=BUCKET, Key="encrypted/probe", Body=b"x")
    with pytest.raises(botocore.exceptions.ClientError, match="403"):
        through_proxy.head_object(Bucket=BUCKET, Key="encrypted/probe")
    assert write_only_s3["refused"] == [f"HEAD /{BUCKET}/encrypted/probe"]


def test_upload_needs_no_read_access_and_reports_the_version(write_only_s3, app_dir, capsys):
    argv = ["encrypt", "-d", app_dir, "-k", write_only_s3["enclave_key"],
            *upload_args(write_only_s3)]
    assert run(*argv) == ExitStatus.OK, capsys.readouterr().err
    assert write_only_s3["refused"] == []
    stored = write_only_s3["s3"].head_object(Bucket=BUCKET, Key="encrypted/demo-app-2.1.0.sealed")
    assert f"(version {stored['VersionId']})" in capsys.readouterr().out


def test_multipart_upload_needs_no_read_access_and_reports_the_version(
    write_only_s3, app_dir, capsys, monkeypatch
):
    monkeypatch.setattr(envelope_encryptor, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)
    monkeypatch.setattr(envelope_encryptor, "MULTIPART_CHUNKSIZE", 5 * 1024 * 1024)
    (app_dir / "model.bin").write_bytes(os.urandom(11 * 1024 * 1024))
    argv = ["encrypt", "-d", app_dir, "-k", write_only_s3["enclave_key"],
            *upload_args(write_only_s3)]
    assert run(*argv) == ExitStatus.OK, capsys.readouterr().err
    assert write_only_s3["refused"] == []
    stored = write_only_s3["s3"].head_object(Bucket=BUCKET, Key="encrypted/demo-app-2.1.0.sealed")
    assert stored["ContentLength"] > 11 * 1024 * 1024
    assert f"(version {stored['VersionId']})" in capsys.readouterr().out
