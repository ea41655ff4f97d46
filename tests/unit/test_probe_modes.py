"""Probe incidents are fingerprinted by failure mode beside the probe's name: a fix proven for "refused"
is not applied to "500"."""

from __future__ import annotations

import pytest

from erdu_tasks.fixer.checks import CheckResult
from erdu_tasks.ingest.accept import dedup_fingerprint
from erdu_tasks.monitors import http_probe
from erdu_tasks.settings.monitors import Probe

PROBE = Probe(name="orders-health", url="http://127.0.0.1:9/health", service="orders")

MODE_CASES = [
    # (output of the http check, mode)
    ({"failure": "refused"}, "refused"),
    ({"failure": "unreachable"}, "unreachable"),
    ({"failure": "timeout"}, "timeout"),
    ({"failure": "status", "status": 500}, "5xx"),
    ({"failure": "status", "status": 503}, "5xx"),
    ({"failure": "status", "status": 404}, "4xx"),
    ({"failure": "slow", "status": 200, "latency": 3.2}, "slow"),
    ({"failure": "body", "status": 200}, "body"),
    ({}, "error"),                       # a failure the check did not name
]


@pytest.mark.parametrize("output, mode", MODE_CASES, ids=[m for _, m in MODE_CASES])
def test_the_failure_mode_of_a_probe(output, mode):
    assert http_probe.failure_mode(CheckResult(False, "failed", 0.1, output)) == mode


def test_each_failure_mode_is_its_own_incident_of_the_probe():
    refused = http_probe.observation(PROBE, CheckResult(False, "ConnectError", 0.1, {"failure": "refused"}), "h")
    five = http_probe.observation(PROBE, CheckResult(False, "returned 500", 0.1, {"failure": "status",
                                                                                "status": 500}), "h")
    five_again = http_probe.observation(PROBE, CheckResult(False, "returned 502", 0.1, {"failure": "status",
                                                                                      "status": 502}), "h")
    assert refused.key == five.key == "probe:orders-health"             # one condition per probe
    assert refused.event.dedup_key == "probe:orders-health:refused"
    assert five.event.dedup_key == five_again.event.dedup_key == "probe:orders-health:5xx"
    assert dedup_fingerprint(refused.event.dedup_key) != dedup_fingerprint(five.event.dedup_key)
    assert "(5xx)" in five.event.message and five.event.labels["failure_mode"] == "5xx"
    assert five.top_details["check"]["url"] == PROBE.url                 # still re-runnable as validation
