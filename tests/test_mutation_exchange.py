"""The exchange path rule and its link-free walking, refused for the reason the host is told.

Written against the mutants `make mutate` found alive (docs/testing.md): each test pins one
boundary or one refusal message of `split_area`, `split_relative`, `confine` and `ExchangeArea`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from enclave.exchange import ExchangeArea
from enclave.exchange_errors import NotFound, PathRejected
from enclave.paths import (
    MAX_DEPTH,
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    confine,
    split_area,
    split_relative,
)


def refusal(relative: object) -> str:
    with pytest.raises(PathRejected) as caught:
        split_relative(relative)  # type: ignore[arg-type]
    return str(caught.value)


@pytest.fixture
def area(tmp_path: Path) -> ExchangeArea:
    return ExchangeArea(tmp_path / "exchange")


def test_only_the_first_component_names_an_area() -> None:
    assert split_area("outbox/scores.csv", default="inbox") == ("outbox", "scores.csv")
    assert split_area("inbox/a/b", default="outbox") == ("inbox", "a/b")
    assert split_area("a/inbox/b", default="outbox") == ("outbox", "a/inbox/b")


def test_a_path_that_is_not_a_string_is_refused_by_its_type() -> None:
    assert refusal(b"x") == "path must be a string, got bytes"


def test_the_path_length_limit_is_inclusive() -> None:
    longest = "/".join(["a" * 204] * 5)
    assert len(longest) == MAX_PATH_BYTES
    assert split_relative(longest) == tuple(["a" * 204] * 5)
    assert refusal(longest + "a") == (
        f"path is longer than {MAX_PATH_BYTES} bytes; use a shorter name")


def test_an_absolute_path_is_refused_as_absolute() -> None:
    assert refusal("/etc/passwd") == (
        "path '/etc/passwd' is absolute; give a path relative to the area")


@pytest.mark.parametrize("control", ["\x00", "\x1f", "\x7f"])
def test_control_characters_are_refused(control: str) -> None:
    assert refusal(f"a{control}b") == "path contains a NUL or control character; remove it"


def test_a_space_is_not_a_control_character() -> None:
    assert split_relative("my file.txt") == ("my file.txt",)


def test_a_backslash_is_refused_as_a_separator() -> None:
    assert refusal("a\\b") == r"path 'a\\b' contains a backslash; use '/' between names"


def test_one_trailing_slash_names_the_directory_and_two_are_refused() -> None:
    assert split_relative("dir/") == ("dir",)
    assert "empty, '.' or '..' component" in refusal("dir//")


def test_the_depth_limit_is_inclusive() -> None:
    assert len(split_relative("/".join(["d"] * MAX_DEPTH))) == MAX_DEPTH
    assert refusal("/".join(["d"] * (MAX_DEPTH + 1))) == f"path is deeper than {MAX_DEPTH} levels"


@pytest.mark.parametrize("relative", ["a/../b", "./a", "a//b"])
def test_dot_dot_and_empty_components_are_refused(relative: str) -> None:
    assert refusal(relative) == (
        f"path {relative!r} has an empty, '.' or '..' component; name each directory")


def test_the_name_length_limit_is_inclusive() -> None:
    assert split_relative("n" * MAX_NAME_BYTES) == ("n" * MAX_NAME_BYTES,)
    name = "n" * (MAX_NAME_BYTES + 1)
    assert refusal(name) == f"a name in {name!r} is longer than {MAX_NAME_BYTES} bytes"


def test_upload_names_in_progress_are_refused() -> None:
    assert refusal("dir/.partial-x") == (
        "names starting with '.partial-' are reserved for uploads")


def test_a_lone_surrogate_is_refused_as_invalid_utf8() -> None:
    assert refusal("a\udcffb") == "path 'a\\udcffb' is not valid UTF-8"


def test_confine_stays_under_the_area_root(tmp_path: Path) -> None:
    assert confine(tmp_path, "a/b") == tmp_path / "a" / "b"
    assert confine(tmp_path, "") == tmp_path
    with pytest.raises(PathRejected):
        confine(tmp_path, "../x")


def test_an_unknown_area_is_not_found_and_the_areas_are_named(area: ExchangeArea) -> None:
    with pytest.raises(NotFound) as caught:
        area.stat("elsewhere", "x")
    assert str(caught.value) == "unknown area 'elsewhere'; expected one of inbox, outbox"


def test_a_symbolic_link_to_a_file_inside_the_area_is_not_followed(area: ExchangeArea) -> None:
    (area.root / "inbox" / "real.txt").write_bytes(b"data")
    os.symlink("real.txt", area.root / "inbox" / "link.txt")
    with pytest.raises(PathRejected) as caught:
        area.stat("inbox", "link.txt")
    assert str(caught.value) == "'link.txt' is a symbolic link, which is not followed"


def test_a_dangling_symbolic_link_is_refused_not_missing(area: ExchangeArea) -> None:
    os.symlink("nowhere", area.root / "inbox" / "dangling")
    with pytest.raises(PathRejected, match="symbolic link"):
        area.stat("inbox", "dangling")


def test_a_missing_file_is_not_found_by_its_path(area: ExchangeArea) -> None:
    with pytest.raises(NotFound) as caught:
        area.stat("inbox", "dir/missing")
    assert str(caught.value) == "'dir/missing' does not exist"
    (area.root / "inbox" / "dir").mkdir()
    with pytest.raises(NotFound) as caught:
        area.stat("inbox", "dir/missing")
    assert str(caught.value) == "'dir/missing' does not exist"
