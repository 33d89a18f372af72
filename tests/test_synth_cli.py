"""App smoke test through the CDK CLI, then cfn-lint on the templates it writes.

`cdk synth` runs app.py exactly as a deployment would (cdk.json context, cdk-nag registered on
the app), with no AWS credentials in the environment. Synthesized once for the module (~20 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cdk

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STACKS = ("HostStack", "ThirdPartyStack")
TOOLS = {"cdk": PROJECT_ROOT / "node_modules" / ".bin" / "cdk",
         "cfn-lint": PROJECT_ROOT / ".venv" / "bin" / "cfn-lint"}
# In a virtualenv of its own (`make setup`): its pins clash with requirements.txt.
CHECKOV = PROJECT_ROOT / ".venv-checkov" / "bin" / "checkov"
# Every checkov finding the stacks accept, on the one resource it concerns (logical id prefix).
EXPECTED_CHECKOV_SKIPS = {
    ("HostStack", "CKV_AWS_18", "SharingAccessLogs"),
    ("HostStack", "CKV_AWS_21", "SharingAccessLogs"),
    *{("HostStack", check, "CustomVpcRestrictDefaultSGCustomResourceProviderHandler")
      for check in ("CKV_AWS_115", "CKV_AWS_116", "CKV_AWS_117")},
    ("ThirdPartyStack", "CKV_AWS_18", "SealingPipelineArtifactBucket"),
    *{("ThirdPartyStack", check, "MeasurementKeeperFunction")
      for check in ("CKV_AWS_115", "CKV_AWS_116", "CKV_AWS_117")},
}


def _environment() -> dict[str, str]:
    # No credentials and no metadata service: synth must not need AWS.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({
        "PATH": f"{PROJECT_ROOT / '.venv' / 'bin'}:{PROJECT_ROOT / 'node_modules' / '.bin'}:"
                f"{os.environ.get('PATH', '')}",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "CDK_DISABLE_CLI_TELEMETRY": "true",
        "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "1",
    })
    return env


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    for name, path in TOOLS.items():
        if not path.exists():
            pytest.fail(f"{name} not found at {path}: run `make setup` first")
    out = tmp_path_factory.mktemp("cdk.out")
    result = subprocess.run(
        [str(TOOLS["cdk"]), "synth", "--quiet", "--output", str(out)],
        cwd=PROJECT_ROOT, env=_environment(), capture_output=True, text=True, timeout=600)
    return result, out


def test_cdk_synth_succeeds_without_aws_credentials(synth):
    result, _ = synth
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Need to perform AWS calls" not in result.stderr


@pytest.mark.parametrize("stack", STACKS)
def test_cdk_synth_writes_the_template(synth, stack):
    _, out = synth
    template = json.loads((out / f"{stack}.template.json").read_text())
    assert template["Resources"]


def test_cdk_synth_reports_no_nag_finding(synth):
    result, out = synth
    assert "AwsSolutions-" not in result.stdout + result.stderr
    report = json.loads((out / "validation-report.json").read_text())
    for plugin in report.get("pluginReports", []):
        assert plugin.get("violations", []) == [], plugin


def test_cdk_synth_needed_no_context_lookup(synth):
    _, out = synth
    assert json.loads((out / "manifest.json").read_text()).get("missing") is None


@pytest.fixture(scope="module")
def lint(synth) -> tuple[subprocess.CompletedProcess, list[dict]]:
    result, out = synth
    if result.returncode:
        pytest.fail(f"cdk synth failed, nothing to lint:\n{result.stderr}")
    linted = subprocess.run(
        [str(TOOLS["cfn-lint"]), "--format", "json",
         *(str(out / f"{stack}.template.json") for stack in STACKS)],
        env=_environment(), capture_output=True, text=True, timeout=600)
    return linted, json.loads(linted.stdout or "[]")


def test_cfn_lint_runs_on_both_templates(lint):
    linted, _ = lint
    # Exit status is a bit set: 2 errors, 4 warnings, 8 informational; 1 means it crashed.
    assert linted.returncode & 1 == 0, linted.stderr


@pytest.mark.parametrize("stack", STACKS)
def test_cfn_lint_finds_no_error(lint, stack):
    _, matches = lint
    errors = [f"{m['Rule']['Id']} {m['Message']} ({m['Location']['Path']})" for m in matches
              if m["Level"] == "Error" and m["Filename"].endswith(f"{stack}.template.json")]
    assert errors == []


# ---- checkov on the same templates --------------------------------------------------------------


def _checkov(*templates: Path) -> list[dict]:
    if not CHECKOV.exists():
        message = f"checkov not found at {CHECKOV}: run `make setup` (it installs .venv-checkov)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    done = subprocess.run(
        [str(CHECKOV), "--framework", "cloudformation", "--output", "json", "--compact",
         "--skip-download", *(arg for t in templates for arg in ("--file", str(t)))],
        env=_environment(), capture_output=True, text=True, timeout=600)
    assert done.stdout.strip(), done.stderr
    reports = json.loads(done.stdout)
    return reports if isinstance(reports, list) else [reports]


@pytest.fixture(scope="module")
def checkov_results(synth) -> dict[str, dict]:
    result, out = synth
    if result.returncode:
        pytest.fail(f"cdk synth failed, nothing to check:\n{result.stderr}")
    found: dict[str, dict] = {stack: {"failed": [], "skipped": []} for stack in STACKS}
    for report in _checkov(*(out / f"{stack}.template.json" for stack in STACKS)):
        for kind in ("failed", "skipped"):
            for check in report["results"][f"{kind}_checks"]:
                stack = Path(check["file_path"]).name.removesuffix(".template.json")
                found[stack][kind].append(check)
    return found


@pytest.mark.parametrize("stack", STACKS)
def test_checkov_finds_nothing_unacknowledged(checkov_results, stack):
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}"
              for c in checkov_results[stack]["failed"]]
    assert failed == []


def test_checkov_acknowledgements_are_exactly_the_reviewed_ones(checkov_results):
    skipped = set()
    for stack, results in checkov_results.items():
        for check in results["skipped"]:
            logical_id = check["resource"].split(".", 1)[1]
            prefix = next((p for s, c, p in EXPECTED_CHECKOV_SKIPS
                           if s == stack and c == check["check_id"] and logical_id.startswith(p)),
                          logical_id)
            skipped.add((stack, check["check_id"], prefix))
            reason = check["check_result"].get("suppress_comment", "")
            assert len(reason.split()) >= 8, (stack, check["check_id"], reason)
    assert skipped == EXPECTED_CHECKOV_SKIPS


def test_checkov_reports_what_is_not_acknowledged(tmp_path):
    # Guards the tests above against passing vacuously (wrong framework, files not read).
    template = tmp_path / "Probe.template.json"
    template.write_text(json.dumps({"Resources": {"Unlogged": {
        "Type": "AWS::S3::Bucket", "Properties": {}}}}))
    (report,) = _checkov(template)
    assert "CKV_AWS_18" in {c["check_id"] for c in report["results"]["failed_checks"]}


def test_a_missing_checkov_fails_in_ci_instead_of_skipping(monkeypatch, tmp_path):
    monkeypatch.setattr(sys.modules[__name__], "CHECKOV", tmp_path / "no-checkov")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="make setup"):
        _checkov(tmp_path / "x.template.json")
