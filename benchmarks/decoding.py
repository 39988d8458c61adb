"""Report decoding choices side by side on one checkpoint: CE micro-F1 and BLEU-4 of greedy, beam
search, and best-of-N reranking (by the image-text score, and by label consensus) at a few sample
counts and temperatures, beside the nearest-neighbour report, on the validation split by default
(choose decoding there, not on the test split the README reports).

    python benchmarks/decoding.py --checkpoint runs/seeds_demo/seed1/final [--split validation] [--out decoding.json]

Prints one JSON object: {"split", "num_samples", "rows": [{"decoding", "ce_micro_f1", "bleu_4", "seconds"}]}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from medvlm.metrics.chexpert import clinical_efficacy, label_generated_reports, label_reports
from medvlm.metrics.nlg import compute_nlg
from medvlm.runs import load_trained, records_for
from medvlm.tasks.embeddings import image_embeddings
from medvlm.tasks.report_generation import baseline_reports, generate_reports, generation_settings

# (name, generation_settings keyword arguments)
CHOICES = (
    ("greedy", {}),
    ("beam 3", {"num_beams": 3}),
    ("image_text, 16 samples, T 0.7", {"rerank_samples": 16, "rerank_temperature": 0.7}),
    ("label_consensus, 8 samples, T 0.7", {"rerank_samples": 8, "rerank_temperature": 0.7, "rerank_by": "label_consensus"}),
    ("label_consensus, 16 samples, T 0.7", {"rerank_samples": 16, "rerank_temperature": 0.7,
                                            "rerank_by": "label_consensus"}),
    ("label_consensus, 16 samples, T 1.0", {"rerank_samples": 16, "rerank_temperature": 1.0,
                                            "rerank_by": "label_consensus"}),
)


def scored(references: list[str], reports: list[str], ref_labels) -> dict:
    ce = clinical_efficacy(ref_labels, label_generated_reports(reports))["ce_micro_f1"]
    return {"ce_micro_f1": round(ce, 4), "bleu_4": round(compute_nlg(references, reports, include_meteor=False)["bleu_4"], 4)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--split", default="validation")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    model, processor, cfg = load_trained(args.checkpoint)
    records, train = records_for(cfg, args.split), records_for(cfg, "train")
    references = [r["text"] for r in records]
    ref_labels = label_reports(references)
    rows = []
    neighbours = (image_embeddings(model, processor, train, args.batch_size),
                  image_embeddings(model, processor, records, args.batch_size))
    nn = baseline_reports(train, records, cfg.eval.seed, neighbours)["nearest_neighbour"]
    rows.append({"decoding": "nearest-neighbour report (baseline)", **scored(references, nn, ref_labels), "seconds": None})
    for name, settings in CHOICES:
        start = time.perf_counter()
        reports = generate_reports(model, processor, records, args.batch_size,
                                   **generation_settings(cfg.eval.max_new_tokens, seed=cfg.eval.seed, **settings))
        rows.append({"decoding": name, **scored(references, reports, ref_labels),
                     "seconds": round(time.perf_counter() - start, 1)})
        print(json.dumps(rows[-1]), flush=True)
    result = {"checkpoint": str(args.checkpoint), "split": args.split, "num_samples": len(records), "rows": rows}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
