"""The manifest contract: strict parsing, and host arguments confined to the exchange area."""

import copy
import json

import pytest

from enclave.manifest import (
    MANIFEST_NAME,
    ManifestError,
    load_manifest,
    parse_manifest,
)
from tests.conftest import PROJECT_ROOT

SAMPLE_MANIFEST = PROJECT_ROOT / "src" / "sample-inference" / MANIFEST_NAME

BASE = {
    "format": 1,
    "app_id": "sample-inference",
    "app_version": "1.0.0",
    "entrypoints": {
        "predict": {
            "command": ["python3", "ml_inference.py"],
            "args": [
                {"name": "input", "kind": "input"},
                {"name": "output", "kind": "output"},
                {
                    "name": "threshold",
                    "kind": "value",
                    "pattern": "^0\\.[0-9]{1,3}$",
                    "optional": True,
                },
            ],
        }
    },
    "output": {"stdout": True, "stderr": False, "max_bytes": 65536},
    "time_limit_seconds": 300,
    "concurrent_runs": 1,
}

INBOX = "/run/app/exchange/inbox"
OUTBOX = "/run/app/exchange/outbox"


def _manifest(**changes):
    doc = copy.deepcopy(BASE)
    doc.update(changes)
    return doc


def _parse(doc) -> object:
    return parse_manifest(json.dumps(doc).encode())


@pytest.fixture
def manifest():
    return _parse(BASE)


# --- parsing ------------------------------------------------------------------------------------


def test_sample_application_manifest_is_valid():
    manifest = load_manifest(SAMPLE_MANIFEST)
    assert manifest.app_id == "sample-inference"
    assert manifest.entrypoints["predict"].command == ("python3", "ml_inference.py")


def test_load_manifest_accepts_the_app_directory(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(BASE))
    assert load_manifest(tmp_path).app_version == "1.0.0"


def test_missing_manifest_file_names_the_expected_path(tmp_path):
    with pytest.raises(ManifestError, match=r"no manifest at .*manifest\.json"):
        load_manifest(tmp_path)


def test_parsed_fields_match_the_document(manifest):
    predict = manifest.entrypoint("predict")
    assert [a.kind for a in predict.args] == ["input", "output", "value"]
    assert (predict.min_args, predict.max_args) == (2, 3)
    assert manifest.output.stdout is True and manifest.output.stderr is False
    assert manifest.time_limit_seconds == 300


def test_optional_sections_default_to_closed():
    doc = _manifest()
    for key in ("output", "time_limit_seconds", "concurrent_runs"):
        del doc[key]
    manifest = _parse(doc)
    assert manifest.output.stdout is False and manifest.output.stderr is False
    assert manifest.concurrent_runs == 1


@pytest.mark.parametrize(
    "path",
    [
        (),
        ("entrypoints", "predict"),
        ("entrypoints", "predict", "args", 0),
        ("output",),
    ],
    ids=["top", "entrypoint", "arg", "output"],
)
def test_unknown_field_anywhere_is_rejected(path):
    doc = _manifest()
    target = doc
    for key in path:
        target = target[key]
    target["shell"] = True
    with pytest.raises(ManifestError, match="unknown field"):
        _parse(doc)


def test_duplicate_key_is_rejected():
    text = json.dumps(BASE)[:-1] + ', "app_id": "other"}'
    with pytest.raises(ManifestError, match="duplicate key 'app_id'"):
        parse_manifest(text.encode())


@pytest.mark.parametrize("missing", ["format", "app_id", "app_version", "entrypoints"])
def test_missing_required_field_is_rejected(missing):
    doc = _manifest()
    del doc[missing]
    with pytest.raises(ManifestError, match=f"missing field.*{missing}"):
        _parse(doc)


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"[]", b"\xff\xfe", b'{"format": NaN}'],
    ids=["empty", "garbage", "array", "not-utf8", "nan"],
)
def test_malformed_document_is_rejected(data):
    with pytest.raises(ManifestError):
        parse_manifest(data)


def test_oversized_document_is_rejected():
    with pytest.raises(ManifestError, match="larger than"):
        parse_manifest(b" " * (64 * 1024 + 1))


@pytest.mark.parametrize("fmt", [2, "1", True, 0])
def test_unsupported_format_is_rejected(fmt):
    with pytest.raises(ManifestError, match="format"):
        _parse(_manifest(format=fmt))


