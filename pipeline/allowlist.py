"""The enclave key's measurement allow list: read, add and record image measurements.

The enclave key policy (written by `constructs/enclave_key.py`) names the enclave images the host
may decrypt with in statements found by their Sid, never by text position:

- `AllowAttestedEnclaveDecrypt` (Allow, `StringEqualsIgnoreCase`) and `DenyDecryptUnlistedImage`
  (Deny, `StringNotEqualsIgnoreCase`) carry the same list under
  `kms:RecipientAttestation:ImageSha384`;
- `DenyDecryptUnlistedSigner` (Deny, `StringNotEqualsIgnoreCase`) exists only when a signer is
  pinned; then the Allow statement and it carry the same list under `kms:RecipientAttestation:PCR8`.

These are the operators of the KMS Developer Guide's Nitro Enclaves examples (a digest is hex, so
its case carries no meaning). Policies deployed before, with `StringEquals`/`StringNotEquals` on
these keys, are read too, and each list is written back under the operator it was found under.

Lists are kept in insertion order, **newest last**; keeping N drops from the front. A value already
on a list keeps its place, so adding it again changes nothing (idempotent). While no image is
allowed the lists hold `PLACEHOLDER`, which is not hexadecimal and so can never equal the
lowercase-hex digest an attestation carries: the Allow admits nothing and the Deny denies all.

`add_measurement` and `merge_recorded` are pure; `main()` is the thin CLI the
`nitro-image-builder` build runs (`python -m pipeline.allowlist add ...`). Besides the key policy,
`add` can record what it added in an SSM parameter outside CloudFormation, so a later
`cdk deploy` can re-merge it (`pipeline/measurement_resource.py`).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

IMAGE_KEY = "kms:RecipientAttestation:ImageSha384"
PCR8_KEY = "kms:RecipientAttestation:PCR8"
APP_ID_KEY = "kms:EncryptionContext:app_id"

ADMIN_SID = "EnableKeyAdministration"
ALLOW_SID = "AllowAttestedEnclaveDecrypt"
DENY_NO_ATTESTATION_SID = "DenyDecryptWithoutAttestation"
DENY_UNLISTED_IMAGE_SID = "DenyDecryptUnlistedImage"
DENY_UNLISTED_SIGNER_SID = "DenyDecryptUnlistedSigner"
DENY_OTHER_USE_SID = "DenyHostAnyOtherKeyUse"

# The operator a statement carries its measurement list under, preferred first.
ALLOW_OPERATORS = ("StringEqualsIgnoreCase", "StringEquals")
DENY_OPERATORS = ("StringNotEqualsIgnoreCase", "StringNotEquals")

PLACEHOLDER = "NO-IMAGE-ALLOWED-YET"
POLICY_NAME = "default"

_SHA384_HEX = re.compile(r"^[0-9a-fA-F]{96}$")
_ZERO_DIGEST = "0" * 96

EXIT_OK = 0
EXIT_AWS_ERROR = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3


class AllowListError(ValueError):
    """Input or policy the tool will not act on; the message says what to do next."""


class MeasurementError(AllowListError):
    """A measurement (or the nitro-cli output carrying it) is malformed."""


class PolicyError(AllowListError):
    """The key policy is not one this tool recognises; it is left untouched."""


@dataclass(frozen=True)
class Measurements:
    """What `nitro-cli build-enclave` printed: PCR0 (= ImageSha384) and, for signed images, PCR8."""

    pcr0: str
    pcr8: str | None = None


@dataclass(frozen=True)
class Record:
    """Measurements the pipeline added, newest last, kept outside CloudFormation."""

    image_sha384: tuple[str, ...] = ()
    pcr8: tuple[str, ...] = ()


def validate_measurement(value: object, name: str = "PCR0") -> str:
    """Return `value` as 96 lowercase hex digits; refuse anything else, and refuse all zeros."""
    if not isinstance(value, str) or not _SHA384_HEX.match(value):
        raise MeasurementError(
            f"{name} {value!r} is malformed: expected 96 hexadecimal characters (a SHA-384 "
            "digest as printed by nitro-cli build-enclave); check the measurements file")
    value = value.lower()
    if value == _ZERO_DIGEST:
        # Debug-mode enclaves report all-zero PCRs; allowing zeros would admit any of them.
        raise MeasurementError(
            f"{name} is all zeros, the value every debug-mode enclave reports: refusing to allow "
            "it; build the image without --debug-mode")
    return value


def parse_measurements(text: str) -> Measurements:
    """Parse the JSON `nitro-cli build-enclave` prints on stdout."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MeasurementError(
            f"measurements file is not JSON ({exc.msg} at line {exc.lineno}): expected the "
            "output of `nitro-cli build-enclave ... > measurements.json`") from exc
    block = document.get("Measurements") if isinstance(document, dict) else None
    if not isinstance(block, dict):
        raise MeasurementError(
            'measurements file has no "Measurements" object: expected the output of '
            "`nitro-cli build-enclave`")
    algorithm = block.get("HashAlgorithm")
    if not isinstance(algorithm, str) or not algorithm.startswith("Sha384"):
        raise MeasurementError(
            f"measurements use hash algorithm {algorithm!r}: expected Sha384, the only one KMS "
            "attestation conditions compare")
    pcr0 = validate_measurement(block.get("PCR0"), "PCR0")
    pcr8 = block.get("PCR8")
    return Measurements(pcr0=pcr0, pcr8=validate_measurement(pcr8, "PCR8") if pcr8 else None)


