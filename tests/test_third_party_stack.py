"""ThirdPartyStack template: every security property of the key, the builds and the pipeline."""

import json
import re
from pathlib import Path

import pytest
from aws_cdk.assertions import Capture, Match

from client.sim.template import resolve_intrinsics
from constructs.sealing_pipeline import load_buildspec
from pipeline import allowlist
from tests.third_party_support import key_policy, third_party_template

pytestmark = pytest.mark.cdk

PCR_A = "a" * 96
PCR_B = "b" * 96
SIGNER = "c" * 96
HOST_ROLE = "arn:aws:iam::222222222222:role/sealed-enclave-host-example-ml-vendor"


@pytest.fixture(scope="module")
def synthesized():
    return third_party_template()


@pytest.fixture(scope="module")
def template(synthesized):
    return synthesized[0]


@pytest.fixture(scope="module")
def config(synthesized):
    return synthesized[1]


@pytest.fixture(scope="module")
def pinned():
    """The stack with measurements and a signer given in context."""
    template, _, _ = third_party_template(AllowedImageMeasurements=[PCR_A, PCR_B],
                                          AllowedSignerPcr8=SIGNER)
    return key_policy(template)


def statement(policy: dict, sid: str) -> dict:
    (found,) = [s for s in policy["Statement"] if s.get("Sid") == sid]
    return found


def iam_statements(template) -> list[dict]:
    """Every statement of every identity policy (managed, inline, role inline) in the template."""
    statements = []
    for resource in template.to_json()["Resources"].values():
        props = resource.get("Properties", {})
        if resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            statements += props["PolicyDocument"]["Statement"]
        if resource["Type"] == "AWS::IAM::Role":
            for policy in props.get("Policies", []):
                statements += policy["PolicyDocument"]["Statement"]
    return statements


def as_list(value):
    return value if isinstance(value, list) else [value]


def role_statements(template, role_prefix: str) -> list[dict]:
    resources = template.to_json()["Resources"]
    (role_id,) = [k for k, v in resources.items()
                  if v["Type"] == "AWS::IAM::Role" and k.startswith(role_prefix)]
    statements = [s for p in resources[role_id]["Properties"].get("Policies", [])
                  for s in p["PolicyDocument"]["Statement"]]
    for resource in resources.values():
        if resource["Type"] == "AWS::IAM::Policy" and \
                {"Ref": role_id} in resource["Properties"].get("Roles", []):
            statements += resource["Properties"]["PolicyDocument"]["Statement"]
    return statements


def projects(template) -> dict[str, dict]:
    return {p["Properties"]["Name"]: p["Properties"]
            for p in template.find_resources("AWS::CodeBuild::Project").values()}


# --- EnclaveKey --------------------------------------------------------------------------------


def test_enclave_key_rotates(template):
    template.has_resource_properties("AWS::KMS::Key", {
        "Description": Match.string_like_regexp("attested Nitro Enclaves"),
        "EnableKeyRotation": True})


def test_alias_names_the_enclave_key(template):
    target = Capture()
    template.has_resource_properties("AWS::KMS::Alias", {
        "AliasName": "alias/enclavekey", "TargetKeyId": {"Fn::GetAtt": [target, "Arn"]}})
    key = template.to_json()["Resources"][target.as_string()]
    assert "attested Nitro Enclaves" in key["Properties"]["Description"]


def test_enclave_key_is_retained_when_the_stack_is_deleted(template):
    template.has_resource("AWS::KMS::Key", {
        "Properties": {"Description": Match.string_like_regexp("attested")},
        "DeletionPolicy": "Retain"})


