"""Host arguments against the owner's manifest, refused for the reason the host is told.

Written against the mutants `make mutate` found alive (docs/testing.md): which area an input or
an output may name, the argument count, the exchange roots, the entrypoint's name.
"""

from __future__ import annotations

import copy
import json

import pytest

from enclave.manifest import Manifest, ManifestError, parse_manifest

INBOX = "/run/app/exchange/inbox"
OUTBOX = "/run/app/exchange/outbox"

DOCUMENT = {
    "format": 1,
    "app_id": "sample-inference",
    "app_version": "1.0.0",
    "entrypoints": {
        "predict": {
            "command": ["python3", "predict.py"],
            "args": [
                {"name": "input", "kind": "input"},
                {"name": "output", "kind": "output"},
                {"name": "threshold", "kind": "value", "optional": True},
            ],
        },
        "tag": {
            "command": ["python3", "tag.py"],
            "args": [{"name": "label", "kind": "value", "pattern": "^[a-z]+$"}],
        },
        "train": {
            "command": ["python3", "train.py"],
            "args": [
                {"name": "data", "kind": "input"},
                {"name": "model", "kind": "output"},
            ],
        },
    },
}


@pytest.fixture
def manifest() -> Manifest:
    return parse_manifest(json.dumps(copy.deepcopy(DOCUMENT)).encode())


def refusal(manifest: Manifest, entrypoint: str, args: object, inbox: str = INBOX,
            outbox: str = OUTBOX) -> str:
    with pytest.raises(ManifestError) as caught:
        manifest.resolve_arguments(entrypoint, args, inbox, outbox)  # type: ignore[arg-type]
    return str(caught.value)


def test_inputs_and_outputs_may_name_their_own_area(manifest: Manifest) -> None:
    assert manifest.resolve_arguments("train", ["inbox/data.csv", "outbox/model.bin"],
                                      INBOX, OUTBOX) == [f"{INBOX}/data.csv",
                                                         f"{OUTBOX}/model.bin"]


def test_an_input_in_the_outbox_is_refused_with_what_to_do(manifest: Manifest) -> None:
    assert refusal(manifest, "train", ["outbox/model.bin", "model.bin"]) == (
        "argument 'data': 'outbox/model.bin' is in the outbox, but input arguments are paths in "
        "the inbox; pull the file and push it into the inbox first")


def test_an_output_in_the_inbox_is_refused(manifest: Manifest) -> None:
    assert refusal(manifest, "train", ["data.csv", "inbox/data.csv"]) == (
        "argument 'model': 'inbox/data.csv' is in the inbox, but output arguments are paths in "
        "the outbox")


def test_an_unknown_entrypoint_is_refused_naming_the_declared_ones(manifest: Manifest) -> None:
    assert refusal(manifest, "shell", []) == (
        "unknown entrypoint 'shell': this bundle declares predict, tag, train")


def test_arguments_that_are_not_strings_are_refused(manifest: Manifest) -> None:
    assert refusal(manifest, "train", ["data.csv", 7]) == "arguments must be a list of strings"


def test_a_wrong_count_names_the_range_and_the_optional_arguments(manifest: Manifest) -> None:
    assert refusal(manifest, "predict", ["a.csv"]) == (
        "entrypoint 'predict' takes 2 to 3 argument(s) (<input> <output> [threshold]), got 1")


def test_a_wrong_count_names_a_fixed_count(manifest: Manifest) -> None:
    assert refusal(manifest, "train", ["a", "b", "c"]) == (
        "entrypoint 'train' takes 2 argument(s) (<data> <model>), got 3")


def test_a_relative_outbox_root_is_refused_by_name(manifest: Manifest) -> None:
    assert refusal(manifest, "train", ["a", "b"], outbox="run/outbox") == (
        "outbox must be an absolute path")
    assert refusal(manifest, "train", ["a", "b"], inbox="run/inbox") == (
        "inbox must be an absolute path")


