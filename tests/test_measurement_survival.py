"""Measurements the pipeline added survive a later `cdk deploy ThirdPartyStack`.

The deploy is played against moto: CloudFormation's effect on the key is a PutKeyPolicy of the
template's policy; the keeper's handler then runs. The policies are the synthesized ones.
"""

import json

import boto3
import pytest
from moto import mock_aws

from pipeline import allowlist, measurement_resource
from tests.third_party_support import key_policy, third_party_template

pytestmark = pytest.mark.cdk

PCR = [f"{i:x}" * 96 for i in range(1, 6)]
PARAMETER = "/sealed-enclave/sample-inference/image-measurements"


@pytest.fixture(scope="module")
def templates():
    """Template policies of two deploys: none configured, and one configured measurement."""
    empty, _, _ = third_party_template()
    configured, _, _ = third_party_template(AllowedImageMeasurements=[PCR[4]])
    return {"empty": empty, "configured": configured}


@pytest.fixture
def aws(monkeypatch):
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield boto3.client("kms", region_name="us-east-1"), boto3.client("ssm", "us-east-1")


def cloudformation_writes(kms, key_id: str, policy: dict) -> None:
    kms.put_key_policy(KeyId=key_id, PolicyName="default", Policy=json.dumps(policy))


def pipeline_builds(kms, ssm, key_id: str, pcr0: str, keep: int = 3) -> None:
    allowlist.add_to_key(kms, key_id, allowlist.Measurements(pcr0=pcr0), keep=keep,
                         ssm_client=ssm, record_parameter=PARAMETER)


