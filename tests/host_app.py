"""Builds a HostStack the way app.py does, from cdk.json's context plus overrides, for tests."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from aws_cdk.assertions import Template
from conftest import cdk_json_context

from stacks.config import load_config
from stacks.host_stack import HostStack

REMOVE = object()  # an override value that deletes the key from the context


def host_context(**overrides: Any) -> dict[str, Any]:
    context = cdk_json_context()
    for key, value in overrides.items():
        if value is REMOVE:
            context.pop(key, None)
        else:
            context[key] = value
    return context


def build_host_stack(**overrides: Any) -> tuple[cdk.App, HostStack]:
    context = host_context(**overrides)
    app = cdk.App(context=context)
    config = load_config(context)
    stack = HostStack(app, "HostStack", config=config,
                      env=cdk.Environment(account=config.host_account, region=config.region))
    return app, stack


def resources_of_type(template: Template, resource_type: str) -> dict[str, dict]:
    return {logical_id: resource
            for logical_id, resource in template.to_json()["Resources"].items()
            if resource["Type"] == resource_type}


def only(mapping: dict[str, Any]) -> tuple[str, Any]:
    assert len(mapping) == 1, f"expected exactly one, found {sorted(mapping)}"
    return next(iter(mapping.items()))


def user_data_text(stack: HostStack, token_text: str = "TOKEN") -> str:
    """The host's user data with its asset locations resolved and each remaining reference
    (the job queue's URL) written as `token_text`."""
    resolved = stack.resolve(stack.host.user_data_script)
    if isinstance(resolved, str):
        return resolved
    return "".join(part if isinstance(part, str) else token_text
                   for part in resolved["Fn::Join"][1])
