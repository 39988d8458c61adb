"""Model cards (README.md in every saved model directory) and run metadata."""

import json
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from .atomic_files import atomic_write_text
from .config import RunConfig

MIMIC_TERMS = (
    "This model was trained on MIMIC-CXR, which is credentialed-access data under the PhysioNet "
    "Credentialed Health Data License 1.5.0 and its Data Use Agreement. Do not share the weights "
    "with people who have not signed that agreement, do not try to re-identify patients, and "
    "follow PhysioNet's rules for using such data with online services."
)


def environment() -> dict:
    versions = {}
    for package in ("medvlm", "torch", "transformers", "timm", "accelerate", "datasets", "peft"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    info = {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions}
    try:
        import torch

        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        info["torch_threads"] = torch.get_num_threads()
    except Exception as error:  # informative only
        info["cuda"] = f"unknown ({error})"
    return info


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, timeout=5,
                               cwd=Path(__file__).resolve().parent).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


RUN_INFO = "run_info.json"


def write_run_info(output_dir: Path, cfg: RunConfig) -> None:
    """run_info.json at the start of a run: when, which code, environment, config and command."""
    info = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_commit": git_commit(),
            "environment": environment(), "config": cfg.to_dict(), "command": sys.argv}
    atomic_write_text(Path(output_dir, RUN_INFO), json.dumps(info, indent=1))


def update_run_info(output_dir: Path, **fields) -> None:
    """Add `fields` (e.g. the end of a run and what it skipped) to run_info.json, rewritten atomically."""
    path = Path(output_dir, RUN_INFO)
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):  # missing or unreadable: the new fields still get written
        info = {}
    atomic_write_text(path, json.dumps({**info, **fields}, indent=1))


def _metrics_table(metrics: dict) -> str:
    keys = ["bleu_1", "bleu_4", "meteor", "rouge_l", "cider", "ce_micro_f1", "ce_macro_f1",
            "vqa_closed_acc", "vqa_open_acc", "i2t_r5", "zs_auroc_mean", "auroc_mean"]
    rows = []
    for key in keys:
        if metrics.get(key) is None:
            continue
        ci = metrics.get(f"ci.{key}")
        interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        rows.append(f"| {key} | {metrics[key]:.3f}{interval} |")
    return "| metric | value [95% CI] |\n|---|---|\n" + "\n".join(rows) if rows else "No evaluation yet."


def model_card(cfg: RunConfig | None, metrics: dict | None = None, split: str | None = None) -> str:
    data = cfg.data if cfg else None
    dataset = data.dataset if data else "unknown"
    chexnet = cfg is not None and cfg.model.architecture == "chexnet"
    summary = ("A CheXNet-style chest X-ray classifier (timm vision tower, one logit per observation, "
               "class-weighted BCE) trained with medvlm." if chexnet else
               "A CoCa-style chest X-ray vision-language model (timm vision tower, causal transformers text "
               "tower, cross-attention fusion) trained with medvlm.")
    lines = [
        "# medvlm model",
        "",
        summary,
        "",
        "## Data",
        f"- dataset: `{dataset}`" + (f" at `{data.root}`" if data and data.root else ""),
        f"- images: {data.image_size} px, `{data.resize_mode}` resize" if data else "",
    ]
    if dataset == "synthetic":
        lines.append("- procedurally drawn radiograph-like images with templated reports: the numbers below say "
                     "nothing about performance on real chest X-rays.")
    lines += ["", f"## Metrics ({split or 'held-out'} split)", "", _metrics_table(metrics or {}), ""]
    lines += [
        "## Intended use",
        ("Research on multi-label classification of chest radiographs (a baseline for report models). " if chexnet
         else "Research on report generation, visual question answering and retrieval for chest radiographs. ")
        + "Not a medical device: outputs must not be used for diagnosis or patient care.",
        "",
        "## Limitations",
        "- Generated reports can be fluent and wrong: omitted, invented or mis-lateralised findings.",
        "- Clinical-efficacy scores come from a rule-based labeler, itself imperfect.",
        "- Performance depends on the training population, scanners and views; validate on local data.",
    ]
    if dataset == "mimic_cxr":
        lines += ["", "## Data use terms", MIMIC_TERMS]
    return "\n".join(line for line in lines if line is not None) + "\n"


def write_model_card(directory: Path, cfg: RunConfig | None, metrics: dict | None = None,
                     split: str | None = None, name: str = "README.md") -> Path:
    """The model card as `directory/name`: README.md of a model directory while training writes it;
    `medvlm eval` writes a copy with its metrics into its own output folder, never into the model's."""
    return atomic_write_text(Path(directory, name), model_card(cfg, metrics, split))
