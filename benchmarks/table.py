"""The README's performance table from the JSON that bench_train.py and bench_generate.py print.

    python benchmarks/bench_train.py --variants bf16 ckpt --out train.json
    python benchmarks/bench_generate.py --variants bf16_weights compile --out generate.json
    python benchmarks/table.py train.json generate.json [train2.json generate2.json ...]

Each pair of files is one machine; every row names its machine, and figures taken while other
processes loaded the machine (`overloaded_at_start`) are flagged.
"""

import argparse
import json
import re
from pathlib import Path

FIGURES = ("greedy_1", "greedy_8", "beam3_1", "beam3_8")


def seconds(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def mib(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def machine_name(result: dict) -> str:
    """e.g. "AMD EPYC, mkl 2024.2, 2 threads"; "(loaded)" when the start load exceeded the threads."""
    m = result["machine"]
    version = (m.get("blas") or {}).get("version") or ""
    release = re.search(r"Version ([\d.]+)", version)
    blas = " ".join(filter(None, [(m.get("blas") or {}).get("name"), release.group(1) if release else None]))
    cpu = (m.get("cpu") or "unrecorded CPU").split(" / ")[0]
    name = ", ".join(filter(None, [cpu, blas or None, f"{m['threads']} threads"]))
    return name + (" (loaded)" if m.get("overloaded_at_start") else "")


def same_machine(train: dict, generate: dict) -> str:
    a, b = machine_name(train), machine_name(generate)
    return a if a == b else f"train: {a}; generate: {b}"


def table(pairs: list[tuple[dict, dict]]) -> str:
    head = ("| machine | model | params | train step s | samples/s | of fp32 matmul rate | train peak MiB | "
            + " | ".join(f"{f} s" for f in FIGURES) + " | greedy_8 peak MiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for train, generate in pairs:
        lines += rows(train, generate)
    return "\n".join(lines)


def rows(train: dict, generate: dict) -> list[str]:
    where = same_machine(train, generate)
    lines = []
    for name in dict.fromkeys([*train["models"], *generate["models"]]):
        t = train["models"].get(name, {})
        g = generate["models"].get(name, {}).get("figures", {})
        params = t.get("params") or generate["models"].get(name, {}).get("params")
        cells = [
            where, name, f"{params / 1e6:.1f} M" if params else "-",
            seconds(t.get("step_s")) if t else "-",
            f"{t['samples_per_s']:.2f}" if t else "-",
            f"{t['fraction_of_matmul_rate']:.0%}" if t else "-",
            mib(t.get("peak_mib")) if t else "-",
            *[seconds(g[f]["s"]) if f in g else "-" for f in FIGURES],
            mib(g.get("greedy_8", {}).get("peak_mib")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def targets(pairs: list[tuple[dict, dict]]) -> str:
    lines = ["| machine | target | figure | met |", "|---|---|---|---|"]
    for pair in pairs:
        for result in pair:
            for name, target in result["targets"].items():
                value = target.get("ratio", target.get("speedup"))
                kind = "ratio" if "ratio" in target else "speedup"
                met = "n/a" if target["met"] is None else ("yes" if target["met"] else "no")
                shown = "n/a" if value is None else f"{value:.2f}"
                lines.append(f"| {machine_name(result)} | {name} | {kind} {shown} | {met} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", nargs="+", help="train.json generate.json, one pair per machine")
    args = p.parse_args(argv)
    if len(args.json) % 2:
        p.error("give the JSON files in pairs: the train benchmark's, then the generate benchmark's")
    results = [json.loads(Path(f).read_text()) for f in args.json]
    pairs = list(zip(results[::2], results[1::2]))
    for train, generate in pairs:
        if train.get("benchmark") != "train_step" or generate.get("benchmark") != "generate":
            p.error("each pair is bench_train.py's JSON, then bench_generate.py's")
    print(table(pairs))
    print()
    print(targets(pairs))


if __name__ == "__main__":
    main()
