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

from erdu_tasks.ingest.detect.fingerprint import fingerprint_uncached, clear_fingerprint_cache, fingerprint  # noqa: E402

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


def drain3_groups(lines: Sequence[str]) -> list[Hashable]:
    """Each line's final drain3 cluster, with drain3's default configuration."""
    from drain3 import TemplateMiner
    from drain3.template_miner_config import TemplateMinerConfig

    logging.getLogger("drain3").setLevel(logging.WARNING)
    # TemplateMinerConfig() holds drain3's defaults; TemplateMiner() alone would also read a
    # drain3.ini from the working directory if one happened to be there.
    miner = TemplateMiner(config=TemplateMinerConfig())
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
    out: dict = {"datasets": {}, "average": {}}
    for name, path in datasets.items():
        lines, truth = read_dataset(path)
        out["datasets"][name] = {
            "erdu": measure(erdu_groups, lines, truth),
            "drain3": measure(drain3_groups, lines, truth),
        }
        out["datasets"][name]["erdu"]["lines_per_s_uncached"] = measure(erdu_groups_uncached, lines,
                                                                        truth)["lines_per_s"]
    for system in ("erdu", "drain3"):
        rows = [d[system] for d in out["datasets"].values()]
        out["average"][system] = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    return out


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
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
