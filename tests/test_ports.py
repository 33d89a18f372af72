"""EnclavePort and VsockProxyPort: the host and the image agree, from one context key each.

The host side (HostStack's user data -> /etc/sealed-enclave/host.json -> the client and
vsock-proxy) and the image side (ThirdPartyStack's nitro-image-builder -> docker build arguments
-> the Dockerfile's ENV -> the runtime's listener and its bridge's upstream) must name the same two
ports, or the host talks to a port nobody listens on.
"""

from __future__ import annotations

import json
import re
import shlex

import pytest
from host_app import build_host_stack, user_data_text

from client.sim.jail import image_spec
from constructs.sealing_pipeline import load_buildspec
from enclave.__main__ import image_ports
from tests.conftest import PROJECT_ROOT
from tests.test_user_data import heredoc
from tests.third_party_support import third_party_template

pytestmark = pytest.mark.cdk
PORTS = {"EnclavePort": 5123, "VsockProxyPort": 8123}


@pytest.fixture(scope="module")
def host_settings():
    _, stack = build_host_stack(**PORTS)
    script = user_data_text(stack)
    return json.loads(heredoc(script, "/etc/sealed-enclave/host.json"))


def image_builder_env_of(**context: object) -> dict[str, str]:
    """The nitro-image-builder project's environment in a ThirdPartyStack synthesized with
    `context` over cdk.json's."""
    template, _, _ = third_party_template(**context)
    (project,) = [p for p in template.find_resources("AWS::CodeBuild::Project").values()
                  if "nitro-image-builder" in json.dumps(p)]
    return {v["Name"]: v["Value"] for v in project["Properties"]["Environment"]
            ["EnvironmentVariables"]}


@pytest.fixture(scope="module")
def image_builder_env():
    return image_builder_env_of(**PORTS)


def docker_build_args() -> dict[str, str]:
    """--build-arg NAME="${VARIABLE}" pairs of the image builder's docker build command."""
    spec = load_buildspec("nitro-image-builder")
    (build,) = [c for c in spec["phases"]["build"]["commands"] if c.startswith("docker build")]
    words = shlex.split(build)
    pairs = [words[i + 1] for i, word in enumerate(words) if word == "--build-arg"]
    return dict(re.fullmatch(r"(\w+)=\$\{(\w+)\}", pair).groups() for pair in pairs)


def test_both_sides_get_the_same_ports(host_settings, image_builder_env):
    build_args = {arg: image_builder_env[variable]
                  for arg, variable in docker_build_args().items() if variable != "ENCLAVE_REGION"}
    env = image_spec((PROJECT_ROOT / "containers" / "Dockerfile").read_text(), build_args).env
    listens_on, proxy_port = image_ports(env)
    assert (host_settings["enclave_port"], host_settings["vsock_proxy_port"]) == (5123, 8123)
    assert (listens_on, proxy_port) == (5123, 8123)
    assert image_builder_env["MINIMUM_APP_VERSION"] == ""  # not set: any version


def test_without_build_arguments_the_image_uses_the_defaults():
    env = image_spec((PROJECT_ROOT / "containers" / "Dockerfile").read_text(), {}).env
    assert image_ports(env) == (5005, 8000)


@pytest.mark.parametrize("value", ["0", "80", "70000", "port", "-1"])
def test_a_bad_baked_port_stops_the_runtime(value):
    from enclave.config import ConfigError

    with pytest.raises(ConfigError, match="ENCLAVE_PORT"):
        image_ports({"ENCLAVE_PORT": value})
