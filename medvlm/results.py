"""Write evaluation results: metrics.json, results.md and PNG charts.

The input is one flat dict, as the evaluation tasks (`medvlm.tasks`) build it:
- model metrics under their own names (``bleu_4``, ``cider``, ``ce_micro_f1``,
  ``ce_f1.Cardiomegaly``, ...);
- confidence intervals as ``ci.<metric> = [low, high]`` (plus ``ci.seed``, ``ci.n_resamples``);
- baselines as ``baselines.<name>.<metric>`` (and their intervals as ``baselines.<name>.ci.<metric>``);
- anything else (``num_samples``, ...) is kept in the JSON and listed under the tables.

Every file is written to a temporary name in the output directory and renamed into place, so a
reader never sees half a file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic_files import atomic_write_text, atomic_write_with

HEADLINE = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider",
            "ce_precision", "ce_recall", "ce_micro_f1", "ce_macro_precision", "ce_macro_recall", "ce_macro_f1",
            "change_accuracy")
LABELS = {"bleu_1": "BLEU-1", "bleu_2": "BLEU-2", "bleu_3": "BLEU-3", "bleu_4": "BLEU-4", "meteor": "METEOR",
          "rouge_l": "ROUGE-L", "cider": "CIDEr-D", "ce_precision": "CE precision (micro)",
          "ce_recall": "CE recall (micro)", "ce_micro_f1": "CE F1 (micro)",
          "ce_macro_precision": "CE precision (macro)",
          "ce_macro_recall": "CE recall (macro)", "ce_macro_f1": "CE F1 (macro)",
          "change_accuracy": "change accuracy (vs the prior)"}
VERDICT_METRICS = ("bleu_4", "ce_micro_f1")  # report models; other tasks: their own headline metrics
STUDY_VERDICT_METRICS = ("change_accuracy",)  # also compared where the references state changes
TASK_VERDICT_METRICS = ("vqa_overall_acc", "vqa_closed_acc", "vqa_open_acc", "auroc_mean")


# ------------------------------------------------------------------ splitting the flat dict

def _number(value) -> float | None:
    """A finite float, or None for None/NaN/non-numbers."""
    if isinstance(value, (bool, np.bool_)) or value is None:
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return None


def split_metrics(metrics: dict) -> tuple[dict, dict, dict, dict]:
    """(model metrics, intervals, {baseline: metrics}, other entries)."""
    model, intervals, baselines, other = {}, {}, {}, {}
    for key, value in metrics.items():
        if key.startswith("ci."):
            intervals[key[3:]] = value
        elif key.startswith("baselines."):
            name, _, metric = key[len("baselines."):].partition(".")
            baselines.setdefault(name, {})[metric] = value
        elif value is None or isinstance(value, (float, np.floating)):
            model[key] = value
        else:
            other[key] = value
    return model, intervals, baselines, other


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    return value


# ------------------------------------------------------------------ markdown

def _fmt(value) -> str:
    number = _number(value)
    return "n/a" if number is None else f"{number:.4f}"


def _fmt_ci(value, interval) -> str:
    text = _fmt(value)
    if isinstance(interval, (list, tuple)) and len(interval) == 2 and all(_number(v) is not None for v in interval):
        text += f" [{interval[0]:.4f}, {interval[1]:.4f}]"
    return text


def verdicts(model: dict, intervals: dict, baselines: dict) -> list[str]:
    """One line per baseline: does the model beat it on BLEU-4 and CE micro-F1 (report models), or
    on the task's own accuracy / AUROC (VQA, classification)?"""
    lines = []
    compared = ([m for m in VERDICT_METRICS if m in model] or [m for m in TASK_VERDICT_METRICS if m in model]
                or VERDICT_METRICS)  # none present: say so per report metric
    compared += [m for m in STUDY_VERDICT_METRICS if _number(model.get(m)) is not None]
    for name, base in baselines.items():
        parts = []
        for metric in compared:
            ours, theirs = _number(model.get(metric)), _number(base.get(metric))
            label = LABELS.get(metric, metric)
            if ours is None or theirs is None:
                parts.append(f"not compared on {label} (missing)")
                continue
            if ours > theirs:
                interval = intervals.get(metric)
                clear = (isinstance(interval, (list, tuple)) and _number(interval[0]) is not None
                         and interval[0] > theirs)
                parts.append(f"beats it on {label} ({ours:.4f} vs {theirs:.4f}"
                             f"{', CI above it' if clear else ', within the CI'})")
            else:
                parts.append(f"does not beat it on {label} ({ours:.4f} vs {theirs:.4f})")
        lines.append(f"- **{name}**: the model " + "; ".join(parts) + ".")
    return lines


