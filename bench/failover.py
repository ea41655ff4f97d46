"""Failover scenarios, one runner: each prints incidents sent, lost, duplicated, stuck, actions run twice and
seconds from the fault until all are final.

    .venv/bin/python -m bench.failover                    # every scenario, ERDU's default timings
    .venv/bin/python -m bench.failover host-kill --runs 3 --json failover.json

The scenarios live in modules of their own (bench/failover_hosts.py: a host SIGKILLed, a host cut off);
SCENARIOS maps each name to the function that runs it on a fresh topology.
"""

from __future__ import annotations

import sys

from bench import failover_hosts

SCENARIOS = dict(failover_hosts.SCENARIOS)
"""Scenario name -> function(topology, incidents, ...) returning its figures."""


def main(argv: list[str] | None = None) -> int:
    """Run the named scenarios (all by default); the options are those of bench/failover_hosts.py."""
    return failover_hosts.main(argv, prog="python -m bench.failover")


if __name__ == "__main__":
    sys.exit(main())
