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