def test_host_may_decrypt_only_with_an_allowed_image_and_the_app_id_context(template, config):
    template.has_resource_properties("AWS::KMS::Key", {"KeyPolicy": {"Statement": Match.array_with([
        Match.object_like({
            "Sid": "AllowAttestedEnclaveDecrypt", "Effect": "Allow",
            "Principal": {"AWS": HOST_ROLE}, "Action": "kms:Decrypt",
            # The KMS Developer Guide's operators for attestation values; the app id exactly.
            "Condition": {
                "StringEqualsIgnoreCase": {
                    "kms:RecipientAttestation:ImageSha384": Match.any_value()},
                "StringEquals": {"kms:EncryptionContext:app_id": config.app_id}}})])}})


def test_host_principal_is_the_role_arn_not_the_account(template):
    policy = key_policy(template)
    host_statements = [s for s in policy["Statement"] if s["Sid"] != "EnableKeyAdministration"]
    assert {s["Principal"]["AWS"] for s in host_statements} == {HOST_ROLE}


def test_host_is_denied_decrypt_without_an_attestation_document(template):
    template.has_resource_properties("AWS::KMS::Key", {"KeyPolicy": {"Statement": Match.array_with([
        Match.object_like({
            "Sid": "DenyDecryptWithoutAttestation", "Effect": "Deny",
            "Principal": {"AWS": HOST_ROLE}, "Action": "kms:Decrypt",
            "Condition": {"Null": {"kms:RecipientAttestation:ImageSha384": "true"}}})])}})


def test_host_is_denied_decrypt_with_an_unlisted_image(template):
    template.has_resource_properties("AWS::KMS::Key", {"KeyPolicy": {"Statement": Match.array_with([
        Match.object_like({
            "Sid": "DenyDecryptUnlistedImage", "Effect": "Deny",
            "Principal": {"AWS": HOST_ROLE}, "Action": "kms:Decrypt",
            "Condition": {"StringNotEqualsIgnoreCase": {
                "kms:RecipientAttestation:ImageSha384": Match.any_value()}}})])}})


def test_without_measurements_the_lists_hold_a_placeholder_no_attestation_can_match(template):
    policy = key_policy(template)
    allow = statement(policy, "AllowAttestedEnclaveDecrypt")
    deny = statement(policy, "DenyDecryptUnlistedImage")
    values = allow["Condition"]["StringEqualsIgnoreCase"]["kms:RecipientAttestation:ImageSha384"]
    assert values == [allowlist.PLACEHOLDER]
    deny_values = deny["Condition"]["StringNotEqualsIgnoreCase"]
    assert deny_values["kms:RecipientAttestation:ImageSha384"] == values
    # An attested ImageSha384 is always 96 lowercase hex characters.
    assert not re.fullmatch(r"[0-9a-f]{96}", allowlist.PLACEHOLDER)


def test_host_may_use_the_key_for_nothing_but_decrypt(template):
    template.has_resource_properties("AWS::KMS::Key", {"KeyPolicy": {"Statement": Match.array_with([
        Match.object_like({
            "Sid": "DenyHostAnyOtherKeyUse", "Effect": "Deny",
            "Principal": {"AWS": HOST_ROLE}, "NotAction": "kms:Decrypt", "Resource": "*"})])}})


def test_configured_measurements_appear_in_both_allow_and_deny(pinned):
    allow = statement(pinned, "AllowAttestedEnclaveDecrypt")["Condition"]["StringEqualsIgnoreCase"]
    deny = statement(pinned, "DenyDecryptUnlistedImage")["Condition"]["StringNotEqualsIgnoreCase"]
    assert allow["kms:RecipientAttestation:ImageSha384"] == [PCR_A, PCR_B]
    assert deny["kms:RecipientAttestation:ImageSha384"] == [PCR_A, PCR_B]


def test_pinned_signer_is_required_by_allow_and_enforced_by_its_own_deny(pinned):
    allow = statement(pinned, "AllowAttestedEnclaveDecrypt")["Condition"]["StringEqualsIgnoreCase"]
    deny = statement(pinned, "DenyDecryptUnlistedSigner")
    assert allow["kms:RecipientAttestation:PCR8"] == [SIGNER]
    assert deny["Effect"] == "Deny"
    assert deny["Condition"]["StringNotEqualsIgnoreCase"]["kms:RecipientAttestation:PCR8"] == [
        SIGNER]


