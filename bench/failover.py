"""Failover figures: for each scenario, incidents sent, lost, duplicated, stuck, actions run twice, and seconds
from the fault until all are final (medians over --runs, with the spread).

The scenarios live beside this runner, each module contributing its SCENARIOS (name -> run(events) -> figures):
bench/failover_infra.py (beat kill, Sentinel failover, Postgres promotion) and bench/failover_hosts.py when
present (host kill, partition).

    .venv/bin/python -m bench.failover                         # every scenario, 3 runs each
    .venv/bin/python -m bench.failover -s sentinel-failover --runs 5 --events 200 --json figures.json
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable

from bench._harness import write_json

SCENARIO_MODULES = ("bench.failover_infra", "bench.failover_hosts")


def scenarios() -> dict[str, Callable[[int], dict]]:
    """Every scenario of the modules that are there, by name."""
    found: dict[str, Callable[[int], dict]] = {}
    for name in SCENARIO_MODULES:
        if importlib.util.find_spec(name) is not None:
            module = importlib.import_module(name)
            # RUNNERS: scenarios whose own SCENARIOS need a topology handed in, wrapped to run(events).
            found.update(getattr(module, "RUNNERS", None) or module.SCENARIOS)
    return found


def summarise(runs: list[dict]) -> dict:
    """Per figure: the median and the range over the runs (counts summed as well)."""
    summary: dict = {}
    for key in runs[0]:
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        if not values:
            continue
        summary[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        if key in ("sent", "lost", "duplicated", "stuck", "actions_twice"):
            summary[key]["total"] = sum(values)
    return summary


def render(name: str, summary: dict) -> str:
    parts = []
    for key, v in summary.items():
        if "total" in v:
            parts.append(f"{key} {v['total']}")
        else:
            parts.append(f"{key} {v['median']:g} s ({v['min']:g}-{v['max']:g})" if key.endswith("seconds")
                         else f"{key} {v['median']:g}")
    return f"{name:20} " + ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    known = scenarios()
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-s", "--scenario", action="append", choices=sorted(known),
                        help="run only this scenario (repeatable; default: all)")
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (default 3)")
    parser.add_argument("--events", type=int, default=120, help="events per burst (default 120)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures (every run and the medians) here")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.events < 3:
        parser.error("--runs must be at least 1 and --events at least 3")
    figures: dict = {}
    failed = False
    for name in args.scenario or list(known):
        runs = []
        for i in range(args.runs):
            started = time.monotonic()
            try:
                runs.append(known[name](args.events))
            except Exception as exc:   # a scenario that breaks is reported, the others still run
                print(f"{name} run {i + 1}: FAILED: {exc}", file=sys.stderr, flush=True)
                failed = True
                continue
            print(f"{name} run {i + 1} ({time.monotonic() - started:.0f} s): {runs[-1]}", flush=True)
        if runs:
            figures[name] = {"runs": runs, "summary": summarise(runs)}
    print()
    for name, data in figures.items():
        print(render(name, data["summary"]))
    write_json(args.json, {"events": args.events, "scenarios": figures})
    return 1 if failed or any(data["summary"].get("lost", {}).get("total") or
                              data["summary"].get("duplicated", {}).get("total") for data in figures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