def results_markdown(metrics: dict, title: str = "medvlm results") -> str:
    model, intervals, baselines, other = split_metrics(metrics)
    names = list(baselines)
    headline = [m for m in HEADLINE if m in model or any(m in b for b in baselines.values())]
    extra = sorted(k for k in model if k not in HEADLINE and "." not in k)
    lines = [f"# {title}", ""]
    n_resamples = intervals.get("n_resamples")
    if n_resamples:
        lines.append(f"Model column: value [{100 * (1 - float(intervals.get('alpha', 0.05))):.0f}% bootstrap CI, "
                     f"{n_resamples} resamples, seed {intervals.get('seed')}]. n/a: not computed.")
        lines.append("")
    header = "| metric | model | " + " | ".join(names) + " |" if names else "| metric | model |"
    lines += [header, "|" + " --- |" * (2 + len(names))]
    for metric in headline + extra:
        row = [LABELS.get(metric, metric), _fmt_ci(model.get(metric), intervals.get(metric))]
        row += [_fmt_ci(baselines[n].get(metric), baselines[n].get(f"ci.{metric}")) for n in names]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    if names:
        lines += ["## Baselines", ""] + verdicts(model, intervals, baselines) + [""]

    observations = [k.split(".", 1)[1] for k in model if k.startswith("ce_f1.")]
    if observations:
        lines += ["## Clinical efficacy per observation", "",
                  "| observation | F1 | precision | recall | " + " | ".join(f"{n} F1" for n in names) + " |"
                  if names else "| observation | F1 | precision | recall |",
                  "|" + " --- |" * (4 + len(names))]
        for obs in observations:
            row = [obs, _fmt_ci(model.get(f"ce_f1.{obs}"), intervals.get(f"ce_f1.{obs}")),
                   _fmt(model.get(f"ce_precision.{obs}")), _fmt(model.get(f"ce_recall.{obs}"))]
            row += [_fmt(baselines[n].get(f"ce_f1.{obs}")) for n in names]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    if other:
        lines += ["## Run", ""] + [f"- {k}: {json.dumps(_jsonable(v))}" for k, v in sorted(other.items())] + [""]
    return "\n".join(lines)


# ------------------------------------------------------------------ charts

def _figure(width: float, height: float):
    # Figure + Agg canvas directly: no pyplot, no global backend switch inside a library.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def _save_png(figure, path: Path) -> Path:
    return atomic_write_with(path, lambda tmp: figure.savefig(tmp, format="png", bbox_inches="tight"))


def _bar_chart(path: Path, keys: list[str], labels: list[str], model: dict, intervals: dict, baselines: dict,
               title: str, ylabel: str, rotate: bool) -> Path:
    series = [("model", model)] + list(baselines.items())
    x = np.arange(len(keys))
    width = 0.8 / len(series)
    figure = _figure(max(6.0, 0.55 * len(keys) * len(series) ** 0.5 + 2), 4.2)
    ax = figure.add_subplot(1, 1, 1)
    for s, (name, values) in enumerate(series):
        heights = np.array([_number(values.get(k)) or 0.0 for k in keys])
        offsets = x - 0.4 + width * (s + 0.5)
        errors = None
        if name == "model":
            low, high = [], []
            for k, h in zip(keys, heights):
                interval = intervals.get(k)
                ok = isinstance(interval, (list, tuple)) and len(interval) == 2 and all(
                    _number(v) is not None for v in interval)
                low.append(max(h - interval[0], 0.0) if ok else 0.0)
                high.append(max(interval[1] - h, 0.0) if ok else 0.0)
            errors = np.array([low, high])
        ax.bar(offsets, heights, width, label=name, yerr=errors, capsize=2 if errors is not None else 0)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=45 if rotate else 0, ha="right" if rotate else "center", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save_png(figure, path)


# ------------------------------------------------------------------ entry point

@dataclass
class TaskResult:
    """What an evaluation task returns: its flat metrics (the format above) and its artefacts,
    file name -> text (e.g. ``generations.jsonl``), for `write_results` to write."""

    metrics: dict
    artefacts: dict[str, str] = field(default_factory=dict)


def write_results(metrics: dict, out_dir, title: str = "medvlm results",
                  artefacts: dict[str, str] | None = None) -> list[str]:
    """The one writer of an evaluation's outputs: metrics.json (flat keys, sorted, NaN/None as
    null), results.md (model with CIs beside every baseline, and whether it beats each on BLEU-4
    and CE micro-F1), metrics.png (headline metrics with CI error bars vs baselines),
    ce_per_label.png (CE F1 per observation) and the tasks' artefacts. Returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [atomic_write_text(out_dir / name, text) for name, text in (artefacts or {}).items()]
    flat = {str(k): _jsonable(v) for k, v in sorted(metrics.items(), key=lambda kv: str(kv[0]))}
    written.append(atomic_write_text(out_dir / "metrics.json", json.dumps(flat, indent=1, sort_keys=True) + "\n"))
    written.append(atomic_write_text(out_dir / "results.md", results_markdown(metrics, title)))

    model, intervals, baselines, _ = split_metrics(metrics)
    headline = [m for m in HEADLINE if _number(model.get(m)) is not None]
    if headline:
        written.append(_bar_chart(out_dir / "metrics.png", headline, [LABELS[m] for m in headline], model,
                                  intervals, baselines, title, "score", rotate=True))
    per_label = [k for k in model if k.startswith("ce_f1.")]
    if per_label:
        written.append(_bar_chart(out_dir / "ce_per_label.png", per_label, [k.split(".", 1)[1] for k in per_label],
                                  model, intervals, baselines, "Clinical efficacy F1 per observation", "F1",
                                  rotate=True))
    return [str(p) for p in written]