def test_no_signer_statement_without_a_pinned_signer(template):
    sids = {s["Sid"] for s in key_policy(template)["Statement"]}
    assert "DenyDecryptUnlistedSigner" not in sids


def test_the_allow_list_tool_recognises_the_deployed_policy(pinned):
    assert allowlist.allowed_measurements(pinned) == [PCR_A, PCR_B]
    assert allowlist.allowed_signers(pinned) == [SIGNER]


def test_only_the_third_party_account_administers_the_key(template):
    admin = statement(key_policy(template), "EnableKeyAdministration")
    assert admin["Principal"]["AWS"] == "arn:aws:iam::111111111111:root"
    assert admin["Effect"] == "Allow"


def test_the_only_host_allow_is_the_attested_one(template):
    allows = [s for s in key_policy(template)["Statement"]
              if s["Effect"] == "Allow" and s["Principal"]["AWS"] == HOST_ROLE]
    assert [s["Sid"] for s in allows] == ["AllowAttestedEnclaveDecrypt"]


# --- repository and pipeline -------------------------------------------------------------------


def test_repository_is_created_seeded_on_main_and_retained(template, config):
    template.has_resource("AWS::CodeCommit::Repository", {
        "Properties": {"RepositoryName": config.repository_name,
                       "Code": {"BranchName": "main", "S3": Match.any_value()}},
        "DeletionPolicy": "Retain"})


def test_existing_repository_is_imported_not_created():
    template, config, _ = third_party_template(UseExistingRepository=True)
    template.resource_count_is("AWS::CodeCommit::Repository", 0)
    source = json.dumps(template.find_resources("AWS::CodePipeline::Pipeline"))
    assert f'"RepositoryName": "{config.repository_name}"' in source


def test_pipeline_is_v2(template):
    template.has_resource_properties("AWS::CodePipeline::Pipeline", {"PipelineType": "V2"})


def test_commits_to_main_start_the_pipeline(template):
    rules = template.find_resources("AWS::Events::Rule", {"Properties": {"EventPattern": {
        "source": ["aws.codecommit"],
        "detail": Match.object_like({"referenceName": ["main"]})}}})
    (rule,) = rules.values()
    (target,) = rule["Properties"]["Targets"]
    refs = [p["Ref"] for p in target["Arn"]["Fn::Join"][1] if isinstance(p, dict) and "Ref" in p]
    resources = template.to_json()["Resources"]
    assert [resources[r]["Type"] for r in refs if r in resources] == ["AWS::CodePipeline::Pipeline"]


def test_pipeline_source_is_the_main_branch(template):
    template.has_resource_properties("AWS::CodePipeline::Pipeline", {"Stages": Match.array_with([
        Match.object_like({"Actions": [Match.object_like({
            "ActionTypeId": Match.object_like({"Provider": "CodeCommit"}),
            "Configuration": Match.object_like({"BranchName": "main",
                                                "PollForSourceChanges": False})})]})])})


def test_build_actions_carry_the_runbook_names(template):
    stages = list(template.find_resources("AWS::CodePipeline::Pipeline").values())[0][
        "Properties"]["Stages"]
    names = {a["Name"] for s in stages for a in s["Actions"] if
             a["ActionTypeId"]["Provider"] == "CodeBuild"}
    assert names == {"application-encryptor", "nitro-image-builder"}


def test_only_the_image_builder_is_privileged(template):
    privileged = {name: p["Environment"].get("PrivilegedMode", False)
                  for name, p in projects(template).items()}
    assert privileged == {"application-encryptor": False, "nitro-image-builder": True}


