"""The KMS wiring of runs and services: the key provider that unseals a bundle in the enclave.

The key ARN and the region are the image policy's; the host only lends its credentials, and
KMS answers only to an attestation document (`enclave/keyprovider.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from enclave.attested_kms import AttestationSource
from enclave.config import RuntimeConfig
from enclave.policy import ImagePolicy
from enclave.run_records import Credentials, RunFailure

# Builds the key provider that unseals with this run's credentials, for the one pinned KMS key
# ARN the bundle's header was checked against (the image policy chose it, not the host).
KeyProviderFactory = Callable[[Credentials | None, str, ImagePolicy], Any]


def attested_kms_key_provider_factory(config: RuntimeConfig,
                                      nsm: AttestationSource | None) -> KeyProviderFactory:
    """Production: KMS Decrypt with an attestation document, through the in-enclave bridge.

    The key ARN and the region are the image policy's; the host only lends its credentials.
    """

    def build(credentials: Credentials | None, key_arn: str, policy: ImagePolicy) -> Any:
        import boto3

        from enclave.keyprovider import AttestedKmsMasterKeyProvider

        if credentials is None:
            raise RunFailure(
                "the run request carries no AWS credentials; the enclave has no other source. "
                "Send credentials (the client takes them from IMDSv2)"
            )
        kms = boto3.session.Session(
            aws_access_key_id=credentials.access_key_id,
            aws_secret_access_key=credentials.secret_access_key,
            aws_session_token=credentials.session_token,
            region_name=policy.region,
        ).client("kms", endpoint_url=config.kms_endpoint_for(policy.region))
        return AttestedKmsMasterKeyProvider(key_arn, kms, nsm,
                                            context_guard=policy.check_context)

    return build