def input_refusal(manifest: Manifest, path: str) -> str:
    return refusal(manifest, "train", [path, "model.bin"])


def test_a_nul_byte_in_a_path_is_refused_as_such(manifest: Manifest) -> None:
    assert input_refusal(manifest, "a\0b") == "argument 'data': NUL byte in path"


def test_the_path_length_limit_is_inclusive(manifest: Manifest) -> None:
    longest = "/".join(["a" * 204] * 5)
    assert len(longest) == 1024
    resolved = manifest.resolve_arguments("train", [longest, "m"], INBOX, OUTBOX)
    assert resolved[0] == f"{INBOX}/{longest}"
    assert input_refusal(manifest, longest + "a") == (
        "argument 'data': path longer than 1024 characters")


def test_an_absolute_path_is_refused_with_what_to_give(manifest: Manifest) -> None:
    assert input_refusal(manifest, "/etc/passwd") == (
        "argument 'data': absolute path '/etc/passwd' not allowed; give a path relative to the "
        "exchange area")


def test_a_path_that_looks_like_an_option_is_refused_as_such(manifest: Manifest) -> None:
    assert input_refusal(manifest, "-rf") == "argument 'data': a path may not start with '-'"


def test_the_depth_limit_is_inclusive(manifest: Manifest) -> None:
    deepest = "/".join(["d"] * 32)
    assert manifest.resolve_arguments("train", [deepest, "m"], INBOX, OUTBOX)[0] == (
        f"{INBOX}/{deepest}")
    assert input_refusal(manifest, deepest + "/d") == "argument 'data': path deeper than 32 levels"


@pytest.mark.parametrize("path", ["a//b", "./a", "a/../b", "a/."])
def test_empty_dot_and_dot_dot_components_are_refused_as_such(manifest: Manifest,
                                                              path: str) -> None:
    assert input_refusal(manifest, path) == (
        f"argument 'data': path {path!r} has an empty, '.' or '..' component")


def test_the_component_length_limit_is_inclusive(manifest: Manifest) -> None:
    name = "n" * 255
    assert manifest.resolve_arguments("train", [name, "m"], INBOX, OUTBOX)[0] == (
        f"{INBOX}/{name}")
    assert input_refusal(manifest, name + "n").startswith(
        f"argument 'data': path component {name + 'n'!r} must match ")


def test_a_root_with_a_nul_byte_is_refused(manifest: Manifest) -> None:
    assert refusal(manifest, "train", ["a", "b"], inbox=INBOX + "\0") == (
        "inbox must be an absolute path")


def test_a_nul_byte_in_a_value_is_refused_as_such(manifest: Manifest) -> None:
    assert refusal(manifest, "tag", ["a\0b"]) == "argument 'label': NUL byte in value"


def test_the_value_length_limit_is_inclusive(manifest: Manifest) -> None:
    assert manifest.resolve_arguments("tag", ["a" * 4096], INBOX, OUTBOX) == ["a" * 4096]
    assert refusal(manifest, "tag", ["a" * 4097]) == (
        "argument 'label': value longer than 4096 characters")


# ---- the owner's entrypoints, as the manifest declares them -----------------------------------

ONE = {"format": 1, "app_id": "a", "app_version": "1",
       "entrypoints": {"x": {"command": ["python3", "m.py"],
                             "args": [{"name": "i", "kind": "input"}]}}}


def with_entrypoint(**fields) -> dict:
    document = copy.deepcopy(ONE)
    document["entrypoints"]["x"].update(fields)
    return document


def parsed(document: dict) -> Manifest:
    return parse_manifest(json.dumps(document).encode())


def manifest_refusal(document: dict) -> str:
    with pytest.raises(ManifestError) as caught:
        parsed(document)
    return str(caught.value)


