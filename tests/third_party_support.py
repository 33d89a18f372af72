"""Builders shared by the ThirdPartyStack tests (each test module synthesizes once)."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from aws_cdk.assertions import Template

from client.sim.template import resolve_intrinsics
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


def key_policy(template: Template) -> dict:
    keys = template.find_resources("AWS::KMS::Key", {"Properties": {"Description":
                                                     cdk.assertions.Match.string_like_regexp(
                                                         "attested Nitro Enclaves")}})
    (key,) = keys.values()
    return resolve_intrinsics(key["Properties"]["KeyPolicy"], {"AWS::Partition": "aws"})
