"""Read a key policy out of a synthesized CloudFormation template, as KMS would store it.

The local simulation evaluates the very policy the ThirdPartyStack defines. CDK writes it with a
few intrinsics (`Fn::Join` over `AWS::Partition`, `AWS::AccountId`...): this resolves them with the
values CloudFormation would substitute and refuses anything it cannot resolve, so a policy that
only makes sense after deployment is never silently half-rendered.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class TemplateError(ValueError):
    """The template has no such key, or its policy holds an intrinsic this cannot resolve."""


def pseudo_parameters(*, account: str, region: str) -> dict[str, str]:
    return {"AWS::Partition": "aws", "AWS::Region": region, "AWS::AccountId": account,
            "AWS::URLSuffix": "amazonaws.com"}


def resolve_intrinsics(value: Any, pseudo: Mapping[str, str]) -> Any:
    """Resolve `Ref` to pseudo parameters and `Fn::Join`; raise on any other intrinsic."""
    if isinstance(value, dict):
        if set(value) == {"Ref"}:
            if value["Ref"] not in pseudo:
                raise TemplateError(f"cannot resolve {{'Ref': {value['Ref']!r}}} outside AWS")
            return pseudo[value["Ref"]]
        if set(value) == {"Fn::Join"}:
            separator, parts = value["Fn::Join"]
            return separator.join(str(resolve_intrinsics(p, pseudo)) for p in parts)
        intrinsic = next((k for k in value if k.startswith("Fn::")), None)
        if intrinsic:
            raise TemplateError(f"cannot resolve {intrinsic} outside AWS")
        return {k: resolve_intrinsics(v, pseudo) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_intrinsics(v, pseudo) for v in value]
    return value


def key_policies(template: Mapping[str, Any], *, account: str, region: str
                 ) -> dict[str, dict[str, Any]]:
    """Every `AWS::KMS::Key`'s resolved KeyPolicy, by logical id."""
    pseudo = pseudo_parameters(account=account, region=region)
    return {logical_id: resolve_intrinsics(resource["Properties"]["KeyPolicy"], pseudo)
            for logical_id, resource in template.get("Resources", {}).items()
            if resource.get("Type") == "AWS::KMS::Key"
            and "KeyPolicy" in resource.get("Properties", {})}


def key_policy_from_template(path: Path, *, logical_id_prefix: str, account: str,
                             region: str) -> dict[str, Any]:
    """The resolved policy of the one key whose logical id starts with `logical_id_prefix`."""
    try:
        template = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TemplateError(f"cannot read the template {path}: {exc}; run `make synth` first") \
            from exc
    policies = key_policies(template, account=account, region=region)
    matching = [p for logical_id, p in policies.items() if logical_id.startswith(logical_id_prefix)]
    if len(matching) != 1:
        raise TemplateError(f"expected one KMS key with a logical id starting "
                            f"{logical_id_prefix!r} in {path}, found {sorted(policies)}")
    return matching[0]
