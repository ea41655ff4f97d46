"""ERDU on three hosts: network namespaces joined by veth pairs (bench/failover_hosts.py builds them), an
infrastructure host with its own Redis and Postgres, two worker hosts each running `erdu worker all
--hostname ...` and `erdu beat`. A host's link is cut mid-burst and healed; a host is SIGKILLed
mid-burst. Each counts lost, duplicated and stuck incidents and actions run twice, from Postgres and
from the actions' own effect file. Shortened timings (a 3 s stage deadline) keep the suite quick; the
bench measures the defaults. The namespaces are removed however a test ends (the fixture's exit)."""

from __future__ import annotations

import subprocess

import pytest

from bench.failover_hosts import FAST, Hosts, host_kill, missing_prerequisites, partition
from erdu_tasks.celery_ext.liveness import age_seconds, alive_file

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("hosts"),
              pytest.mark.skipif(missing_prerequisites() is not None,
                                 reason=f"multi-host tests: {missing_prerequisites()}")]


@pytest.fixture(scope="module")
def hosts():
    # One beat, on host-2, which is never the victim (the bench kills the beat's host too).
    with Hosts(2, env=FAST, beats=(1,)) as topology:
        yield topology
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert topology.tag not in listed, "the test's namespaces must be gone"


def test_a_host_cut_off_mid_burst_and_healed_loses_duplicates_and_repeats_nothing(hosts):
    figs = partition(hosts, 10, cut_for=2.5, victim=0, timeout=60)
    print(figs.show())
    assert (figs.lost, figs.duplicated, figs.stuck, figs.actions_twice) == (0, 0, 0, 0), figs
    assert figs.closed == figs.sent == 10
    assert figs.seconds_to_final is not None and figs.seconds_to_final <= 60


def test_a_host_killed_mid_burst_leaves_every_incident_final_within_a_minute_and_none_twice(hosts):
    survivor = hosts.hosts[1]
    figs = host_kill(hosts, 10, victim=0, timeout=60)
    print(figs.show())
    assert (figs.lost, figs.duplicated, figs.stuck, figs.actions_twice) == (0, 0, 0, 0), figs
    assert figs.closed == figs.sent == 10
    assert figs.seconds_to_final is not None and figs.seconds_to_final <= 60
    # The survivor's worker and beat kept their liveness files fresh through it all (the Kubernetes probe).
    state = hosts.tmp / survivor.name / "var"
    assert all(age_seconds(alive_file(state, kind)) < 30 for kind in ("worker", "beat"))
