#!/usr/bin/env python3
"""CDK composition root: the only place that reads context; builds one validated Config."""

import sys

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from stacks.config import load_config
from stacks.host_stack import HostStack
from stacks.third_party_stack import ThirdPartyStack


def build_app(app: cdk.App) -> cdk.App:
    """Instantiate both stacks from the app's context and register cdk-nag on the whole app."""
    config = load_config(app.node.get_all_context())
    HostStack(app, "HostStack", config=config,
              env=cdk.Environment(account=config.host_account, region=config.region))
    ThirdPartyStack(app, "ThirdPartyStack", config=config,
                    env=cdk.Environment(account=config.third_party_account, region=config.region))
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app


if __name__ == "__main__":
    try:
        build_app(cdk.App()).synth()
    except ValueError as exc:  # ConfigError, or a construct refusing conflicting inputs
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
