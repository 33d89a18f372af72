"""The runtime maps the KMS host name to its bridge, since linuxkit leaves /etc/hosts bare."""

from __future__ import annotations

import pytest

from enclave.__main__ import resolve_kms_to_bridge
from enclave.emulation import LINUXKIT_HOSTS
from enclave.resolution import endpoint_hostname, hosts_with_names, map_names_to_bridge

KMS = "kms.eu-west-3.amazonaws.com"


def test_linuxkit_hosts_gains_the_kms_name_on_loopback():
    hosts = hosts_with_names(LINUXKIT_HOSTS, [KMS])
    assert hosts.startswith(LINUXKIT_HOSTS)
    assert f"127.0.0.1\t{KMS}\n" in hosts


def test_a_name_already_mapped_is_not_added_twice():
    once = hosts_with_names(LINUXKIT_HOSTS, [KMS])
    assert hosts_with_names(once, [KMS.upper()]) == once


def test_a_name_mapped_elsewhere_is_mapped_to_the_bridge_too():
    hosts = hosts_with_names(f"10.0.0.1 {KMS}\n", [KMS])
    assert f"127.0.0.1\t{KMS}" in hosts


def test_empty_or_unterminated_files_stay_well_formed():
    assert hosts_with_names("", [KMS]) == f"127.0.0.1\t{KMS}\n"
    assert hosts_with_names("127.0.0.1 localhost", [KMS]).splitlines()[1] == f"127.0.0.1\t{KMS}"


def test_endpoint_hostname_fills_the_region():
    assert endpoint_hostname("https://kms.{region}.amazonaws.com", "eu-west-3") == KMS
    with pytest.raises(ValueError):
        endpoint_hostname("kms", "eu-west-3")


def test_the_file_is_rewritten_in_place(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text(LINUXKIT_HOSTS)
    inode = hosts.stat().st_ino
    assert map_names_to_bridge([KMS], hosts) is True
    assert map_names_to_bridge([KMS], hosts) is False
    assert hosts.stat().st_ino == inode  # a bind-mounted file cannot be renamed over
    assert KMS in hosts.read_text()


def test_runtime_maps_the_image_policys_region(tmp_path):
    """One source for where KMS is: the image policy's region (enclave/policy.py)."""
    from enclave.__main__ import build_parser, config_from_args, production_argv
    from enclave.policy import ImagePolicy, write_policy

    policy = tmp_path / "policy.json"
    write_policy(policy, ImagePolicy(
        region="eu-west-3", app_ids=("app",),
        kms_key_arns=("arn:aws:kms:eu-west-3:111111111111:key/k",)))
    argv = production_argv()[3:]
    argv[argv.index("--policy") + 1] = str(policy)
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    hosts = tmp_path / "hosts"
    hosts.write_text(LINUXKIT_HOSTS)
    resolve_kms_to_bridge(args.kms_endpoint, config.image_policy.region, hosts)
    assert f"127.0.0.1\t{KMS}" in hosts.read_text()


def test_an_image_whose_region_disagrees_with_its_policy_does_not_start():
    from enclave.__main__ import IMAGE_REGION_ENV, check_image_region
    from enclave.config import ConfigError

    check_image_region("eu-west-3", {IMAGE_REGION_ENV: "eu-west-3"})
    check_image_region("eu-west-3", {})
    with pytest.raises(ConfigError, match="rebuild the image with one region"):
        check_image_region("eu-west-3", {IMAGE_REGION_ENV: "us-east-1"})
