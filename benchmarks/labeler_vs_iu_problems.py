"""Our CheXpert-style labeler against the human `Problems` annotations of IU X-ray.

Runs `medvlm.metrics.chexpert.label_reports` on findings + impression of
`indiana_reports.csv` and compares, per observation, "labeler positive" (1, and also -1 when
--uncertain positive) with "Problems positive" (a mapped term present). Prints JSON: per
observation accuracy, precision, recall, F1 and support; micro F1 over the mapped
observations; and agreement between the labeler's No Finding and Problems == "normal".

`Problems` holds MeSH-based terms separated by ';'. The mapping below is fixed by the meaning of
the terms, not tuned on the labels. Two terms name a lesion type without its site, so their site
is read from the `MeSH` column of the same row: Thickening and Cicatrix (scarring) count as
Pleural Other only when that row's MeSH entry for the term names the pleura. Terms with no
CheXpert counterpart (Calcinosis, Granuloma, Calcified Granuloma, Spine, Emphysema, Lung
hypoinflation/hyperdistention, Costophrenic Angle, Markings, ...) are not mapped: a report
whose only problems are such terms is "not normal" in IU but may well be No Finding for a
CheXpert labeler, which bounds the No Finding agreement. Pneumothorax has no IU term in this
sample (support 0).

    python benchmarks/labeler_vs_iu_problems.py [--csv PATH] [--uncertain negative|positive] [--misses]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from medvlm.metrics.chexpert import label_reports, extract_mentions
from medvlm.observations import CHEXPERT_OBSERVATIONS

DEFAULT_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "iu_xray_reports" / "indiana_reports.csv"

# Problems term -> observation
PROBLEM_TO_OBSERVATION = {
    "Cardiomegaly": "Cardiomegaly",
    "Cardiac Shadow": "Cardiomegaly",  # every occurrence here is "Cardiac Shadow/enlarged..."
    "Mediastinum": "Enlarged Cardiomediastinum",  # "Mediastinum/prominent"
    "Nodule": "Lung Lesion",
    "Mass": "Lung Lesion",
    "Opacity": "Lung Opacity",
    "Airspace Disease": "Lung Opacity",
    "Infiltrate": "Lung Opacity",
    "Density": "Lung Opacity",
    "Pulmonary Edema": "Edema",
    "Pulmonary Congestion": "Edema",
    "Heart Failure": "Edema",
    "Consolidation": "Consolidation",
    "Pneumonia": "Pneumonia",
    "Pulmonary Atelectasis": "Atelectasis",
    "Pneumothorax": "Pneumothorax",
    "Pleural Effusion": "Pleural Effusion",
    "Fractures, Bone": "Fracture",
    "Catheters, Indwelling": "Support Devices",
    "Medical Device": "Support Devices",
    "Implanted Medical Device": "Support Devices",
    "Tube, Inserted": "Support Devices",
    "Surgical Instruments": "Support Devices",
    "Stents": "Support Devices",
}
# Problems term -> observation, only when the row's MeSH entry for the term names this site
PROBLEM_BY_SITE = {
    "Thickening": ("pleura", "Pleural Other"),
    "Cicatrix": ("pleura", "Pleural Other"),
}
COMPARED = [o for o in CHEXPERT_OBSERVATIONS if o != "No Finding"]


def problem_labels(problems: str, mesh: str) -> set[str]:
    terms = [t.strip() for t in (problems or "").split(";") if t.strip()]
    mesh_entries = [m.strip() for m in (mesh or "").split(";") if m.strip()]
    found = set()
    for term in terms:
        if term in PROBLEM_TO_OBSERVATION:
            found.add(PROBLEM_TO_OBSERVATION[term])
        elif term in PROBLEM_BY_SITE:
            site, observation = PROBLEM_BY_SITE[term]
            if any(m.split("/")[0] == term and site in m.split("/")[1:] for m in mesh_entries):
                found.add(observation)
    return found


def _prf(tp, fp, fn):
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", default=str(DEFAULT_CSV))
    parser.add_argument("--uncertain", choices=("negative", "positive"), default="positive",
                        help="count the labeler's uncertain (-1) as positive (default) or negative")
    parser.add_argument("--misses", action="store_true", help="print disagreements to stderr")
    args = parser.parse_args(argv)

    with open(args.csv, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    texts = [" ".join(p for p in (r.get("findings") or "", r.get("impression") or "") if p.strip()) for r in rows]
    labels = label_reports(texts)
    positive = (labels == 1) | ((labels == -1) if args.uncertain == "positive" else False)
    truth = [problem_labels(r["Problems"], r["MeSH"]) for r in rows]

    per_observation, totals = {}, np.zeros(3)
    for obs in COMPARED:
        j = CHEXPERT_OBSERVATIONS.index(obs)
        pred = positive[:, j]
        gold = np.array([obs in t for t in truth])
        tp, fp, fn = int((pred & gold).sum()), int((pred & ~gold).sum()), int((~pred & gold).sum())
        totals += (tp, fp, fn)
        precision, recall, f1 = _prf(tp, fp, fn)
        per_observation[obs] = {"support": int(gold.sum()), "predicted": int(pred.sum()),
                                "accuracy": round(float((pred == gold).mean()), 4), "precision": round(precision, 4),
                                "recall": round(recall, 4), "f1": round(f1, 4)}
        if args.misses:
            for i in np.flatnonzero(pred != gold):
                kind = "FP" if pred[i] else "FN"
                mentions = [m for m in extract_mentions(texts[i]) if m[0] == obs]
                print(f"{kind} {obs} | uid {rows[i]['uid']} | Problems: {rows[i]['Problems']} | {texts[i]} "
                      f"| {mentions}", file=sys.stderr)

    normal = np.array([r["Problems"].strip().lower() == "normal" for r in rows])
    no_finding = labels[:, CHEXPERT_OBSERVATIONS.index("No Finding")] == 1
    nf_precision, nf_recall, nf_f1 = _prf(int((no_finding & normal).sum()), int((no_finding & ~normal).sum()),
                                          int((~no_finding & normal).sum()))
    unmapped_only = np.array([not t and not n for t, n in zip(truth, normal)])
    micro_p, micro_r, micro_f1 = _prf(*totals)
    macro = [v["f1"] for v in per_observation.values() if v["support"] or v["predicted"]]
    print(json.dumps({
        "reports": len(rows),
        "uncertain_counts_as": args.uncertain,
        "mapping": {**PROBLEM_TO_OBSERVATION,
                    **{k: f"{v[1]} (when MeSH site is {v[0]})" for k, v in PROBLEM_BY_SITE.items()}},
        "per_observation": per_observation,
        "micro": {"precision": round(micro_p, 4), "recall": round(micro_r, 4), "f1": round(micro_f1, 4),
                  "tp": int(totals[0]), "fp": int(totals[1]), "fn": int(totals[2])},
        "macro_f1_over_observations_with_support_or_predictions": round(float(np.mean(macro)), 4),
        "no_finding_vs_problems_normal": {
            "accuracy": round(float((no_finding == normal).mean()), 4), "precision": round(nf_precision, 4),
            "recall": round(nf_recall, 4), "f1": round(nf_f1, 4), "normal_reports": int(normal.sum()),
            "labeler_no_finding": int(no_finding.sum()),
            "accuracy_excluding_reports_with_only_unmapped_problems":
                round(float((no_finding == normal)[~unmapped_only].mean()), 4),
            "reports_with_only_unmapped_problems": int(unmapped_only.sum()),
        },
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
