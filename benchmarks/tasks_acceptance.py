"""Issue 5 acceptance figures, read from `medvlm eval` outputs and printed as JSON with their targets.

    medvlm eval --checkpoint runs/demo/final                 # report model: retrieval, zero-shot, attention
    medvlm eval --checkpoint runs/vqa_demo/final             # VQA
    medvlm eval --checkpoint runs/chexnet/final              # CheXNet AUROC + Grad-CAM
    python benchmarks/tasks_acceptance.py --report runs/demo/final-eval \\
        --vqa runs/vqa_demo/final-eval --chexnet runs/chexnet/final-eval

"random" targets are multiples of the chance level that `medvlm eval` writes beside each figure.
"""

import argparse
import json
from pathlib import Path

# (metrics file, key, target: number or ("x", k) for k times the random baseline)
TARGETS = [
    ("vqa", "vqa_closed_acc", 0.85),
    ("report", "i2t_r5", ("x", 5.0)),
    ("report", "t2i_r5", ("x", 5.0)),
    ("report", "zs_auroc_mean", 0.75),
    ("chexnet", "auroc_mean", 0.85),
    ("report", "explain_pointing_game", 0.6),
    ("report", "explain_attngrad_pointing_game", 0.6),
    ("report", "explain_gradcam_pointing_game", 0.7),
    ("chexnet", "explain_pointing_game", 0.7),
]
CONTEXT = ["vqa_open_acc", "vqa_overall_acc", "vqa_open_f1", "baselines.majority.vqa_closed_acc",
           "baselines.question_majority.vqa_closed_acc", "i2t_r1", "i2t_r10", "t2i_r1", "t2i_r10", "explain_iou",
           "explain_attngrad_iou", "explain_gradcam_iou", "explain_hirescam_pointing_game", "explain_hirescam_iou",
           "explain_layer", "explain_gradcam_layer", "baselines.random.explain_pointing_game"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("report", "vqa", "chexnet"):
        parser.add_argument(f"--{name}", help=f"eval directory of the {name} checkpoint")
    args = parser.parse_args()
    metrics = {name: json.loads((Path(d) / "metrics.json").read_text())
               for name in ("report", "vqa", "chexnet") if (d := getattr(args, name))}
    rows = []
    for source, key, target in TARGETS:
        values = metrics.get(source, {})
        value = values.get(key)
        if isinstance(target, tuple):
            chance = values.get(f"baselines.random.{key}")
            threshold = None if chance is None else target[1] * chance
            label = f">= {target[1]}x random ({chance:.4f})" if chance is not None else "random baseline missing"
        else:
            threshold, label = target, f">= {target}"
        met = None if value is None or threshold is None else value >= threshold
        rows.append({"model": source, "metric": key, "value": value, "target": label, "met": met})
    context = {f"{source}.{key}": values[key] for source, values in metrics.items() for key in CONTEXT
               if key in values}
    print(json.dumps({"acceptance": rows, "context": context}, indent=1))


if __name__ == "__main__":
    main()