def test_builds_run_on_arm64_amazon_linux_2023(template):
    for props in projects(template).values():
        assert props["Environment"]["Type"] == "ARM_CONTAINER"
        image = props["Environment"]["Image"]
        assert image.startswith("aws/codebuild/amazonlinux-aarch64-standard")


@pytest.mark.parametrize("name", ["application-encryptor", "nitro-image-builder"])
def test_project_build_spec_is_the_file_in_pipeline_buildspecs(template, name):
    embedded = json.loads(projects(template)[name]["Source"]["BuildSpec"])
    assert embedded == load_buildspec(name)


def commands(name: str) -> list[str]:
    spec = load_buildspec(name)
    return [" ".join(c.split()) for phase in spec["phases"].values()
            for c in phase.get("commands", [])]


def test_encryptor_build_spec_runs_the_contracted_command_line():
    assert ('python envelope_encryptor.py encrypt -d "src/${APP_DIRECTORY}" '
            '-k "${ENCLAVE_KEY_ARN}" --app-id "${APP_ID}" -o "build/${APP_ID}.sealed" '
            '--upload "s3://${HOST_BUCKET}/${ENCRYPTED_APP_PREFIX}" '
            '--bucket-key-arn "${HOST_BUCKET_KEY_ARN}" '
            '--expected-bucket-owner "${HOST_ACCOUNT}"') in commands("application-encryptor")


def test_image_builder_installs_nitro_cli_and_builds_the_eif():
    steps = commands("nitro-image-builder")
    assert ('dnf install -y "aws-nitro-enclaves-cli-${NITRO_CLI_PACKAGE_VERSION}" '
            '"aws-nitro-enclaves-cli-devel-${NITRO_CLI_PACKAGE_VERSION}"') in steps
    assert ('docker build --platform linux/arm64 --build-arg AWS_REGION="${ENCLAVE_REGION}" '
            '--build-arg ENCLAVE_PORT="${ENCLAVE_PORT}" '
            '--build-arg VSOCK_PROXY_PORT="${VSOCK_PROXY_PORT}" '
            '--file build/image/containers/Dockerfile --tag "${IMAGE_URI}" build/image') in steps
    assert ('nitro-cli build-enclave --docker-uri "${IMAGE_URI}" --output-file enclave.eif '
            '> measurements.json') in steps


def test_image_context_holds_the_image_definition_and_runtime_but_never_src():
    steps = commands("nitro-image-builder")
    context_steps = [s for s in steps if "build/image" in s and not s.startswith("docker")]
    assert "cp -R containers enclave build/image/" in context_steps
    assert not [s for s in context_steps if re.search(r"\bsrc\b", s)]
    (docker,) = [s for s in steps if s.startswith("docker build")]
    assert docker.split()[-1] == "build/image"


def test_image_builder_builds_for_the_stack_region(template, config):
    assert env(projects(template)["nitro-image-builder"])["ENCLAVE_REGION"] == config.region


def test_image_builder_allows_the_measurement_before_uploading_the_eif():
    steps = commands("nitro-image-builder")
    allow = steps.index('python -m pipeline.allowlist add --key-id "${ENCLAVE_KEY_ARN}" '
                        '--measurements measurements.json --keep "${MEASUREMENTS_TO_KEEP}" '
                        '--record-parameter "${MEASUREMENT_RECORD_PARAMETER}"')
    uploads = [i for i, s in enumerate(steps) if s.startswith("python -m pipeline.upload")]
    assert len(uploads) == 3 and allow < min(uploads)
    for i in uploads:
        assert '--kms-key-id "${HOST_BUCKET_KEY_ARN}"' in steps[i]
        assert '--expected-bucket-owner "${HOST_ACCOUNT}"' in steps[i]
        assert '"s3://${HOST_BUCKET}/${ENCLAVE_IMAGE_PREFIX}' in steps[i]
    # Where the host's `client enclave start s3://.../<app>.eif` looks: the EIF key with .json.
    assert steps[uploads[0]].split()[3:5] == [
        "enclave.eif", '"s3://${HOST_BUCKET}/${ENCLAVE_IMAGE_PREFIX}${APP_ID}.eif"']
    assert steps[uploads[1]].split()[3:5] == [
        "measurements.json", '"s3://${HOST_BUCKET}/${ENCLAVE_IMAGE_PREFIX}${APP_ID}.json"']
    assert steps[uploads[2]].split()[3:5] == [
        "build-inputs.json",
        '"s3://${HOST_BUCKET}/${ENCLAVE_IMAGE_PREFIX}${APP_ID}.build-inputs.json"']


