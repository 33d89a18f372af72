"""Help texts and the README say what the code does today."""

from __future__ import annotations

import re

from client.cli import build_parser
from tests.conftest import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text()
DEMO = (PROJECT_ROOT / "demo.py").read_text()


def global_help(option: str) -> str:
    action = next(a for a in build_parser()._actions if option in a.option_strings)
    return str(action.help)


def test_port_help_names_the_host_settings_default():
    text = global_help("--port")
    assert "host settings" in text and "enclave_port" in text
    assert "(default 5005)" not in text  # the host settings file may say otherwise


def test_region_help_names_the_host_settings_file():
    text = global_help("--region")
    assert "host settings file" in text
    assert text.index("AWS_REGION") < text.index("host settings") < text.index("IMDSv2")


# README's wording of a demo step -> the words of demo.py's own step title.
DEMO_STEPS = (
    ("Starts the simulation", "Start the local simulation"),
    ("allow-list tool", "allow the enclave image"),
    ("seals", "seal src/"),
    ("verifies the enclave's attestation", "verify the enclave's attestation"),
    ("pushes the", "push the sealed application"),
    ("runs the `predict` entrypoint", "`predict` entrypoint"),
    ("signed receipt", "the run's receipt"),
    ("`serve` entrypoint", "`serve` entrypoint as a service"),
    ("Hostile host", "Hostile host"),
    ("cannot decrypt the bundle", "decrypting the bundle directly is denied"),
    ("stops the simulation", "stop the simulation"),
)


def test_readme_lists_the_demo_steps_in_the_order_the_demo_runs_them():
    section = README.split("### What `make demo` shows", 1)[1].split("\n## ", 1)[0]
    titles = " | ".join(re.findall(r'self\.step\(\s*f?"([^"]+)"', DEMO))
    for readme_words, demo_words in DEMO_STEPS:
        assert readme_words in section, f"README's demo steps do not mention {readme_words!r}"
        assert demo_words in titles, f"demo.py has no step {demo_words!r} any more"
    readme_order = sorted(DEMO_STEPS, key=lambda pair: section.index(pair[0]))
    demo_order = sorted(DEMO_STEPS, key=lambda pair: titles.index(pair[1]))
    assert readme_order == demo_order