@pytest.mark.parametrize(
    "app_id", ["", "Upper", "-lead", "trail-", "a" * 64, "under_score", "dot.ted", 7]
)
def test_bad_app_id_is_rejected(app_id):
    with pytest.raises(ManifestError, match="app_id"):
        _parse(_manifest(app_id=app_id))


@pytest.mark.parametrize("version", ["", "1 0", "1/0", "v" * 65, "1.0\n"])
def test_bad_app_version_is_rejected(version):
    with pytest.raises(ManifestError, match="app_version"):
        _parse(_manifest(app_version=version))


@pytest.mark.parametrize(
    "program",
    ["/usr/bin/python3", "../bin/python3", "bin/../../x", "./..", "-c", "bin//x",
     "bin/run.sh", "./run", "sh", "bash", "python", "python3.9", "/usr/bin/python3.11"],
)
def test_command_other_than_an_image_interpreter_is_rejected(program):
    """/run is noexec in the enclave: a bundle's own files, or anything else, cannot be run."""
    doc = _manifest()
    doc["entrypoints"]["predict"]["command"] = [program, "x"]
    with pytest.raises(ManifestError, match=r"command\[0\].*noexec"):
        _parse(doc)


@pytest.mark.parametrize("program", ["python3", "python3.11"])
def test_image_interpreter_is_accepted(program):
    doc = _manifest()
    doc["entrypoints"]["predict"]["command"] = [program, "main.py"]
    assert _parse(doc).entrypoints["predict"].command == (program, "main.py")


@pytest.mark.parametrize("command", [[], "python3 x.py", ["python3", ""], ["python3", 3]])
def test_bad_command_is_rejected(command):
    doc = _manifest()
    doc["entrypoints"]["predict"]["command"] = command
    with pytest.raises(ManifestError, match="command"):
        _parse(doc)


def test_empty_entrypoints_are_rejected():
    with pytest.raises(ManifestError, match="entrypoints"):
        _parse(_manifest(entrypoints={}))


def test_too_many_entrypoints_are_rejected():
    eps = {f"e{i}": {"command": ["python3"]} for i in range(17)}
    with pytest.raises(ManifestError, match="at most 16"):
        _parse(_manifest(entrypoints=eps))


def test_too_many_args_are_rejected():
    doc = _manifest()
    doc["entrypoints"]["predict"]["args"] = [{"name": f"a{i}", "kind": "value"} for i in range(33)]
    with pytest.raises(ManifestError, match="more than 32"):
        _parse(doc)


def test_bad_arg_kind_is_rejected():
    doc = _manifest()
    doc["entrypoints"]["predict"]["args"][0]["kind"] = "path"
    with pytest.raises(ManifestError, match="kind"):
        _parse(doc)


def test_pattern_on_a_path_argument_is_rejected():
    doc = _manifest()
    doc["entrypoints"]["predict"]["args"][0]["pattern"] = ".*"
    with pytest.raises(ManifestError, match="only allowed for kind 'value'"):
        _parse(doc)


def test_invalid_regular_expression_is_rejected():
    doc = _manifest()
    doc["entrypoints"]["predict"]["args"][2]["pattern"] = "(["
    with pytest.raises(ManifestError, match="not a valid regular expression"):
        _parse(doc)


def test_duplicate_argument_names_are_rejected():
    doc = _manifest()
    doc["entrypoints"]["predict"]["args"][1]["name"] = "input"
    with pytest.raises(ManifestError, match="declared twice"):
        _parse(doc)


def test_required_argument_after_optional_is_rejected():
    doc = _manifest()
    doc["entrypoints"]["predict"]["args"].append({"name": "extra", "kind": "value"})
    with pytest.raises(ManifestError, match="follows an optional one"):
        _parse(doc)


@pytest.mark.parametrize(
    "key,value",
    [
        ("time_limit_seconds", 0),
        ("time_limit_seconds", 86401),
        ("time_limit_seconds", True),
        ("time_limit_seconds", 1.5),
        ("concurrent_runs", 0),
    ],
)
def test_out_of_range_limits_are_rejected(key, value):
    with pytest.raises(ManifestError, match=key):
        _parse(_manifest(**{key: value}))


def test_output_cap_above_one_mebibyte_is_rejected():
    with pytest.raises(ManifestError, match="max_bytes"):
        _parse(_manifest(output={"stdout": True, "max_bytes": 1024 * 1024 + 1}))


def test_output_flag_must_be_boolean():
    with pytest.raises(ManifestError, match="output.stderr"):
        _parse(_manifest(output={"stderr": "yes"}))


# --- resolving host arguments -------------------------------------------------------------------


