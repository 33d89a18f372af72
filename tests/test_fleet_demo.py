"""`make fleet-demo` as CI runs it: three simulated hosts, one lost midway, a poison job.

The demo counts from S3 and SQS; this test checks those counts and that the demo's own verdict
(`check`) would catch each way the fleet can go wrong.
"""

from __future__ import annotations

import copy

import pytest

import fleet_demo


@pytest.fixture(scope="module")
def summary(tmp_path_factory, third_party_template_path):
    return fleet_demo.demo(tmp_path_factory.mktemp("fleet"), third_party_template_path, jobs=30)


def test_every_job_has_exactly_one_verified_receipt(summary):
    assert summary["jobs"] == 30
    assert summary["receipts"] == summary["receipt_versions"] == 30
    assert summary["jobs_with_one_verified_receipt"] == 30


def test_the_lost_hosts_job_completes_on_another_host(summary):
    assert summary["lost_job"]
    assert summary["lost_job_completed_on"] in ("host1", "host3")
    assert sum(summary["per_host"].values()) == 30


def test_the_poison_job_sits_in_the_dlq_with_its_reason(summary):
    [dead] = summary["dead_letter"]
    assert dead["job_id"] == summary["poison_job"]
    assert dead["refusals"] == fleet_demo.max_receive_count()
    assert "unknown entrypoint 'train'" in dead["reason"]
    assert summary["queue"] == {"visible": 0, "in_flight": 0}


def test_surviving_agents_stop_cleanly_on_sigterm(summary):
    assert summary["graceful_stops"] == {"host1": True, "host3": True}


def test_the_demo_verdict_is_clean_and_catches_each_failure(summary):
    assert fleet_demo.check(summary) == []
    breakages = {
        "a missing receipt": {"jobs_with_one_verified_receipt": 29},
        "an overwritten receipt": {"receipt_versions": 31},
        "the lost job left undone": {"lost_job_completed_on": None},
        "the lost job 'completed' on the dead host": {"lost_job_completed_on": "host2"},
        "an empty DLQ": {"dead_letter": []},
        "a job left on the queue": {"queue": {"visible": 1, "in_flight": 0}},
        "an agent ignoring SIGTERM": {"graceful_stops": {"host1": True, "host3": False}},
    }
    for what, change in breakages.items():
        broken = copy.deepcopy(summary)
        broken.update(change)
        assert fleet_demo.check(broken), what