# ---------------------------------------------------------------------------------------------
# Policy access


def _statements(policy: object) -> list[dict[str, Any]]:
    statements = policy.get("Statement") if isinstance(policy, dict) else None
    if not isinstance(statements, list) or not all(isinstance(s, dict) for s in statements):
        raise PolicyError(
            'key policy has no "Statement" list: expected the policy ThirdPartyStack deploys; '
            "redeploy the stack")
    return statements


def _statement(policy: dict[str, Any], sid: str, *, required: bool = True) -> dict[str, Any] | None:
    found = [s for s in _statements(policy) if s.get("Sid") == sid]
    if len(found) > 1:
        raise PolicyError(f"key policy has {len(found)} statements with Sid {sid!r}: expected one")
    if not found:
        if required:
            raise PolicyError(
                f"key policy has no statement with Sid {sid!r}: this is not a policy this tool "
                "manages (expected the one ThirdPartyStack deploys); nothing was changed")
        return None
    return found[0]


def _list_operator(statement: dict[str, Any], key: str) -> str:
    """The operator under which `statement` lists values for `key` (see ALLOW_OPERATORS)."""
    sid = statement.get("Sid")
    effect = statement.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise PolicyError(f"statement {sid!r} has Effect {effect!r}; nothing was changed")
    operators = ALLOW_OPERATORS if effect == "Allow" else DENY_OPERATORS
    conditions = statement.get("Condition", {})
    found = [op for op in operators
             if isinstance(conditions.get(op), dict) and key in conditions[op]]
    if len(found) != 1:
        raise PolicyError(f"statement {sid!r} has {'no' if not found else 'more than one'} "
                          f"{' or '.join(operators)} condition on {key}: expected one list of "
                          "measurements; nothing was changed")
    return found[0]


def _values(statement: dict[str, Any], key: str, effect: str) -> list[str]:
    sid = statement.get("Sid")
    if statement.get("Effect") != effect:
        raise PolicyError(f"statement {sid!r} has Effect {statement.get('Effect')!r}: expected "
                          f"{effect!r}; nothing was changed")
    operator = _list_operator(statement, key)
    values = statement["Condition"][operator][key]
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise PolicyError(f"statement {sid!r} has no {operator} condition on {key}: expected a "
                          "list of measurements; nothing was changed")
    return values


def _checked_list(values: list[str], where: str) -> list[str]:
    """A list from the policy: the placeholder alone, or valid measurements."""
    if values == [PLACEHOLDER]:
        return []
    for value in values:
        if value == PLACEHOLDER:
            raise PolicyError(f"{where} mixes the placeholder with measurements; "
                              "nothing was changed")
        validate_measurement(value, where)
    return [v.lower() for v in values]