def env(props: dict) -> dict:
    return {v["Name"]: v["Value"] for v in props["Environment"]["EnvironmentVariables"]}


def test_build_environment_carries_the_config_values(template, config):
    built = projects(template)
    encryptor, builder = env(built["application-encryptor"]), env(built["nitro-image-builder"])
    assert encryptor["HOST_BUCKET"] == config.host_bucket_name
    assert encryptor["HOST_BUCKET_KEY_ARN"] == config.host_bucket_key_arn
    assert encryptor["HOST_ACCOUNT"] == config.host_account
    assert encryptor["ENCRYPTED_APP_PREFIX"] == config.encrypted_app_prefix
    assert encryptor["APP_DIRECTORY"] == config.app_directory
    assert builder["ENCLAVE_IMAGE_PREFIX"] == config.enclave_image_prefix
    assert builder["MEASUREMENTS_TO_KEEP"] == str(config.measurements_to_keep)
    assert builder["MEASUREMENT_RECORD_PARAMETER"] == \
        "/sealed-enclave/sample-inference/image-measurements"


def test_builds_name_the_enclave_key_of_this_stack(template):
    resources = template.to_json()["Resources"]
    for props in projects(template).values():
        ref = env(props)["ENCLAVE_KEY_ARN"]["Fn::GetAtt"][0]
        assert "attested Nitro Enclaves" in resources[ref]["Properties"]["Description"]


def test_every_variable_the_build_specs_use_is_set(template):
    for name, props in projects(template).items():
        spec = load_buildspec(name)
        text = json.dumps(spec)
        used = set(re.findall(r"\$\{([A-Z_]+)", text)) - {"CODEBUILD_RESOLVED_SOURCE_VERSION",
                                                         "CODEBUILD_SRC_DIR", "IMAGE_URI",
                                                         "NITRO_CLI_ARTIFACTS"}
        used -= set(spec.get("env", {}).get("variables", {}))  # set by the build spec itself
        assert used <= set(env(props)), name


# --- encryption and least privilege ------------------------------------------------------------


def test_build_logs_go_to_kms_encrypted_log_groups(template):
    groups = template.find_resources("AWS::Logs::LogGroup")
    for props in projects(template).values():
        group = props["LogsConfig"]["CloudWatchLogs"]["GroupName"]["Ref"]
        assert "KmsKeyId" in groups[group]["Properties"]


def test_every_log_group_is_kms_encrypted(template):
    for group in template.find_resources("AWS::Logs::LogGroup").values():
        assert "KmsKeyId" in group["Properties"]


def test_build_projects_encrypt_with_a_customer_key(template):
    for props in projects(template).values():
        assert "Fn::GetAtt" in props["EncryptionKey"]


def test_artifact_bucket_is_kms_encrypted_and_private(template):
    template.has_resource_properties("AWS::S3::Bucket", {
        "BucketEncryption": {"ServerSideEncryptionConfiguration": [Match.object_like({
            "ServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms",
                                              "KMSMasterKeyID": Match.any_value()}})]},
        "PublicAccessBlockConfiguration": {"BlockPublicAcls": True, "BlockPublicPolicy": True,
                                           "IgnorePublicAcls": True,
                                           "RestrictPublicBuckets": True}})


