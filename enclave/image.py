"""What the enclave image gives applications: its interpreters and its packages.

Inside the enclave the app directory lives under /run, which the init mounts `noexec`: nothing
that arrives in a bundle can be executed directly. An entrypoint therefore starts one of the
image's interpreters, named in the manifest as `command[0]`; the runtime runs it as its own
interpreter (the image's /usr/bin/python3.11, named by absolute path in the image's CMD), never
whatever a PATH lookup would find (Amazon Linux 2023's python3 is 3.9). The image's Python packages
(containers/requirements-*.txt) are in `APP_SITE`, which apps get as PYTHONPATH.

Checked when sealing (`enclave.manifest`, so envelope_encryptor refuses such a bundle) and again
when a run starts (`app_argv`), each time with the same message.
"""

from __future__ import annotations

from collections.abc import Sequence

APP_INTERPRETERS = ("python3", "python3.11")
APP_SITE = "/opt/enclave/site"


def interpreter_problem(program: str) -> str | None:
    """Why `program` cannot be an entrypoint's command[0] in the image, or None if it can."""
    if program in APP_INTERPRETERS:
        return None
    return (f"{program!r} is not an interpreter of the enclave image: the app is unsealed "
            "under /run, which is mounted noexec, so a bundle's own files cannot be executed; "
            f"start one of {', '.join(APP_INTERPRETERS)} (the image's Python 3.11) with the "
            "app's script as its argument")


def app_argv(command: Sequence[str], interpreter: str) -> list[str]:
    """The entrypoint's command with its interpreter name replaced by the runtime's own
    interpreter (`interpreter`, normally sys.executable). Raises ValueError with the reason."""
    problem = interpreter_problem(command[0]) if command else "the command is empty"
    if problem:
        raise ValueError(problem)
    return [interpreter, *command[1:]]
