"""How far bf16 weights and int8 linear maps move a trained model's reports from fp32's, and how
much faster they generate them: the reports of a split (the demo's test split by default) in
each weight format, their CheXpert-style labels compared with fp32's. Prints one JSON.

    python train.py --config configs/demo.yaml          # runs/demo/final
    python benchmarks/weights_agreement.py --checkpoint runs/demo/final --out agreement.json

Agreement counts, per report, whether each of the 14 observations gets the same label
(positive, negative, uncertain or not mentioned) as in the fp32 report; "all 14 agree" is the
share of reports whose labels all match. Timing: the whole split, batches of --batch-size.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from medvlm.metrics.chexpert import label_generated_reports  # noqa: E402
from medvlm.modeling.inference_weights import WEIGHT_FORMATS, for_generation  # noqa: E402
from medvlm.runs import load_trained, records_for  # noqa: E402
from medvlm.tasks.report_generation import generate_reports, generation_kwargs  # noqa: E402


def same_labels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 14) booleans: equal labels, NaN (not mentioned) equal to NaN."""
    return (a == b) | (np.isnan(a) & np.isnan(b))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="runs/demo/final")
    p.add_argument("--split", default="test")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-samples", type=int)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, processor, cfg = load_trained(args.checkpoint)
    records = records_for(cfg, args.split)[: args.max_samples]
    settings = generation_kwargs(cfg.eval)
    result = {"benchmark": "weights_agreement", "machine": common.machine(args.threads),
              "checkpoint": str(args.checkpoint), "split": args.split, "reports": len(records),
              "generation": {k: v for k, v in settings.items() if isinstance(v, (int, float, str, bool))},
              "formats": {}}
    reports, labels = {}, {}
    for weights in WEIGHT_FORMATS:
        generator = for_generation(model, weights)
        start = time.perf_counter()
        reports[weights] = generate_reports(generator, processor, records, args.batch_size, **settings)
        seconds = time.perf_counter() - start
        labels[weights] = label_generated_reports(reports[weights])
        entry = {"s": seconds, "s_per_report": seconds / max(len(records), 1)}
        if weights != "fp32":
            agree = same_labels(labels[weights], labels["fp32"])
            entry.update(
                label_agreement=float(agree.mean()),
                reports_all_labels_agree=float(agree.all(axis=1).mean()),
                reports_identical=float(np.mean([a == b for a, b in zip(reports[weights], reports["fp32"])])),
                speedup_vs_fp32=result["formats"]["fp32"]["s"] / seconds,
            )
        result["formats"][weights] = entry
    common.finish_machine(result)
    common.dump(result, args.out)
    return result


if __name__ == "__main__":
    main()
