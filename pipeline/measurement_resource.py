"""CloudFormation custom resource: re-merge recorded measurements into the enclave key policy.

CloudFormation replaces the whole key policy whenever the template's policy changes, which would
drop every measurement the pipeline added since. This handler runs right after such an update
(`constructs/enclave_key.py` `MeasurementKeeper`): it reads the policy CloudFormation just wrote,
adds back the measurements the pipeline recorded in SSM (`allowlist.merge_recorded`, newest `Keep`),
and writes the result. It answers CloudFormation itself (no provider framework): one PUT of the
response document to the pre-signed `ResponseURL`.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from pipeline import allowlist


def restore_measurements(kms_client: Any, ssm_client: Any, *, key_id: str,
                         record_parameter: str, keep: int) -> list[str]:
    """Merge the recorded measurements into the key policy; returns the allowed list."""
    policy = allowlist.load_policy(kms_client, key_id)
    record = allowlist.read_record(ssm_client, record_parameter)
    merged = allowlist.merge_recorded(policy, record, keep=keep)
    if merged != policy:
        allowlist.store_policy(kms_client, key_id, merged)
    return allowlist.allowed_measurements(merged)


def _respond(event: dict[str, Any], status: str, reason: str, data: dict[str, str]) -> None:
    url = event["ResponseURL"]
    if not url.startswith("https://"):
        raise ValueError(f"ResponseURL {url[:40]!r} is not https")
    physical_id = f"measurement-keeper-{event['ResourceProperties']['RecordParameter']}"
    body = json.dumps({
        "Status": status, "Reason": reason[:1000],
        "PhysicalResourceId": physical_id,
        "StackId": event["StackId"], "RequestId": event["RequestId"],
        "LogicalResourceId": event["LogicalResourceId"], "Data": data,
    }).encode()
    request = urllib.request.Request(url, data=body, method="PUT",  # noqa: S310 (https checked)
                                     headers={"Content-Type": "", "Content-Length": str(len(body))})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        response.read()


def handler(event: dict[str, Any], context: Any) -> None:
    """Lambda entry point for Create/Update/Delete of Custom::EnclaveMeasurementKeeper."""
    import boto3

    data: dict[str, str] = {}
    try:
        if event["RequestType"] in ("Create", "Update"):
            props = event["ResourceProperties"]
            allowed = restore_measurements(
                boto3.client("kms"), boto3.client("ssm"), key_id=props["KeyId"],
                record_parameter=props["RecordParameter"], keep=int(props["Keep"]))
            data["Allowed"] = ",".join(allowed)
            print(f"allowed measurements (newest last): {allowed}")
        # Delete: the key outlives the stack (RETAIN) and the record is not ours to remove.
    except Exception as exc:  # noqa: BLE001 - any failure must reach CloudFormation, not hang it
        print(f"error: {exc}")
        _respond(event, "FAILED", f"{type(exc).__name__}: {exc}", {})
        return
    _respond(event, "SUCCESS", "ok", data)