def test_artifact_bucket_refuses_requests_without_tls(template):
    template.has_resource_properties("AWS::S3::BucketPolicy", {"PolicyDocument": {
        "Statement": Match.array_with([Match.object_like({
            "Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": "false"}}})])}})


def test_no_identity_policy_grants_kms_on_every_resource(template):
    for s in iam_statements(template):
        if any(a.startswith("kms:") for a in as_list(s["Action"])):
            assert "*" not in as_list(s["Resource"]), s


def test_no_identity_policy_grants_kms_decrypt_on_the_enclave_key(template):
    # Only the attested host may decrypt sealed bundles; no build, no pipeline role.
    resources = template.to_json()["Resources"]
    for s in iam_statements(template):
        if "kms:Decrypt" in as_list(s["Action"]):
            for resource in as_list(s["Resource"]):
                if isinstance(resource, dict) and "Fn::GetAtt" in resource:
                    target = resources[resource["Fn::GetAtt"][0]]
                    assert "attested" not in target["Properties"].get("Description", ""), s


def is_enclave_key(template, resource) -> bool:
    if not (isinstance(resource, dict) and "Fn::GetAtt" in resource):
        return False
    target = template.to_json()["Resources"][resource["Fn::GetAtt"][0]]
    return "attested Nitro Enclaves" in target["Properties"].get("Description", "")


def test_encryptor_generates_data_keys_only_for_this_app(template, config):
    statements = role_statements(template, "SealingPipelineEncryptorRole")
    (on_enclave_key,) = [s for s in statements
                         if any(is_enclave_key(template, r) for r in as_list(s["Resource"]))]
    assert on_enclave_key["Action"] == "kms:GenerateDataKey"
    assert on_enclave_key["Condition"] == {
        "StringEquals": {"kms:EncryptionContext:app_id": config.app_id}}


def test_encryptor_uploads_only_under_the_encrypted_prefix(template, config):
    statements = role_statements(template, "SealingPipelineEncryptorRole")
    puts = [resolve_intrinsics(r, {"AWS::Partition": "aws"}) for s in statements
            if "s3:PutObject" in as_list(s["Action"]) for r in as_list(s["Resource"])]
    assert puts == [f"arn:aws:s3:::{config.host_bucket_name}/{config.encrypted_app_prefix}*"]


def test_encryptor_cannot_edit_the_key_policy(template):
    actions = {a for s in role_statements(template, "SealingPipelineEncryptorRole")
               for a in as_list(s["Action"])}
    assert not actions & {"kms:PutKeyPolicy", "kms:*", "kms:CreateGrant"}


def test_image_builder_edits_only_the_enclave_key_policy(template):
    statements = role_statements(template, "SealingPipelineImageBuilderRole")
    (edit,) = [s for s in statements if "kms:PutKeyPolicy" in as_list(s["Action"])]
    assert sorted(as_list(edit["Action"])) == ["kms:GetKeyPolicy", "kms:PutKeyPolicy"]
    (resource,) = as_list(edit["Resource"])
    target = template.to_json()["Resources"][resource["Fn::GetAtt"][0]]
    assert "attested Nitro Enclaves" in target["Properties"]["Description"]


def test_builds_use_the_host_key_only_through_s3(template):
    for prefix in ("SealingPipelineEncryptorRole", "SealingPipelineImageBuilderRole"):
        host_key = [s for s in role_statements(template, prefix)
                    if "222222222222" in json.dumps(s.get("Resource"))
                    and any(a.startswith("kms:") for a in as_list(s["Action"]))]
        assert host_key and all(
            s["Condition"] == {"StringEquals": {"kms:ViaService": "s3.us-east-1.amazonaws.com"}}
            for s in host_key)


