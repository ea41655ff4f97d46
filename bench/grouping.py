"""Grouping accuracy of ERDU's fingerprints against hand-labelled log templates, next to drain3.

Usage: python bench/grouping.py [--data DIR] [--json PATH]

DIR holds one folder per dataset, DIR/<Name>/<Name>_2k.log_structured[_corrected].csv (the
Loghub layout; the `_corrected` labels are preferred when present). For each dataset the
`Content` lines are fed in order through ERDU's fingerprint, exactly as the ingest path does
(a line's key is the one it gets when it arrives), and through drain3 with its default
settings, grouped by each line's final cluster. Reported per dataset and on average:

- ga: Grouping Accuracy, the share of lines whose predicted group is exactly the set of
  lines sharing their labelled EventId;
- merged: the share of lines whose predicted group mixes two or more labelled EventIds;
- split: the share of lines whose labelled EventId is spread over two or more groups;
- lines_per_s: lines grouped per second, best of three runs (one core, this process); ERDU's
  starts each run with its cache of recent messages empty, so a line repeated within the
  dataset is answered from memory as in a live process; "uncached" computes every line.

A line is correct exactly when it is neither merged nor split, so ga = 1 - |merged ∪ split|.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from erdu_tasks.ingest.detect.fingerprint import (  # noqa: E402
    clear_fingerprint_cache,
    engine,
    engine_disagreements,
    fingerprint,
    fingerprint_uncached,
)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "loghub"

Grouper = Callable[[Sequence[str]], list[Hashable]]


def find_datasets(data: Path) -> dict[str, Path]:
    """Dataset name -> its structured CSV, preferring the corrected labels."""
    found: dict[str, Path] = {}
    for folder in sorted(p for p in data.iterdir() if p.is_dir()):
        candidates = sorted(folder.glob(f"{folder.name}_2k.log_structured*.csv"))
        if candidates:
            corrected = [c for c in candidates if "corrected" in c.name]
            found[folder.name] = (corrected or candidates)[0]
    return found


def read_dataset(path: Path) -> tuple[list[str], list[str]]:
    """The Content lines and their labelled EventIds, in file order."""
    lines: list[str] = []
    labels: list[str] = []
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as fh:
        reader = csv.DictReader(fh)
        missing = {"Content", "EventId"} - set(reader.fieldnames or ())
        if missing:
            raise SystemExit(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for row in reader:
            lines.append(row["Content"] or "")
            labels.append(row["EventId"])
    return lines, labels


def score(predicted: Sequence[Hashable], truth: Sequence[str]) -> dict[str, float]:
    """Grouping accuracy and the shares of merged and split lines."""
    n = len(truth)
    if n == 0:
        return {"ga": 0.0, "merged": 0.0, "split": 0.0}
    labels_in_group: dict[Hashable, set[str]] = defaultdict(set)
    groups_of_label: dict[str, set[Hashable]] = defaultdict(set)
    for p, t in zip(predicted, truth):
        labels_in_group[p].add(t)
        groups_of_label[t].add(p)
    merged = split = wrong = 0
    for p, t in zip(predicted, truth):
        is_merged = len(labels_in_group[p]) > 1
        is_split = len(groups_of_label[t]) > 1
        merged += is_merged
        split += is_split
        wrong += is_merged or is_split
    return {"ga": 1 - wrong / n, "merged": merged / n, "split": split / n}


def erdu_groups(lines: Sequence[str]) -> list[Hashable]:
    """Each line's ERDU fingerprint at arrival, from a cold cache (as a process meeting these lines first)."""
    clear_fingerprint_cache()
    return [fingerprint(line).key for line in lines]


def erdu_groups_uncached(lines: Sequence[str]) -> list[Hashable]:
    """The same keys with every line computed (no repeat answered from memory): the per-line cost."""
    return [fingerprint_uncached(line, None).key for line in lines]


def drain3_groups(lines: Sequence[str], sim_th: float | None = None, depth: int | None = None) -> list[Hashable]:
    """Each line's final drain3 cluster, with drain3's default configuration (or the given settings)."""
    from drain3 import TemplateMiner
    from drain3.template_miner_config import TemplateMinerConfig

    logging.getLogger("drain3").setLevel(logging.WARNING)
    # TemplateMinerConfig() holds drain3's defaults; TemplateMiner() alone would also read a
    # drain3.ini from the working directory if one happened to be there.
    config = TemplateMinerConfig()
    if sim_th is not None:
        config.drain_sim_th = sim_th
    if depth is not None:
        config.drain_depth = depth
    miner = TemplateMiner(config=config)
    first = [miner.add_log_message(line)["cluster_id"] for line in lines]
    # Cluster ids are stable in drain3: a cluster generalises but keeps its id, so the id a
    # line got is its final cluster.
    return first


def measure(grouper: Grouper, lines: Sequence[str], truth: Sequence[str], runs: int = 3) -> dict[str, float]:
    """Score one grouper on one dataset; its speed is the best of a few runs (imports and caches warm)."""
    best = float("inf")
    predicted: list[Hashable] = []
    for _ in range(runs):
        start = time.perf_counter()
        predicted = grouper(lines)
        best = min(best, time.perf_counter() - start)
    result = score(predicted, truth)
    result["lines_per_s"] = len(lines) / best if best > 0 else float("inf")
    return result