def _pair(policy: dict[str, Any], deny_sid: str,
          key: str) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """The Allow and Deny statements for one condition key, and their (equal) lists."""
    allow = _statement(policy, ALLOW_SID)
    deny = _statement(policy, deny_sid)
    assert allow is not None and deny is not None
    allowed = _checked_list(_values(allow, key, "Allow"), f"{ALLOW_SID} {key}")
    denied = _checked_list(_values(deny, key, "Deny"), f"{deny_sid} {key}")
    if allowed != denied:
        raise PolicyError(
            f"statements {ALLOW_SID!r} and {deny_sid!r} list different values for {key}: the "
            "policy was edited by hand; make them equal (or redeploy the stack), then retry")
    return allow, deny, allowed


def _check_no_attestation_deny(policy: dict[str, Any]) -> None:
    deny = _statement(policy, DENY_NO_ATTESTATION_SID)
    assert deny is not None
    if deny.get("Effect") != "Deny" or deny.get("Condition", {}).get("Null", {}).get(IMAGE_KEY) \
            not in ("true", True):
        raise PolicyError(f"statement {DENY_NO_ATTESTATION_SID!r} is not the Deny on a missing "
                          "attestation: expected the policy ThirdPartyStack deploys")


def allowed_measurements(policy: dict[str, Any]) -> list[str]:
    """The allowed image measurements (PCR0), oldest first; empty while none is allowed."""
    images = _pair(policy, DENY_UNLISTED_IMAGE_SID, IMAGE_KEY)[2]
    _check_no_attestation_deny(policy)
    return images


def allowed_signers(policy: dict[str, Any]) -> list[str] | None:
    """The allowed PCR8 values, oldest first, or None when the policy pins no signer."""
    if _statement(policy, DENY_UNLISTED_SIGNER_SID, required=False) is None:
        return None
    return _pair(policy, DENY_UNLISTED_SIGNER_SID, PCR8_KEY)[2]


def _set(statements: Sequence[dict[str, Any]], key: str, values: list[str]) -> None:
    stored = values or [PLACEHOLDER]
    for statement in statements:
        statement["Condition"][_list_operator(statement, key)][key] = list(stored)


def _append_keep(values: list[str], new: str, keep: int) -> list[str]:
    if new not in values:
        values = [*values, new]
    return values[-keep:]


def add_measurement(policy: dict[str, Any], pcr0: str, *, keep: int,
                    pcr8: str | None = None) -> dict[str, Any]:
    """Return a copy of `policy` with `pcr0` allowed (newest last), keeping the newest `keep`.

    With `pcr8`, the signer list is updated the same way; that requires a policy that pins a
    signer (deployed with AllowedSignerPcr8). Raises `AllowListError`; the input is never modified.
    """
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise AllowListError(f"keep={keep!r}: expected a whole number of at least 1")
    pcr0 = validate_measurement(pcr0, "PCR0")
    pcr8 = validate_measurement(pcr8, "PCR8") if pcr8 is not None else None
    result = copy.deepcopy(policy)
    allow, deny, images = _pair(result, DENY_UNLISTED_IMAGE_SID, IMAGE_KEY)
    _check_no_attestation_deny(result)
    signer_deny = _statement(result, DENY_UNLISTED_SIGNER_SID, required=False)
    if pcr8 is not None and signer_deny is None:
        raise PolicyError(
            "a PCR8 was given but the key policy pins no signer: deploy ThirdPartyStack with "
            "-c AllowedSignerPcr8=<pcr8> first (adding a signer pin here would cut off every "
            "unsigned image at once); nothing was changed")
    _set((allow, deny), IMAGE_KEY, _append_keep(images, pcr0, keep))
    if pcr8 is not None:
        _add_signer(result, pcr8, keep)
    return result


def _add_signer(policy: dict[str, Any], pcr8: str, keep: int) -> None:
    allow, signer_deny, signers = _pair(policy, DENY_UNLISTED_SIGNER_SID, PCR8_KEY)
    _set((allow, signer_deny), PCR8_KEY, _append_keep(signers, pcr8, keep))