def test_measurement_keeper_runs_after_the_key_with_a_digest_of_its_policy(template):
    key = Capture()
    template.has_resource_properties("Custom::EnclaveMeasurementKeeper", {
        "KeyId": {"Fn::GetAtt": [key, "Arn"]},
        "RecordParameter": "/sealed-enclave/sample-inference/image-measurements",
        "Keep": "3",
        "TemplatePolicyDigest": Match.string_like_regexp("^[0-9a-f]{64}$")})
    assert template.to_json()["Resources"][key.as_string()]["Type"] == "AWS::KMS::Key"


def test_debug_mode_all_zero_measurement_in_context_fails_synth():
    with pytest.raises(ValueError, match="debug-mode"):
        third_party_template(AllowedImageMeasurements=["0" * 96])


# --- constructs in a bare stack ----------------------------------------------------------------


def bare_stack():
    import aws_cdk as cdk

    return cdk.Stack(cdk.App(), "Bare", env=cdk.Environment(account="111111111111",
                                                           region="us-east-1"))


def test_enclave_key_refuses_a_measurement_listed_twice():
    from constructs.enclave_key import EnclaveKey

    with pytest.raises(ValueError, match="twice"):
        EnclaveKey(bare_stack(), "Key", alias_name="alias/k", administrator_account="111111111111",
                   host_principal_arn=HOST_ROLE, app_id="app", allowed_measurements=[PCR_A, PCR_A])


def test_enclave_key_template_keeps_only_the_newest_n_configured_measurements():
    from aws_cdk.assertions import Template

    from constructs.enclave_key import EnclaveKey

    stack = bare_stack()
    EnclaveKey(stack, "Key", alias_name="alias/k", administrator_account="111111111111",
               host_principal_arn=HOST_ROLE, app_id="app", measurements_to_keep=1,
               allowed_measurements=[PCR_A, PCR_B])
    (key,) = Template.from_stack(stack).find_resources("AWS::KMS::Key").values()
    assert allowlist.allowed_measurements(key["Properties"]["KeyPolicy"]) == [PCR_B]


def test_sealing_pipeline_refuses_a_prefix_without_trailing_slash():
    from aws_cdk import aws_codecommit as codecommit
    from aws_cdk import aws_kms as kms

    from constructs.sealing_pipeline import SealingPipeline

    stack = bare_stack()
    with pytest.raises(ValueError, match="encrypted_app_prefix"):
        SealingPipeline(
            stack, "Pipeline", repository=codecommit.Repository.from_repository_name(
                stack, "Repo", "r"), enclave_key=kms.Key(stack, "K"), app_directory="app",
            app_id="app", host_account="222222222222", host_bucket_name="bucket-name",
            host_bucket_key_arn="arn:aws:kms:us-east-1:222222222222:key/x",
            encrypted_app_prefix="encrypted-apps", enclave_image_prefix="enclave-images/",
            measurements_to_keep=3, measurement_record_parameter="/p")


def test_build_projects_wait_for_their_runtime_policies(template):
    resources = template.to_json()["Resources"]
    for logical_id, resource in resources.items():
        if resource["Type"] == "AWS::CodeBuild::Project":
            depends = resource.get("DependsOn", [])
            assert any(resources[d]["Type"] == "AWS::IAM::Policy" for d in depends), logical_id


def test_image_builder_pins_the_minimum_app_version_in_the_image_policy():
    from aws_cdk.assertions import Match

    template, _config, _stack = third_party_template(MinimumAppVersion="1.4.0")
    template.has_resource_properties("AWS::CodeBuild::Project", {
        "Name": "nitro-image-builder",
        "Environment": {"EnvironmentVariables": Match.array_with([
            {"Name": "MINIMUM_APP_VERSION", "Type": "PLAINTEXT", "Value": "1.4.0"}])}})