def test_paths_map_into_the_exchange_area(manifest):
    argv = manifest.resolve_arguments("predict", ["batch/in.csv", "out.csv"], INBOX, OUTBOX)
    assert argv == [f"{INBOX}/batch/in.csv", f"{OUTBOX}/out.csv"]


def test_optional_value_is_passed_through(manifest):
    argv = manifest.resolve_arguments("predict", ["in.csv", "out.csv", "0.75"], INBOX, OUTBOX)
    assert argv[2] == "0.75"


def test_unknown_entrypoint_is_rejected(manifest):
    with pytest.raises(ManifestError, match="unknown entrypoint 'shell'.*predict"):
        manifest.resolve_arguments("shell", ["a", "b"], INBOX, OUTBOX)


@pytest.mark.parametrize("args", [[], ["in.csv"], ["a", "b", "0.5", "extra"]])
def test_wrong_argument_count_is_rejected(manifest, args):
    with pytest.raises(ManifestError, match="takes 2 to 3 argument"):
        manifest.resolve_arguments("predict", args, INBOX, OUTBOX)


@pytest.mark.parametrize(
    "path",
    [
        "../secret",
        "a/../../etc/passwd",
        "a/..",
        "/etc/passwd",
        "//etc/passwd",
        "./in.csv",
        "a//b",
        "a/",
        "",
        "in\0.csv",
        "-rf",
        ".hidden",
        "a\\..\\b",
        "in put.csv",
        "x" * 256,
        "/".join(["d"] * 33),
        "a/" * 600 + "b",
    ],
)
def test_input_path_escape_or_bad_form_is_rejected(manifest, path):
    with pytest.raises(ManifestError, match="argument 'input'"):
        manifest.resolve_arguments("predict", [path, "out.csv"], INBOX, OUTBOX)


@pytest.mark.parametrize("path", ["../../inbox/x", "/tmp/x", "-o", "out/../../x"])
def test_output_path_escape_is_rejected(manifest, path):
    with pytest.raises(ManifestError, match="argument 'output'"):
        manifest.resolve_arguments("predict", ["in.csv", path], INBOX, OUTBOX)


@pytest.mark.parametrize("value", ["-1", "0.5\n", "0.5 ", "1.0", "0.12345", "0.5\0", "0.5;rm", ""])
def test_value_not_matching_its_pattern_is_rejected(manifest, value):
    with pytest.raises(ManifestError, match="argument 'threshold'"):
        manifest.resolve_arguments("predict", ["in.csv", "out.csv", value], INBOX, OUTBOX)


def test_value_starting_with_dash_is_rejected_even_if_the_pattern_allows_it():
    doc = _manifest()
    doc["entrypoints"]["predict"]["args"][2]["pattern"] = ".*"
    manifest = _parse(doc)
    with pytest.raises(ManifestError, match="may not start with '-'"):
        manifest.resolve_arguments("predict", ["in.csv", "out.csv", "--help"], INBOX, OUTBOX)


def test_default_value_pattern_applies_when_none_is_given():
    doc = _manifest()
    del doc["entrypoints"]["predict"]["args"][2]["pattern"]
    manifest = _parse(doc)
    ok = manifest.resolve_arguments("predict", ["i", "o", "mode=fast"], INBOX, OUTBOX)
    assert ok[2] == "mode=fast"
    with pytest.raises(ManifestError, match="does not match"):
        manifest.resolve_arguments("predict", ["i", "o", "a b"], INBOX, OUTBOX)


def test_overlong_value_is_rejected_even_if_the_pattern_allows_it():
    doc = _manifest()
    doc["entrypoints"]["predict"]["args"][2]["pattern"] = "x*"
    manifest = _parse(doc)
    with pytest.raises(ManifestError, match="longer than"):
        manifest.resolve_arguments("predict", ["i", "o", "x" * 4097], INBOX, OUTBOX)


def test_non_string_arguments_are_rejected(manifest):
    with pytest.raises(ManifestError, match="list of strings"):
        manifest.resolve_arguments("predict", ["in.csv", 3], INBOX, OUTBOX)


def test_relative_exchange_root_is_rejected(manifest):
    with pytest.raises(ManifestError, match="inbox must be an absolute path"):
        manifest.resolve_arguments("predict", ["in.csv", "out.csv"], "inbox", OUTBOX)


def test_resolving_touches_no_file_system(manifest, tmp_path):
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    manifest.resolve_arguments("predict", ["a/in.csv", "b/out.csv"], inbox, outbox)
    assert list(tmp_path.iterdir()) == []