def merge_recorded(policy: dict[str, Any], record: Record, *, keep: int) -> dict[str, Any]:
    """Re-add what the pipeline recorded, in its order, after the policy's own values.

    This is what runs after CloudFormation rewrote the policy from the template: the result is the
    newest `keep` of (the template's measurements, then the recorded ones). Recorded signers are
    merged only into a policy that pins a signer (AllowedSignerPcr8 set).
    """
    result = copy.deepcopy(policy)
    for pcr0 in record.image_sha384:
        result = add_measurement(result, pcr0, keep=keep)
    if allowed_signers(result) is not None:
        for pcr8 in record.pcr8:
            _add_signer(result, validate_measurement(pcr8, "PCR8"), keep)
    return result


# ---------------------------------------------------------------------------------------------
# The record kept in SSM Parameter Store (outside CloudFormation)


def parse_record(text: str | None) -> Record:
    """Parse the recorded measurements; None (no parameter yet) is an empty record."""
    if text is None:
        return Record()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AllowListError(f"measurement record is not JSON ({exc.msg}): expected "
                             '{"ImageSha384": [...], "PCR8": [...]}; fix or delete the '
                             "parameter") from exc
    if not isinstance(data, dict) or set(data) - {"ImageSha384", "PCR8"}:
        raise AllowListError('measurement record has unexpected fields: expected '
                             '{"ImageSha384": [...], "PCR8": [...]}; fix or delete the parameter')
    lists = []
    for name in ("ImageSha384", "PCR8"):
        values = data.get(name, [])
        if not isinstance(values, list):
            raise AllowListError(f"measurement record {name} is not a list; fix or delete the "
                                 "parameter")
        lists.append(tuple(validate_measurement(v, f"recorded {name}") for v in values))
    return Record(image_sha384=lists[0], pcr8=lists[1])


def record_text(record: Record) -> str:
    return json.dumps({"ImageSha384": list(record.image_sha384), "PCR8": list(record.pcr8)},
                      separators=(",", ":"))


def add_to_record(record: Record, measurements: Measurements, *, keep: int,
                  with_pcr8: bool) -> Record:
    images = _append_keep(list(record.image_sha384), measurements.pcr0, keep)
    signers = list(record.pcr8)
    if with_pcr8 and measurements.pcr8:
        signers = _append_keep(signers, measurements.pcr8, keep)
    return Record(image_sha384=tuple(images), pcr8=tuple(signers))


def read_record(ssm_client: Any, name: str) -> Record:
    try:
        response = ssm_client.get_parameter(Name=name)
    except ssm_client.exceptions.ParameterNotFound:
        return parse_record(None)
    return parse_record(response["Parameter"]["Value"])


def write_record(ssm_client: Any, name: str, record: Record) -> None:
    # Intelligent-Tiering: a long allow list (up to 50 digests) outgrows a standard parameter.
    ssm_client.put_parameter(Name=name, Value=record_text(record), Type="String",
                             Overwrite=True, Tier="Intelligent-Tiering",
                             Description="Enclave image measurements added by the sealing "
                                         "pipeline (newest last); re-merged on cdk deploy")


# ---------------------------------------------------------------------------------------------
# KMS I/O


def load_policy(kms_client: Any, key_id: str) -> dict[str, Any]:
    text = kms_client.get_key_policy(KeyId=key_id, PolicyName=POLICY_NAME)["Policy"]
    try:
        policy = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyError(f"key policy of {key_id} is not JSON ({exc.msg})") from exc
    _statements(policy)  # a JSON object with a Statement list, or PolicyError
    return cast(dict[str, Any], policy)


def store_policy(kms_client: Any, key_id: str, policy: dict[str, Any]) -> None:
    kms_client.put_key_policy(KeyId=key_id, PolicyName=POLICY_NAME, Policy=json.dumps(policy))