def run(data: Path) -> dict:
    """Measure every dataset under data; the JSON-shaped result."""
    datasets = find_datasets(data)
    if not datasets:
        raise SystemExit(f"{data}: no <Name>/<Name>_2k.log_structured*.csv datasets found")
    out: dict = {"datasets": {}, "average": {}, "engine": engine(), "lines": 0, "engine_disagreements": 0}
    for name, path in datasets.items():
        lines, truth = read_dataset(path)
        out["lines"] += len(lines)
        out["engine_disagreements"] += len(engine_disagreements(lines))
        out["datasets"][name] = {
            "erdu": measure(erdu_groups, lines, truth),
            "drain3": measure(drain3_groups, lines, truth),
        }
        out["datasets"][name]["erdu"]["lines_per_s_uncached"] = measure(erdu_groups_uncached, lines,
                                                                        truth)["lines_per_s"]
    for system in ("erdu", "drain3"):
        rows = [d[system] for d in out["datasets"].values()]
        out["average"][system] = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    out["uncached_to_drain3"] = out["average"]["erdu"]["lines_per_s_uncached"] / out["average"]["drain3"]["lines_per_s"]
    return out


DRAIN_GRID = [(sim, depth) for sim in (0.3, 0.4, 0.5, 0.6, 0.7) for depth in (3, 4, 5, 6)]


def leave_one_out(data: Path, result: dict) -> dict:
    """Settings chosen on seven datasets, measured on the eighth, for each dataset in turn.

    drain3's settings (similarity threshold, tree depth) are chosen from DRAIN_GRID by mean
    accuracy on the other datasets. ERDU has no grouping settings: its one configuration is
    the held-out configuration on every fold, so its held-out figure equals its in-sample one
    here. (Its masking rules were written while reading these files, which no fold can undo:
    datasets never read are the test of that.)
    """
    datasets = find_datasets(data)
    ga: dict[str, dict[tuple[float, int], float]] = {}
    for name, path in datasets.items():
        lines, truth = read_dataset(path)
        ga[name] = {cfg: score(drain3_groups(lines, *cfg), truth)["ga"] for cfg in DRAIN_GRID}
    folds = {}
    for held in datasets:
        others = [n for n in datasets if n != held]
        chosen = max(DRAIN_GRID, key=lambda cfg: (sum(ga[n][cfg] for n in others), -cfg[0], cfg[1]))
        folds[held] = {"erdu": result["datasets"][held]["erdu"]["ga"], "drain3": ga[held][chosen],
                       "drain3_settings": {"sim_th": chosen[0], "depth": chosen[1]},
                       "drain3_defaults": result["datasets"][held]["drain3"]["ga"]}
    mean = {k: sum(f[k] for f in folds.values()) / len(folds) for k in ("erdu", "drain3", "drain3_defaults")}
    return {"folds": folds, "mean": mean}


def render_loo(loo: dict, result: dict) -> str:
    """The leave-one-out table as text."""
    head = (f"{'held out':<12} | {'ERDU ga':>7} {'lines/s':>8} | {'drain3 ga':>9} {'sim_th':>6} {'depth':>5} | "
            f"{'defaults':>8} {'lines/s':>8}")
    rows = ["leave-one-out: settings chosen on the other seven, accuracy on the held-out dataset", head,
            "-" * len(head)]
    for name, f in loo["folds"].items():
        d = result["datasets"][name]
        rows.append(f"{name:<12} | {f['erdu']:>7.3f} {d['erdu']['lines_per_s']:>8.0f} | {f['drain3']:>9.3f} "
                    f"{f['drain3_settings']['sim_th']:>6.1f} {f['drain3_settings']['depth']:>5} | "
                    f"{f['drain3_defaults']:>8.3f} {d['drain3']['lines_per_s']:>8.0f}")
    rows.append("-" * len(head))
    m, a = loo["mean"], result["average"]
    rows.append(f"{'mean':<12} | {m['erdu']:>7.3f} {a['erdu']['lines_per_s']:>8.0f} | {m['drain3']:>9.3f} "
                f"{'':>6} {'':>5} | {m['drain3_defaults']:>8.3f} {a['drain3']['lines_per_s']:>8.0f}")
    return "\n".join(rows)


def render(result: dict) -> str:
    """The per-dataset table and the averages as text."""
    head = f"{'dataset':<12} | {'ERDU ga':>7} {'merged':>6} {'split':>6} {'lines/s':>8} {'uncached':>8} | " \
           f"{'drain3 ga':>9} {'merged':>6} {'split':>6} {'lines/s':>8}"
    rows = [head, "-" * len(head)]

    def fmt(name: str, d: dict) -> str:
        e, r = d["erdu"], d["drain3"]
        return (f"{name:<12} | {e['ga']:>7.3f} {e['merged']:>6.3f} {e['split']:>6.3f} {e['lines_per_s']:>8.0f} "
                f"{e['lines_per_s_uncached']:>8.0f} | "
                f"{r['ga']:>9.3f} {r['merged']:>6.3f} {r['split']:>6.3f} {r['lines_per_s']:>8.0f}")

    rows += [fmt(name, d) for name, d in result["datasets"].items()]
    rows.append("-" * len(head))
    rows.append(fmt("average", result["average"]))
    ratio = result["uncached_to_drain3"]
    rows.append(f"uncached_to_drain3 {ratio:.2f} (target >= 1: {'met' if ratio >= 1 else 'not met'}); "
                f"engine {result['engine']}; engine_disagreements {result['engine_disagreements']} "
                f"of {result['lines']} lines (PCRE2's masking against sre's; must be 0)")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder of <Name>/<Name>_2k.log_structured*.csv")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        parser.error(f"--data {args.data}: not a folder")
    result = run(args.data)
    print(render(result))
    result["leave_one_out"] = leave_one_out(args.data, result)
    print()
    print(render_loo(result["leave_one_out"], result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