@pytest.mark.parametrize(("document", "reason"), [
    ({**ONE, "entrypoints": {"Bad": ONE["entrypoints"]["x"]}},
     "entrypoint name must be lowercase [a-z][a-z0-9_-]{0,62}, got 'Bad'"),
    (with_entrypoint(env={}),
     "unknown field(s) env in entrypoints.x (allowed: args, command, kind, service)"),
    (with_entrypoint(kind="daemon"),
     "entrypoints.x.kind must be one of run, service, got 'daemon'"),
    (with_entrypoint(command=["python3"] + ["a"] * 64),
     "entrypoints.x.command has more than 64 elements"),
    (with_entrypoint(command=["python3", "a\0b"]),
     "entrypoints.x.command[1] must be a non-empty string without NUL, at most 4096 characters"),
    (with_entrypoint(command=["python3", "a" * 4097]),
     "entrypoints.x.command[1] must be a non-empty string without NUL, at most 4096 characters"),
    (with_entrypoint(args=[{"name": f"a{i}", "kind": "value"} for i in range(33)]),
     "entrypoints.x.args has more than 32 entries"),
    (with_entrypoint(args=[{"name": "Bad", "kind": "value"}]),
     "entrypoints.x.args[0].name must be lowercase [a-z][a-z0-9_]{0,62}, got 'Bad'"),
    (with_entrypoint(args=[{"name": "a", "kind": "value", "env": 1}]),
     "unknown field(s) env in entrypoints.x.args[0] (allowed: kind, name, optional, pattern)"),
    (with_entrypoint(args=[{"name": "a", "kind": "file"}]),
     "entrypoints.x.args[0].kind must be one of input, output, value, got 'file'"),
    (with_entrypoint(args=[{"name": "a", "kind": "value", "pattern": ""}]),
     "entrypoints.x.args[0].pattern must be a non-empty string"),
    (with_entrypoint(args=[{"name": "a", "kind": "value", "optional": "yes"}]),
     "entrypoints.x.args[0].optional must be true or false"),
    (with_entrypoint(args=[{"name": "a", "kind": "value", "optional": True},
                           {"name": "b", "kind": "value"}]),
     "entrypoints.x: required argument 'b' follows an optional one; put optional arguments last"),
    (with_entrypoint(kind="service"),
     "entrypoints.x: a service takes no arguments; it reads requests"),
    (with_entrypoint(kind="service", args=[], service={"restart": "always"}),
     "entrypoints.x.service.restart must be one of never, on-failure, got 'always'"),
    (with_entrypoint(service={}),
     'entrypoints.x.service is only allowed with "kind": "service"'),
])
def test_a_malformed_entrypoint_is_refused_naming_where(document: dict, reason: str) -> None:
    assert manifest_refusal(document) == reason


def test_the_entrypoint_limits_are_inclusive() -> None:
    parsed(with_entrypoint(command=["python3"] + ["a"] * 63))
    parsed(with_entrypoint(command=["python3", "a" * 4096]))
    parsed(with_entrypoint(args=[{"name": f"a{i}", "kind": "value"} for i in range(32)]))


def test_a_service_entrypoint_keeps_its_spec_and_a_run_has_none() -> None:
    service = parsed(with_entrypoint(kind="service", args=[],
                                     service={"max_concurrent_requests": 8}))
    spec = service.entrypoint("x").service
    assert spec is not None and spec.max_concurrent_requests == 8
    assert parsed(ONE).entrypoint("x").service is None


def test_args_that_are_not_a_list_are_refused() -> None:
    assert manifest_refusal(with_entrypoint(args={"name": "i"})) == (
        "entrypoints.x.args must be a list")


def test_a_service_without_a_spec_gets_the_default_one() -> None:
    from enclave.manifest import ServiceSpec

    entrypoint = parsed(with_entrypoint(kind="service", args=[])).entrypoint("x")
    assert entrypoint.name == "x" and entrypoint.kind == "service"
    assert entrypoint.service == ServiceSpec()
    run = parsed(ONE).entrypoint("x")
    assert run.name == "x" and run.kind == "run"