def current(kms, key_id: str) -> list[str]:
    policy = json.loads(kms.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"])
    return allowlist.allowed_measurements(policy)


def deployed_key(kms, template) -> str:
    return kms.create_key(Policy=json.dumps(key_policy(template)))["KeyMetadata"]["Arn"]


def test_redeploy_alone_would_drop_the_pipeline_measurements(aws, templates):
    """The problem the keeper solves: CloudFormation's rewrite forgets pipeline edits."""
    kms, ssm = aws
    key = deployed_key(kms, templates["empty"])
    pipeline_builds(kms, ssm, key, PCR[0])
    cloudformation_writes(kms, key, key_policy(templates["empty"]))
    assert current(kms, key) == []


def test_keeper_restores_the_pipeline_measurements_after_a_redeploy(aws, templates):
    kms, ssm = aws
    key = deployed_key(kms, templates["empty"])
    pipeline_builds(kms, ssm, key, PCR[0])
    pipeline_builds(kms, ssm, key, PCR[1])
    cloudformation_writes(kms, key, key_policy(templates["empty"]))
    restored = measurement_resource.restore_measurements(kms, ssm, key_id=key,
                                                         record_parameter=PARAMETER, keep=3)
    assert restored == [PCR[0], PCR[1]]
    assert current(kms, key) == [PCR[0], PCR[1]]


def test_configured_measurements_come_first_and_the_newest_n_are_kept(aws, templates):
    kms, ssm = aws
    key = deployed_key(kms, templates["empty"])
    for value in PCR[:3]:
        pipeline_builds(kms, ssm, key, value)
    cloudformation_writes(kms, key, key_policy(templates["configured"]))
    measurement_resource.restore_measurements(kms, ssm, key_id=key, record_parameter=PARAMETER,
                                              keep=3)
    assert current(kms, key) == PCR[:3]  # PCR[4] (configured) is older than every build


def test_keeper_without_a_record_leaves_the_template_policy(aws, templates):
    kms, ssm = aws
    key = deployed_key(kms, templates["configured"])
    measurement_resource.restore_measurements(kms, ssm, key_id=key, record_parameter=PARAMETER,
                                              keep=3)
    assert current(kms, key) == [PCR[4]]


def test_keeper_refuses_a_tampered_record_and_leaves_the_policy(aws, templates):
    kms, ssm = aws
    key = deployed_key(kms, templates["empty"])
    ssm.put_parameter(Name=PARAMETER, Type="String", Value=json.dumps({"ImageSha384": ["0" * 96]}))
    before = kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"]
    with pytest.raises(allowlist.MeasurementError, match="debug-mode"):
        measurement_resource.restore_measurements(kms, ssm, key_id=key,
                                                  record_parameter=PARAMETER, keep=3)
    assert kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"] == before


# --- a deploy interleaved with a running image build (no lock orders their read-modify-writes) --


class Interleaved:
    """The build's KMS client: runs `meanwhile` (a deploy) once, right after the build's call
    named `after` returned, as an unlucky scheduler would."""

    def __init__(self, kms, after: str, meanwhile) -> None:
        self._kms, self._after, self._meanwhile = kms, after, meanwhile

    def __getattr__(self, name):
        call = getattr(self._kms, name)
        if name != self._after or self._meanwhile is None:
            return call

        def then_deploy(**kwargs):
            result = call(**kwargs)
            meanwhile, self._meanwhile = self._meanwhile, None
            meanwhile()
            return result

        return then_deploy


def deploy(kms, ssm, key: str, template) -> None:
    cloudformation_writes(kms, key, key_policy(template))
    measurement_resource.restore_measurements(kms, ssm, key_id=key, record_parameter=PARAMETER,
                                              keep=3)


def test_deploy_between_the_builds_read_and_write_keeps_every_measurement(aws, templates):
    kms, ssm = aws
    key = deployed_key(kms, templates["empty"])
    pipeline_builds(kms, ssm, key, PCR[0])
    pipeline_builds(kms, ssm, key, PCR[1])
    cloudformation_writes(kms, key, key_policy(templates["empty"]))
    # The build reads the template's policy; the keeper restores PCR0 and PCR1; the build then
    # writes what it read plus PCR2, which must not erase what the keeper restored.
    build = Interleaved(kms, "get_key_policy",
                        lambda: measurement_resource.restore_measurements(
                            kms, ssm, key_id=key, record_parameter=PARAMETER, keep=3))
    pipeline_builds(build, ssm, key, PCR[2])
    assert current(kms, key) == PCR[:3]


def test_deploy_right_after_the_builds_policy_write_keeps_the_new_measurement(aws, templates):
    kms, ssm = aws
    key = deployed_key(kms, templates["empty"])
    pipeline_builds(kms, ssm, key, PCR[0])
    build = Interleaved(kms, "put_key_policy",
                        lambda: deploy(kms, ssm, key, templates["empty"]))
    pipeline_builds(build, ssm, key, PCR[1])
    assert current(kms, key) == [PCR[0], PCR[1]]


def test_a_dropped_measurement_is_back_at_the_next_add(aws, templates):
    kms, ssm = aws
    key = deployed_key(kms, templates["empty"])
    pipeline_builds(kms, ssm, key, PCR[0])
    pipeline_builds(kms, ssm, key, PCR[1])
    # A deploy whose keeper never ran (failed, or the rewrite came from elsewhere).
    cloudformation_writes(kms, key, key_policy(templates["empty"]))
    assert current(kms, key) == []
    pipeline_builds(kms, ssm, key, PCR[2])
    assert current(kms, key) == PCR[:3]


def test_add_refused_by_the_policy_records_nothing(aws, templates):
    kms, ssm = aws
    foreign = {"Version": "2012-10-17", "Statement": [
        {"Sid": "Other", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111111111111:root"},
         "Action": "kms:*", "Resource": "*"}]}
    key = kms.create_key(Policy=json.dumps(foreign))["KeyMetadata"]["Arn"]
    with pytest.raises(allowlist.PolicyError):
        pipeline_builds(kms, ssm, key, PCR[0])
    with pytest.raises(ssm.exceptions.ParameterNotFound):
        ssm.get_parameter(Name=PARAMETER)


def event(request_type: str, key_id: str) -> dict:
    return {"RequestType": request_type, "ResponseURL": "https://cloudformation.invalid/r",
            "StackId": "stack", "RequestId": "req", "LogicalResourceId": "Keeper",
            "ResourceProperties": {"KeyId": key_id, "RecordParameter": PARAMETER, "Keep": "3"}}


@pytest.fixture
def responses(monkeypatch):
    sent = []
    monkeypatch.setattr(measurement_resource, "_respond",
                        lambda ev, status, reason, data: sent.append((status, reason, data)))
    return sent


def test_handler_reports_success_with_the_allowed_list(aws, templates, responses):
    kms, ssm = aws
    key = deployed_key(kms, templates["empty"])
    pipeline_builds(kms, ssm, key, PCR[0])
    cloudformation_writes(kms, key, key_policy(templates["empty"]))
    measurement_resource.handler(event("Update", key), None)
    assert responses == [("SUCCESS", "ok", {"Allowed": PCR[0]})]
    assert current(kms, key) == [PCR[0]]


def test_handler_reports_failure_to_cloudformation_instead_of_hanging(aws, responses):
    measurement_resource.handler(event("Create", "alias/missing"), None)
    ((status, reason, _),) = responses
    assert status == "FAILED" and reason


def test_handler_delete_touches_nothing(aws, templates, responses):
    kms, ssm = aws
    key = deployed_key(kms, templates["empty"])
    pipeline_builds(kms, ssm, key, PCR[0])
    before = kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"]
    measurement_resource.handler(event("Delete", key), None)
    assert responses[0][0] == "SUCCESS"
    assert kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"] == before


def test_respond_refuses_a_non_https_response_url():
    with pytest.raises(ValueError, match="https"):
        measurement_resource._respond({**event("Create", "k"), "ResponseURL": "http://x/"},
                                      "SUCCESS", "ok", {})


def digest(template) -> str:
    (keeper,) = template.find_resources("Custom::EnclaveMeasurementKeeper").values()
    return keeper["Properties"]["TemplatePolicyDigest"]


def test_keeper_reruns_whenever_the_template_policy_changes(templates):
    # CloudFormation updates the custom resource only when a property changes: the digest of the
    # key policy changes exactly when CloudFormation rewrites that policy.
    assert digest(templates["empty"]) != digest(templates["configured"])


def test_keeper_digest_is_stable_across_synths(templates):
    again, _, _ = third_party_template()
    assert digest(again) == digest(templates["empty"])


def test_keeper_lambda_bundle_is_self_contained(tmp_path):
    """The Lambda asset imports with nothing but the standard library on its path."""
    import subprocess
    import sys

    from constructs.enclave_key import _stage_handler_code

    staged = _stage_handler_code()
    result = subprocess.run(
        [sys.executable, "-I", "-c",
         "import sys; sys.path[:0] = ['.']; import pipeline.measurement_resource as m; "
         "assert callable(m.handler); print(sorted(sys.modules.get('pipeline').__path__))"],
        cwd=staged, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert staged in result.stdout
