"""The README's target figures as means over training seeds, with their spread.

Trains and evaluates one config once per seed (`train.seed`; the data split stays fixed), then
prints a table: per figure the mean, sample standard deviation, min-max, the value of every
seed, its target and whether the mean meets it. One seed that lands near a target is not a met
target; this table is the figure the README quotes.

    python benchmarks/seeds.py --config configs/demo.yaml --seeds 0 1 2 --out runs/seeds_demo
    python benchmarks/seeds.py --out runs/seeds_demo --check runs/demo/final-eval/metrics.json

A seed whose `final/` checkpoint or `final-eval/metrics.json` is already there is not run again,
so an interrupted sweep continues where it stopped. `--check` says whether one more run (e.g.
CI's single-seed demo) lands inside the sweep's spread (mean +- 3 sd, at least the min-max).
Extra `section.key=value` arguments go to every train.py run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# (metrics.json key, README name, target: (">=", value) or None)
FIGURES = (
    ("ce_micro_f1", "CE micro-F1, model", None),
    ("baselines.nearest_neighbour.ce_micro_f1", "CE micro-F1, nearest-neighbour report", None),
    ("ce_micro_f1_minus_nearest_neighbour", "CE micro-F1, model minus nearest neighbour", (">", 0.0)),
    ("baselines.no_rerank.ce_micro_f1", "CE micro-F1, the same model's greedy report", None),
    ("bleu_4", "BLEU-4, model", None),
    ("baselines.no_rerank.bleu_4", "BLEU-4, the same model's greedy report", None),
    ("baselines.nearest_neighbour.bleu_4", "BLEU-4, nearest-neighbour report", None),
    ("explain_pointing_game", "cross-attention pointing game, raw", (">=", 0.6)),
    ("explain_attngrad_pointing_game", "cross-attention pointing game, gradient-weighted", None),
    ("explain_gradcam_pointing_game", "Grad-CAM pointing game", (">=", 0.7)),
    ("explain_hirescam_pointing_game", "HiResCAM pointing game", None),
    ("zs_auroc_mean", "zero-shot mean AUROC", (">=", 0.75)),
    ("i2t_r5", "retrieval R@5 image->report", None),
    ("t2i_r5", "retrieval R@5 report->image", None),
)


def derived(metrics: dict) -> dict:
    """metrics plus the figures computed from two of its keys."""
    out = dict(metrics)
    nn = metrics.get("baselines.nearest_neighbour.ce_micro_f1")
    if isinstance(metrics.get("ce_micro_f1"), float) and isinstance(nn, float):
        out["ce_micro_f1_minus_nearest_neighbour"] = metrics["ce_micro_f1"] - nn
        # intervals apart in the model's favour: the model's lower bound above the baseline's upper
        low, high = metrics.get("ci.ce_micro_f1"), metrics.get("baselines.nearest_neighbour.ci.ce_micro_f1")
        if low and high:
            out["beats_nearest_neighbour_intervals_apart"] = low[0] > high[1]
    return out


def eval_overrides(config: str) -> list[str]:
    """The config's eval section as eval.py arguments, so every seed is scored as the config says
    now (a seed trained before a change of the eval section included)."""
    section = (yaml.safe_load((ROOT / config).read_text()) or {}).get("eval") or {}
    return [f"eval.{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in section.items()]


def run_seed(config: str, seed: int, out: Path, overrides: list[str]) -> dict:
    """Train (unless `final/` exists) and evaluate (unless its metrics exist) one seed."""
    run_dir = out / f"seed{seed}"
    final, metrics_file = run_dir / "final", run_dir / "final-eval" / "metrics.json"
    if not (final / "config.json").exists():
        subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", config, f"train.seed={seed}",
                        f"train.output_dir={run_dir}", *overrides], check=True, cwd=ROOT)
    if not metrics_file.exists():
        subprocess.run([sys.executable, str(ROOT / "eval.py"), "--checkpoint", str(final), *eval_overrides(config)],
                       check=True, cwd=ROOT)
    return json.loads(metrics_file.read_text())


def summarise(per_seed: dict[int, dict]) -> list[dict]:
    """One row per figure present in every seed's metrics."""
    rows, runs = [], [derived(m) for m in per_seed.values()]  # once per seed, not per figure
    for key, name, target in FIGURES:
        values = [run.get(key) for run in runs]
        if any(not isinstance(v, (int, float)) for v in values):
            continue
        mean = statistics.mean(values)
        met = None if target is None else (mean >= target[1] if target[0] == ">=" else mean > target[1])
        rows.append({"key": key, "figure": name, "mean": mean, "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                     "min": min(values), "max": max(values), "values": dict(zip(per_seed, values)),
                     "target": None if target is None else f"{target[0]} {target[1]}", "met": met})
    return rows


def markdown(rows: list[dict], seeds: list[int], apart: list[bool]) -> str:
    lines = [f"| figure (mean of {len(seeds)} seeds) | mean | sd | min-max | "
             + " | ".join(f"seed {s}" for s in seeds) + " | target | met (mean) |",
             "|---|---|---|---|" + "---|" * len(seeds) + "---|---|"]
    for r in rows:
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['figure']} | {r['mean']:.3f} | {r['sd']:.3f} | {r['min']:.3f}-{r['max']:.3f} | "
                     + " | ".join(f"{r['values'][s]:.3f}" for s in seeds) + f" | {r['target'] or ''} | {met} |")
    if apart:
        lines.append("")
        lines.append(f"Model above nearest neighbour with the bootstrap intervals apart in {sum(apart)} of "
                     f"{len(apart)} seeds.")
    return "\n".join(lines)


def check(rows: list[dict], metrics: dict) -> list[str]:
    """A line per figure: the run's value and whether it lies inside mean +- 3 sd (at least min-max)."""
    lines, run = [], derived(metrics)
    for r in rows:
        value = run.get(r["key"])
        if not isinstance(value, (int, float)):
            continue
        low, high = min(r["min"], r["mean"] - 3 * r["sd"]), max(r["max"], r["mean"] + 3 * r["sd"])
        inside = low <= value <= high
        lines.append(f"{r['figure']}: {value:.3f} {'inside' if inside else 'OUTSIDE'} [{low:.3f}, {high:.3f}]")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "seeds_demo")
    p.add_argument("--check", type=Path, help="a metrics.json to compare with the sweep's spread")
    p.add_argument("overrides", nargs="*", help="section.key=value for every train.py run")
    args = p.parse_args(argv)
    if len(args.seeds) < 3:
        p.error(f"{len(args.seeds)} seed(s): a target's figure is a mean over at least 3")
    per_seed = {s: run_seed(args.config, s, args.out.resolve(), args.overrides) for s in args.seeds}
    rows = summarise(per_seed)
    apart = [derived(m).get("beats_nearest_neighbour_intervals_apart") for m in per_seed.values()]
    apart = [a for a in apart if a is not None]
    table = markdown(rows, args.seeds, apart)
    summary = {"config": args.config, "seeds": args.seeds, "overrides": args.overrides, "rows": rows,
               "beats_nearest_neighbour_intervals_apart": apart}
    (args.out / "seeds.json").write_text(json.dumps(summary, indent=1))
    (args.out / "seeds.md").write_text(table + "\n")
    print(table)
    if args.check:
        lines = check(rows, json.loads(args.check.read_text()))
        print(f"\n{args.check}:\n" + "\n".join(lines))
        return int(any("OUTSIDE" in line for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
