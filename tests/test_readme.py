"""The README stays true: its commands exist, its key table covers every context key."""

import re

from stacks.config import CONTEXT_KEYS
from tests.conftest import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text()


def test_every_context_key_is_in_the_readme_table():
    documented = set(re.findall(r"^\| `([A-Za-z0-9]+)` \|", README, flags=re.MULTILINE))
    assert set(CONTEXT_KEYS) - documented == set()


def test_the_readme_table_names_no_key_the_config_does_not_read():
    table = README.split("### Context keys", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Za-z0-9]+)` \|", table, flags=re.MULTILINE))
    assert documented - set(CONTEXT_KEYS) == set()


def test_the_two_readme_commands_are_make_targets():
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    for target in ("demo", "test", "setup", "synth"):
        assert f"make {target}" in README
        assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE)


def test_ci_runs_the_readme_test_command():
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, flags=re.MULTILINE)


def test_every_client_command_is_in_the_client_reference():
    from client.cli import build_parser

    reference = (PROJECT_ROOT / "docs" / "client.md").read_text()
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    for name in subparsers.choices:
        assert f"`{name}" in reference or f"**`{name}" in reference, name
