"""The federated model beside what a site could do instead, on the same test studies:
(a) centralised training on the pooled data (what pooling would give, were it allowed) with the
same total optimiser steps as all sites' local steps together, and (b) each site training alone
for as many steps as it trained in the federation. `medvlm federate --baselines` trains them
under `<train.output_dir>/baselines/`; `medvlm eval` on the federated model scores every one of
them on the pooled test split and on each site's part of it (CE micro-F1, BLEU-4, bootstrap CIs).

Every model is decoded the same way (greedy, `eval.max_new_tokens`), whatever eval.rerank_* say:
the comparison is between trainings, not decoders.
"""

import copy
import json
from pathlib import Path

from medvlm.config import RunConfig, as_overrides
from medvlm.checkpointing import COMPLETE_MARKER, model_dir_problem

from .strategies import sampled_sites

BASELINES = "baselines"
FIGURES = ("ce_micro_f1", "bleu_4")


def baseline_configs(cfg: RunConfig) -> dict[str, RunConfig]:
    """{"centralised": ..., "local <site>": ...}: the run config of each comparison."""
    from medvlm.data.hospitals import hospital_names

    f, out = cfg.federated, Path(cfg.train.output_dir) / BASELINES
    per_site = f.rounds * f.local_steps
    runs = {"centralised": _variant(cfg, None, per_site * sampled_sites(cfg, f.sites), out / "centralised")}
    for index, name in enumerate(hospital_names(f.sites)):
        runs[f"local {name}"] = _variant(cfg, index, per_site, out / f"local-{name}")
    return runs


def _variant(cfg: RunConfig, hospital: int | None, steps: int, folder: Path) -> RunConfig:
    """The federation's model and optimiser on one site's data (or the pooled data), trained as usual."""
    variant = copy.deepcopy(cfg)
    variant.data.options = {**cfg.data.options, "hospital": hospital}
    t = variant.train
    t.max_steps, t.output_dir, t.resume = steps, str(folder), None
    t.eval_every, t.save_every, t.early_stopping_patience = 0, max(steps // 2, 1), None
    return variant


def train_baselines(cfg: RunConfig) -> None:
    """Train every comparison not yet complete (a finished one is kept: nothing is trained twice)."""
    from medvlm.cli import train_main

    if cfg.data.dataset != "synthetic" or not cfg.data.options.get("hospitals"):
        print("[medvlm] --baselines: the sites' data is theirs alone; train each comparison where its data is")
        return
    for name, variant in baseline_configs(cfg).items():
        final = Path(variant.train.output_dir) / "final"
        if (final / COMPLETE_MARKER).is_file() and model_dir_problem(final) is None:
            print(f"[medvlm] baseline {name}: {final} is complete; kept")
            continue
        print(f"[medvlm] baseline {name}: {variant.train.max_steps} steps into {variant.train.output_dir}")
        train_main(as_overrides(variant.to_dict()) + ["train.resume=auto"])


def _scores(references: list[str], reports: list[str], cfg: RunConfig) -> dict:
    """The comparison's figures with their bootstrap intervals: {figure: [value, low, high]}."""
    from medvlm.metrics.bootstrap import bootstrap_intervals
    from medvlm.metrics.chexpert import label_generated_reports, label_reports
    from medvlm.tasks.report_generation import score_reports

    point = score_reports(references, reports, cfg.eval.uncertain, with_meteor=False)
    ci = bootstrap_intervals(references, reports, label_reports(references), label_generated_reports(reports),
                             n_resamples=cfg.eval.bootstrap_resamples, seed=cfg.eval.seed, uncertain=cfg.eval.uncertain)
    return {k: [point[k], *ci[k]] for k in FIGURES}


def _reports(model_dir: Path, records: list[dict], cfg: RunConfig) -> list[str]:
    from medvlm.runs import load_trained
    from medvlm.tasks.report_generation import generate_reports, generation_settings

    model, processor, _ = load_trained(model_dir)
    settings = generation_settings(cfg.eval.max_new_tokens, num_beams=1)
    return generate_reports(model.eval(), processor, records, cfg.eval.batch_size, **settings)


def compare(cfg: RunConfig, federated_final: Path, test_records: list[dict]) -> dict:
    """{model: {"pooled" | site: {figure: [value, low, high]}, "missing": why}} over the models found."""
    models = {"federated": federated_final}
    models.update({name: Path(v.train.output_dir) / "final" for name, v in baseline_configs(cfg).items()})
    references = [r["text"] for r in test_records]
    sites = sorted({r.get("site") for r in test_records if r.get("site")})
    table = {}
    for name, folder in models.items():
        if not (folder / "config.json").is_file():
            table[name] = {"missing": f"{folder} not trained (medvlm federate --baselines)"}
            continue
        print(f"[medvlm] comparison: {name} ({folder})")
        reports = _reports(folder, test_records, cfg)
        table[name] = {"pooled": _scores(references, reports, cfg)}
        for site in sites:
            keep = [i for i, r in enumerate(test_records) if r.get("site") == site]
            table[name][site] = _scores([references[i] for i in keep], [reports[i] for i in keep], cfg)
    return table


def comparison_markdown(table: dict, test_records: list[dict]) -> str:
    """One row per model, one column pair (CE micro-F1, BLEU-4) per test slice, 95% intervals."""
    sites = sorted({r.get("site") for r in test_records if r.get("site")})
    counts = {s: sum(r.get("site") == s for r in test_records) for s in sites}
    slices = ["pooled"] + sites
    header = "| model | " + " | ".join(f"{s} (n={counts.get(s, len(test_records))}) CE micro-F1 | {s} BLEU-4"
                                      for s in slices) + " |"
    lines = [header, "|" + "---|" * (1 + 2 * len(slices))]
    for name, row in table.items():
        if "missing" in row:
            lines.append(f"| {name} | " + " | ".join(["not trained"] * 2 * len(slices)) + " |")
            continue
        cells = [f"{v:.3f} [{lo:.3f}, {hi:.3f}]" for s in slices for v, lo, hi in (row[s][k] for k in FIGURES)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_comparison(cfg: RunConfig, federated_final: Path, test_records: list[dict], out: Path) -> str:
    """compare() into out/federated_comparison.{json,md}; returns the markdown."""
    table = compare(cfg, federated_final, test_records)
    text = comparison_markdown(table, test_records)
    out.mkdir(parents=True, exist_ok=True)
    (out / "federated_comparison.json").write_text(json.dumps(table, indent=1))
    (out / "federated_comparison.md").write_text(text)
    return text