def test_seeded_manifest_declares_the_stack_app_id():
    import zipfile

    from tests.third_party_support import build_third_party_stack

    app, stack, config = build_third_party_stack(ApplicationDirectory="fraud-model",
                                                 AppId="fraud-detector")
    assembly = app.synth(force=True)
    seeds = [path for path in Path(assembly.directory).glob("asset.*.zip")
             if "src/fraud-model/manifest.json" in zipfile.ZipFile(path).namelist()]
    assert len(seeds) == 1, seeds
    manifest = json.loads(zipfile.ZipFile(seeds[0]).read("src/fraud-model/manifest.json"))
    assert manifest["app_id"] == config.app_id == "fraud-detector"


# --- CodeConnections source ----------------------------------------------------------------------

CONNECTION = ("arn:aws:codeconnections:us-east-1:111111111111:connection/"
              "01234567-89ab-cdef-0123-456789abcdef")


@pytest.fixture(scope="module")
def connected():
    template, _, _ = third_party_template(SourceConnectionArn=CONNECTION,
                                          SourceRepository="example-org/sealed-app",
                                          SourceBranch="release")
    return template


def test_connected_pipeline_builds_the_named_repository_and_branch_on_push(connected):
    connected.has_resource_properties("AWS::CodePipeline::Pipeline", {"Stages": Match.array_with([
        Match.object_like({"Name": "Source", "Actions": [Match.object_like({
            "ActionTypeId": Match.object_like({"Category": "Source",
                                               "Provider": "CodeStarSourceConnection"}),
            "Configuration": {"ConnectionArn": CONNECTION,
                              "FullRepositoryId": "example-org/sealed-app",
                              "BranchName": "release", "DetectChanges": True}})]})])})


def test_connected_pipeline_creates_no_codecommit_repository_or_rule(connected):
    connected.resource_count_is("AWS::CodeCommit::Repository", 0)
    connected.resource_count_is("AWS::Events::Rule", 0)
    assert "RepositoryCloneUrlGrc" not in connected.to_json()["Outputs"]
    connected.has_output("SourceRepository", {"Value": "example-org/sealed-app"})


@pytest.mark.parametrize("service", ["codeconnections", "codestar-connections"])
def test_source_role_may_use_the_connection_under_its_own_service_prefix(service):
    arn = CONNECTION.replace(":codeconnections:", f":{service}:")
    template, _, _ = third_party_template(SourceConnectionArn=arn,
                                          SourceRepository="example-org/sealed-app")
    source_role = role_statements(template, "SealingPipelineSourceCodePipelineActionRole")
    uses = [s for s in source_role if f"{service}:UseConnection" in as_list(s["Action"])]
    assert uses and all(s["Resource"] == arn for s in uses)


def test_connected_builds_still_get_the_same_projects(connected):
    assert set(projects(connected)) == {"application-encryptor", "nitro-image-builder"}


def test_codecommit_source_follows_source_branch():
    template, _, _ = third_party_template(SourceBranch="release")
    template.has_resource_properties("AWS::CodePipeline::Pipeline", {"Stages": Match.array_with([
        Match.object_like({"Name": "Source", "Actions": [Match.object_like({
            "Configuration": Match.object_like({"BranchName": "release"})})]})])})


def test_sealing_pipeline_needs_exactly_one_source():
    import aws_cdk as cdk
    from aws_cdk import aws_kms as kms

    from constructs.sealing_pipeline import SealingPipeline

    stack = cdk.Stack(cdk.App(), "Bare", env=cdk.Environment(account="111111111111",
                                                             region="us-east-1"))
    with pytest.raises(ValueError, match="needs one source"):
        SealingPipeline(stack, "P", repository=None, enclave_key=kms.Key(stack, "K"),
                        app_directory="a", app_id="a", host_account="222222222222",
                        host_bucket_name="b-bucket",
                        host_bucket_key_arn="arn:aws:kms:us-east-1:222222222222:key/x",
                        encrypted_app_prefix="e/", enclave_image_prefix="i/",
                        measurements_to_keep=3, measurement_record_parameter="/p")
