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
        "unknown entrypoint 'shell': this bundle declares predict, train")


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
