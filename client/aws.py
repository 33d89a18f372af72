"""AWS credentials and region for the host, from IMDSv2 first.

The enclave host's role credentials come from the instance metadata service, version 2 only
(a session token from `PUT /latest/api/token`, then the role's credentials). Credentials set
explicitly in the environment or a named profile override it; when IMDS is unreachable (not on
EC2), the standard boto3 chain is the fallback. `AWS_EC2_METADATA_SERVICE_ENDPOINT` moves the
endpoint (tests point it at a loopback server) and `AWS_EC2_METADATA_DISABLED=true` skips it.
The region: `--region`, the environment, the host settings file (`client.hostconfig`), IMDSv2,
then boto3's configuration.
"""

from __future__ import annotations

import http.client
import json
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from client.errors import AwsError
from client.hostconfig import load_host_config

DEFAULT_ENDPOINT = "http://169.254.169.254"
TOKEN_TTL_SECONDS = 21600
TIMEOUT = 2.0


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None
    source: str  # "imds", "environment", "boto3:<method>", "simulation"
    expiration: str | None = None

    def as_request(self) -> dict[str, str | None]:
        """The `credentials` object of a run request (ARCHITECTURE.md, POST /v1/runs)."""
        return {"access_key_id": self.access_key_id, "secret_access_key": self.secret_access_key,
                "session_token": self.session_token}

    def __repr__(self) -> str:  # never print secrets by accident
        return f"Credentials(access_key_id={self.access_key_id!r}, source={self.source!r})"


class ImdsUnavailable(Exception):
    """IMDS could not be reached at all (not on EC2, or disabled)."""


class Imds:
    """A minimal IMDSv2 client: one token per instance of this class."""

    def __init__(self, endpoint: str | None = None, timeout: float = TIMEOUT) -> None:
        endpoint = (endpoint or os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
                    or DEFAULT_ENDPOINT)
        try:
            parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
            port = parts.port or 80
        except ValueError:
            parts, port = None, 0
        if parts is None or parts.scheme != "http" or not parts.hostname:
            raise AwsError(f"IMDS endpoint {endpoint!r} is not an http://host[:port] URL; fix "
                           "AWS_EC2_METADATA_SERVICE_ENDPOINT")
        self.host = parts.hostname
        self.port = port
        self.timeout = timeout
        self._token: str | None = None

    def _call(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request(method, path, headers=headers)
            response = conn.getresponse()
            return response.status, response.read(1 << 20)
        except (OSError, http.client.HTTPException) as exc:
            raise ImdsUnavailable(f"IMDS at {self.host}:{self.port} unreachable: {exc}") from exc
        finally:
            conn.close()

    def token(self) -> str:
        if self._token is None:
            ttl = {"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_SECONDS)}
            status, body = self._call("PUT", "/latest/api/token", ttl)
            if status != 200 or not body:
                raise AwsError(f"not on an EC2 instance, or its metadata service is unreachable "
                               f"from here: IMDSv2 refused a session token (HTTP {status}). Off "
                               "EC2, pass --region (or set AWS_REGION) and AWS credentials; on "
                               "EC2, check the instance's metadata options (http-tokens "
                               "required, hop limit >= 1)")
            self._token = body.decode().strip()
        return self._token

    def get(self, path: str) -> bytes:
        status, body = self._call("GET", path, {"X-aws-ec2-metadata-token": self.token()})
        if status == 404:
            raise AwsError(f"IMDS has nothing at {path}; is an instance profile (IAM role) "
                           "attached to this instance?")
        if status != 200:
            raise AwsError(f"IMDS answered HTTP {status} for {path}; retry, or check the "
                           "instance's metadata options")
        return body

    def region(self) -> str:
        document = self._json("/latest/dynamic/instance-identity/document")
        region = document.get("region")
        if not region:
            raise AwsError("the IMDS identity document has no region; pass --region")
        return str(region)

    def role_credentials(self) -> Credentials:
        roles = self.get("/latest/meta-data/iam/security-credentials/").decode().split()
        if not roles:
            raise AwsError("no IAM role is attached to this instance; attach the host role "
                           "(HostStack output) as its instance profile")
        data = self._json(f"/latest/meta-data/iam/security-credentials/{roles[0]}")
        if data.get("Code", "Success") != "Success" or not data.get("AccessKeyId"):
            raise AwsError(f"IMDS could not provide credentials for role {roles[0]} "
                           f"({data.get('Code')}: {data.get('Message', 'no message')})")
        return Credentials(data["AccessKeyId"], data["SecretAccessKey"], data.get("Token"),
                           source="imds", expiration=data.get("Expiration"))

    def _json(self, path: str) -> dict[str, Any]:
        try:
            value = json.loads(self.get(path))
        except ValueError as exc:
            raise AwsError(f"IMDS returned something that is not JSON for {path}") from exc
        if not isinstance(value, dict):
            raise AwsError(f"IMDS returned a JSON value that is not an object for {path}")
        return value


def imds_disabled() -> bool:
    return os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true"


def explicit_credentials_configured() -> bool:
    """Credentials the user chose on purpose (environment keys or a named profile) win over IMDS."""
    return bool(os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE"))


def boto3_credentials() -> Credentials:
    import boto3  # imported late: it is slow to import and often not needed

    found = boto3.Session().get_credentials()
    if found is None:
        raise AwsError("no AWS credentials found: not on an EC2 instance with a role, and none in "
                       "the environment or ~/.aws; attach the host role or set AWS_PROFILE")
    frozen = found.get_frozen_credentials()
    method = getattr(found, "method", "unknown")
    source = "environment" if method == "env" else f"boto3:{method}"
    return Credentials(frozen.access_key, frozen.secret_key, frozen.token, source=source)


def get_credentials(imds: Imds | None = None) -> Credentials:
    if explicit_credentials_configured() or imds_disabled():
        return boto3_credentials()
    try:
        return (imds or Imds()).role_credentials()
    except ImdsUnavailable:
        return boto3_credentials()


def get_region(explicit: str | None = None, imds: Imds | None = None) -> str:
    """`--region`, the environment, the host settings file, IMDSv2, then boto3's configuration."""
    region = explicit or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        return region
    host = load_host_config()
    if host is not None:
        return host.region
    if not imds_disabled():
        try:
            return (imds or Imds()).region()
        except ImdsUnavailable:
            pass
    import boto3

    session_region = boto3.Session().region_name
    if isinstance(session_region, str) and session_region:
        return session_region
    raise AwsError("no AWS region known: not on EC2 and none configured; pass --region or set "
                   "AWS_REGION")
