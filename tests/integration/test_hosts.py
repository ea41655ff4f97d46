"""ERDU on three hosts: network namespaces joined by veth pairs (bench/failover_hosts.py builds them), an
infrastructure host with its own Redis and Postgres, two worker hosts each running `erdu worker all
--hostname ...` and `erdu beat`. A host's link is cut mid-burst and healed; a host is SIGKILLed
mid-burst. Each counts lost, duplicated and stuck incidents and actions run twice, from Postgres and
from the actions' own effect file. Shortened timings (a 3 s stage deadline) keep the suite quick; the
bench measures the defaults. The namespaces are removed however a test ends (the fixture's exit)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.failover_hosts import FAST, Hosts, host_kill, missing_prerequisites, partition

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("hosts"),
              pytest.mark.skipif(missing_prerequisites() is not None,
                                 reason=f"multi-host tests: {missing_prerequisites()}")]


@pytest.fixture(scope="module")
def hosts():
    with Hosts(2, env=FAST) as topology:
        yield topology
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert topology.tag not in listed, "the test's namespaces must be gone"


def test_a_host_cut_off_mid_burst_and_healed_loses_duplicates_and_repeats_nothing(hosts):
    figs = partition(hosts, 16, cut_for=5, timeout=60)
    print(figs.show())
    assert (figs.lost, figs.duplicated, figs.stuck, figs.actions_twice) == (0, 0, 0, 0), figs
    assert figs.closed == figs.sent == 16
    assert figs.seconds_to_final is not None and figs.seconds_to_final <= 60


def test_a_host_killed_mid_burst_leaves_every_incident_final_within_a_minute_and_none_twice(hosts):
    survivor = hosts.hosts[1]
    figs = host_kill(hosts, 16, timeout=60)
    print(figs.show())
    assert (figs.lost, figs.duplicated, figs.stuck, figs.actions_twice) == (0, 0, 0, 0), figs
    assert figs.closed == figs.sent == 16
    assert figs.seconds_to_final is not None and figs.seconds_to_final <= 60
    # The survivor's worker and beat kept their liveness files fresh through it all (the Kubernetes probe).
    for kind in ("worker", "beat"):
        alive = subprocess.run([sys.executable, "-m", "erdu_tasks.cli", "alive", kind, "--max-age", "30"],
                               env=hosts.env_for(survivor), cwd=hosts.tmp / survivor.name,
                               capture_output=True, text=True, timeout=60)
        assert alive.returncode == 0, alive.stdout + alive.stderr
