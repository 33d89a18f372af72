"""Builders shared by the ThirdPartyStack tests (each test module synthesizes once)."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from aws_cdk.assertions import Template

from stacks.config import Config, load_config
from stacks.third_party_stack import ThirdPartyStack
from tests.conftest import cdk_json_context


def build_third_party_stack(**overrides: Any) -> tuple[cdk.App, ThirdPartyStack, Config]:
    context = {**cdk_json_context(), **overrides}
    app = cdk.App(context=context)
    config = load_config(app.node.get_all_context())
    stack = ThirdPartyStack(app, "ThirdPartyStack", config=config,
                            env=cdk.Environment(account=config.third_party_account,
                                                region=config.region))
    return app, stack, config


def third_party_template(**overrides: Any) -> tuple[Template, Config, ThirdPartyStack]:
    _, stack, config = build_third_party_stack(**overrides)
    return Template.from_stack(stack), config, stack


def resolve_partition(value: Any) -> Any:
    """Render the few intrinsics a key policy holds (partition joins) as KMS would store them."""
    if isinstance(value, dict):
        if set(value) == {"Fn::Join"}:
            separator, parts = value["Fn::Join"]
            return separator.join(str(resolve_partition(p)) for p in parts)
        if value == {"Ref": "AWS::Partition"}:
            return "aws"
        return {k: resolve_partition(v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_partition(v) for v in value]
    return value


def key_policy(template: Template) -> dict:
    keys = template.find_resources("AWS::KMS::Key", {"Properties": {"Description":
                                                     cdk.assertions.Match.string_like_regexp(
                                                         "attested Nitro Enclaves")}})
    (key,) = keys.values()
    return resolve_partition(key["Properties"]["KeyPolicy"])
