"""The simulated principals: the host role and the third party's administrator that a key
policy names, each with simulated credentials the local KMS knows them by (access key id)."""

from __future__ import annotations

import argparse
import json
import re
import secrets
from pathlib import Path
from typing import Any

from client import simstate

PROJECT_ROOT = simstate.PROJECT_ROOT


# An IAM role or user, an assumed-role session, or an account root, as a key policy names them.
PRINCIPAL_ARN = re.compile(r"arn:aws[a-z-]*:(iam::\d{12}:(root|(role|user)/[\w+=,.@/-]{1,512})"
                           r"|sts::\d{12}:assumed-role/[\w+=,.@-]{1,64}/[\w+=,.@-]{2,64})")


def principal_arn(text: str) -> str:
    if not PRINCIPAL_ARN.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an IAM principal ARN; expected e.g. "
            "arn:aws:iam::222222222222:role/NAME or "
            "arn:aws:sts::222222222222:assumed-role/NAME/SESSION")
    return text



def cdk_context() -> dict[str, Any]:
    try:
        context = json.loads((PROJECT_ROOT / "cdk.json").read_text()).get("context", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return context if isinstance(context, dict) else {}


def default_principals(context: dict[str, Any]) -> tuple[str, str]:
    """The host role HostStack creates and a third-party administrator, from cdk.json."""
    host_account = context.get("HostAWSAccountNumber", "222222222222")
    third_account = context.get("ThirdPartyAWSAccountNumber", "111111111111")
    role_name = context.get("HostRoleName") or \
        f"sealed-enclave-host-{context.get('ThirdPartyName', 'third-party')}"[:64]
    host = context.get("HostRoleArn") or f"arn:aws:iam::{host_account}:role/{role_name}"
    return host, f"arn:aws:iam::{third_account}:role/sealed-enclave-third-party-admin"


def new_principal(arn: str) -> dict[str, str]:
    """Simulated credentials: the local KMS identifies callers by access key id."""
    return {"arn": arn, "access_key_id": "ASIASIM" + secrets.token_hex(7).upper(),
            "secret_access_key": secrets.token_urlsafe(30),
            "session_token": secrets.token_urlsafe(48)}


def register_principals(state_dir: Path, principals: dict[str, dict[str, str]]) -> None:
    from client.sim.kms.state import register_principal

    for principal in principals.values():
        register_principal(state_dir, principal["access_key_id"], principal["arn"])