def add_to_key(kms_client: Any, key_id: str, measurements: Measurements, *, keep: int,
               with_pcr8: bool = False, ssm_client: Any = None,
               record_parameter: str | None = None) -> tuple[bool, list[str]]:
    """Allow `measurements` on the key; returns (policy changed, allowed list newest last).

    With a record parameter, every add re-merges the whole record, not just the new value, and
    records before it writes the policy. Both the deploy-time keeper and this tool
    read-modify-write the policy with no lock KMS could give them; this way, whichever write
    lands last, a measurement a deploy (or a concurrent keeper) dropped is back at the next add,
    and a keeper running after this record write already sees the new measurement.
    """
    if with_pcr8 and not measurements.pcr8:
        raise MeasurementError("--pcr8 was given but the measurements have no PCR8: build a "
                               "signed image (--signing-certificate/--private-key) or drop --pcr8")
    policy = load_policy(kms_client, key_id)
    record = new_record = Record()
    if record_parameter:
        record = read_record(ssm_client, record_parameter)
        new_record = add_to_record(record, measurements, keep=keep, with_pcr8=with_pcr8)
    # Computed in full before anything is written: a policy this tool refuses changes nothing.
    updated = add_measurement(merge_recorded(policy, record, keep=keep), measurements.pcr0,
                              keep=keep, pcr8=measurements.pcr8 if with_pcr8 else None)
    if record_parameter and new_record != record:
        write_record(ssm_client, record_parameter, new_record)
    changed = updated != policy
    if changed:
        store_policy(kms_client, key_id, updated)
    return changed, allowed_measurements(updated)


# ---------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.allowlist",
        description="Manage the enclave key's allowed image measurements (newest last).",
        epilog="Exit codes: 0 done (or nothing to change), 1 AWS call failed, 2 bad usage or "
               "malformed measurements, 3 key policy not recognised (left untouched).")
    parser.add_argument("--region", help="AWS region (default: the standard AWS environment)")
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="allow the PCR0 from a nitro-cli build-enclave output")
    add.add_argument("--key-id", required=True, help="enclave key ARN, id or alias")
    add.add_argument("--measurements", required=True,
                     help="file with the JSON nitro-cli build-enclave printed ('-' for stdin)")
    add.add_argument("--keep", type=int, default=3,
                     help="how many allowed measurements to keep, newest last (default 3)")
    add.add_argument("--pcr8", action="store_true",
                     help="also allow the file's PCR8 (the policy must pin a signer)")
    add.add_argument("--record-parameter",
                     help="SSM parameter recording the added measurements, so a later cdk "
                          "deploy keeps them")
    show = sub.add_parser("list", help="print the allowed measurements, oldest first")
    show.add_argument("--key-id", required=True, help="enclave key ARN, id or alias")
    show.add_argument("--json", action="store_true", help="print a JSON object")
    return parser


def _read_text(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise MeasurementError(f"cannot read measurements file {path}: {exc.strerror}") from exc


def _add(args: argparse.Namespace, session: Any, kms_client: Any) -> None:
    """`add`: allow the measurements file's image (and record it), then print the allow list."""
    if args.keep < 1:
        raise MeasurementError(f"--keep {args.keep}: expected a whole number >= 1")
    measurements = parse_measurements(_read_text(args.measurements))
    ssm_client = session.client("ssm") if args.record_parameter else None
    changed, allowed = add_to_key(kms_client, args.key_id, measurements, keep=args.keep,
                                  with_pcr8=args.pcr8, ssm_client=ssm_client,
                                  record_parameter=args.record_parameter)
    state = "allowed" if changed else "already allowed (policy unchanged)"
    print(f"PCR0 {measurements.pcr0} {state}; {len(allowed)} allowed, newest last:")
    for value in allowed:
        print(f"  {value}")


def _show(args: argparse.Namespace, kms_client: Any) -> None:
    """`show`: the images (and signers) the key policy allows."""
    policy = load_policy(kms_client, args.key_id)
    images, signers = allowed_measurements(policy), allowed_signers(policy)
    if args.json:
        print(json.dumps({"ImageSha384": images, "PCR8": signers}))
        return
    for value in images:
        print(value)
    if signers is not None:
        print("signers (PCR8):", " ".join(signers) or "none")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns an exit status (see `--help`)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_OK if exc.code == 0 else EXIT_USAGE
    session = boto3.session.Session(region_name=args.region)
    kms_client = session.client("kms")
    try:
        if args.command == "add":
            _add(args, session, kms_client)
        else:
            _show(args, kms_client)
    except MeasurementError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AllowListError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except (BotoCoreError, ClientError) as exc:
        print(f"error: AWS call failed: {exc}", file=sys.stderr)
        return EXIT_AWS_ERROR
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
