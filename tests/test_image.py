"""Apps start one of the image's interpreters: /run, where they are unsealed, is noexec."""

from __future__ import annotations

import sys

import pytest

from enclave.image import APP_INTERPRETERS, app_argv, interpreter_problem
from tests.conftest import PROJECT_ROOT


@pytest.mark.parametrize("name", APP_INTERPRETERS)
def test_an_image_interpreter_becomes_the_runtimes_own(name):
    assert app_argv([name, "main.py", "--fixed"], sys.executable) == \
        [sys.executable, "main.py", "--fixed"]


@pytest.mark.parametrize("program", ["bin/run.sh", "./predict", "sh", "/usr/bin/python3",
                                     "python3.9", "python"])
def test_anything_else_is_refused_with_the_reason(program):
    with pytest.raises(ValueError, match="noexec") as caught:
        app_argv([program, "x"], sys.executable)
    assert "python3, python3.11" in str(caught.value)


def test_an_empty_command_is_refused():
    with pytest.raises(ValueError, match="empty"):
        app_argv([], sys.executable)


def test_sealing_refuses_a_bundle_whose_entrypoint_is_its_own_file(tmp_path):
    """envelope_encryptor validates the manifest before asking KMS for anything."""
    import json
    import subprocess

    app = tmp_path / "app"
    app.mkdir()
    (app / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (app / "manifest.json").write_text(json.dumps({
        "format": 1, "app_id": "demo", "app_version": "1.0.0",
        "entrypoints": {"run": {"command": ["run.sh"]}}}))
    done = subprocess.run([sys.executable, "envelope_encryptor.py", "encrypt", "-d", str(app),
                           "-k", "arn:aws:kms:us-east-1:111111111111:key/x", "-o",
                           str(tmp_path / "out")], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": "x",
                               "AWS_SECRET_ACCESS_KEY": "x", "AWS_REGION": "us-east-1",
                               "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert done.returncode != 0
    assert "command[0]" in done.stderr and "noexec" in done.stderr
    assert interpreter_problem("run.sh") is not None
