"""Each target's ratio as a mean over repeated benchmark runs, with its spread: the figure the
README's targets refer to (one run that lands near a target is not a met target).

    for i in 1 2 3; do python benchmarks/bench_generate.py --no-memory --variants compile --out gen$i.json; done
    python benchmarks/target_means.py gen1.json gen2.json gen3.json

A target counts as met when the mean meets it; the table also says in how many runs it did.
"""

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from table import machine_name  # noqa: E402


def target_means(results: list[dict]) -> list[dict]:
    """One row per target present in every run: mean, sample standard deviation, runs met."""
    rows = []
    for name in results[0]["targets"]:
        targets = [r["targets"].get(name) for r in results]
        if any(t is None or t.get("ratio") is None for t in targets):
            continue
        ratios = [t["ratio"] for t in targets]
        runs_met = sum(bool(t["met"]) for t in targets)
        mean = statistics.mean(ratios)
        limit = re.search(r"<= ([\d.]+)x ", name)  # "greedy_1 s <= 0.6x ..."; "peak memory <= peer": 1
        limit = float(limit.group(1)) if limit else 1.0
        rows.append({"target": name, "mean": mean, "sd": statistics.stdev(ratios), "runs": len(ratios),
                     "runs_met": runs_met, "met": mean <= limit})
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", nargs="+", help="the JSON of three or more runs of one benchmark on one machine")
    args = p.parse_args(argv)
    results = [json.loads(Path(f).read_text()) for f in args.json]
    if len(results) < 3:
        p.error(f"{len(results)} run(s): a target's figure is a mean over at least 3")
    machines = {machine_name(r).removesuffix(" (loaded)") for r in results}
    if len(machines) > 1 or len({r["benchmark"] for r in results}) > 1:
        p.error(f"the runs must be of one benchmark on one machine; got {sorted(machines)}")
    loaded = sum(bool(r["machine"].get("overloaded_at_start")) for r in results)
    print(f"{machines.pop()}, {len(results)} runs" + (f" ({loaded} started loaded)" if loaded else ""))
    print()
    print("| target | mean ratio | sd | runs met | met (mean) |")
    print("|---|---|---|---|---|")
    for row in target_means(results):
        print(f"| {row['target']} | {row['mean']:.2f} | {row['sd']:.2f} | {row['runs_met']} of {row['runs']} | "
              f"{'yes' if row['met'] else 'no'} |")


if __name__ == "__main__":
    main()
