"""ThirdPartyStack (third party account): the enclave key, the source repository, the pipeline."""

from typing import Any

import aws_cdk as cdk
from constructs import Construct

from stacks.config import Config


class ThirdPartyStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, *, config: Config, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.config = config
