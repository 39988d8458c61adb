"""The README's performance table from the JSON that bench_train.py and bench_generate.py print.

    python benchmarks/bench_train.py --variants bf16 ckpt --out train.json
    python benchmarks/bench_generate.py --variants bf16_weights compile --out generate.json
    python benchmarks/table.py train.json generate.json
"""

import argparse
import json
from pathlib import Path

FIGURES = ("greedy_1", "greedy_8", "beam3_1", "beam3_8")


def seconds(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def mib(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def table(train: dict, generate: dict) -> str:
    names = list(dict.fromkeys([*train["models"], *generate["models"]]))
    head = ("| model | params | train step s | samples/s | of fp32 matmul rate | train peak MiB | "
            + " | ".join(f"{f} s" for f in FIGURES) + " | greedy_8 peak MiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name in names:
        t = train["models"].get(name, {})
        g = generate["models"].get(name, {}).get("figures", {})
        params = t.get("params") or generate["models"].get(name, {}).get("params")
        cells = [
            name, f"{params / 1e6:.1f} M" if params else "-",
            seconds(t.get("step_s")) if t else "-",
            f"{t['samples_per_s']:.2f}" if t else "-",
            f"{t['fraction_of_matmul_rate']:.0%}" if t else "-",
            mib(t.get("peak_mib")) if t else "-",
            *[seconds(g[f]["s"]) if f in g else "-" for f in FIGURES],
            mib(g.get("greedy_8", {}).get("peak_mib")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(train: dict, generate: dict) -> str:
    lines = ["| target | figure | met |", "|---|---|---|"]
    for result in (train, generate):
        for name, target in result["targets"].items():
            value = target.get("ratio", target.get("speedup"))
            kind = "ratio" if "ratio" in target else "speedup"
            lines.append(f"| {name} | {kind} {value:.2f} | {'yes' if target['met'] else 'no'} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("train_json")
    p.add_argument("generate_json")
    args = p.parse_args(argv)
    train, generate = (json.loads(Path(f).read_text()) for f in (args.train_json, args.generate_json))
    print(table(train, generate))
    print()
    print(targets(train, generate))


if __name__ == "__main__":
    main()
