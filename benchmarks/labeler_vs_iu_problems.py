"""Our CheXpert-style labeler against the human `Problems` annotations of IU X-ray.

Runs `medvlm.metrics.chexpert.label_reports` on findings + impression of an IU
`indiana_reports.csv` and compares, per observation, "labeler positive" (1, and also -1 when
uncertain counts as positive) with "Problems positive" (a mapped term present). Prints JSON, per
part of the data and for both uncertainty modes (uncertain counted negative, and positive): per
observation accuracy, precision, recall, F1 and support; micro F1 over the mapped observations;
and agreement between the labeler's No Finding and Problems == "normal"; then a summary of the
micro F1s.

Data and split. The default CSV is the development set `../shared/data/iu_xray_reports_dev/
indiana_reports.csv` (3,261 studies outside the R2Gen test split). It is split once, by study,
into a fit part, where the labeler's rules may be studied (`--misses`), and a validation part,
whose individual reports are never read: a study is validation when
``int(hashlib.sha256(uid.encode()).hexdigest(), 16) % 5 == 0`` (681 studies, ~20%), else fit
(2,580). The split was fixed before any result was looked at and must not change. `--csv` takes
another CSV in the same layout; it is split the same way by uid, and `--no-split` (or a CSV
without a uid column) gives one "all" part. The older 300-study `iu_xray_reports/` sample, on
which the labeler was first tuned, is a subset of the development set.

`Problems` holds MeSH-based terms separated by ';'. The mapping below is fixed by the meaning of
the terms, not tuned on the labels. Two terms name a lesion type without its site, so their site
is read from the `MeSH` column of the same row: Thickening and Cicatrix (scarring) count as
Pleural Other only when that row's MeSH entry for the term names the pleura. Terms with no
CheXpert counterpart (Calcinosis, Granuloma, Calcified Granuloma, Spine, Emphysema, Lung
hypoinflation/hyperdistention, Costophrenic Angle, Markings, ...) are not mapped: a report
whose only problems are such terms is "not normal" in IU but may well be No Finding for a
CheXpert labeler, which bounds the No Finding agreement.

    python benchmarks/labeler_vs_iu_problems.py [--csv PATH] [--no-split] [--misses [--uncertain negative|positive]]

`--misses` prints the disagreements of the FIT part only (to stderr), counted with `--uncertain`
(default positive), so that validation reports stay unread.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from medvlm.metrics.chexpert import label_reports, extract_mentions
from medvlm.observations import CHEXPERT_OBSERVATIONS

DEFAULT_CSV = (Path(__file__).resolve().parents[1].parent / "shared" / "data" / "iu_xray_reports_dev"
               / "indiana_reports.csv")
VALIDATION_MODULUS = 5  # sha256(uid) % 5 == 0 -> validation: fixed once, never to be tuned
MODES = ("negative", "positive")

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


def split_of(uid: str) -> str:
    """The fixed part of a study: "validation" for about one study in five, else "fit"."""
    return "validation" if int(hashlib.sha256(str(uid).encode()).hexdigest(), 16) % VALIDATION_MODULUS == 0 \
        else "fit"


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


def report_text(row: dict) -> str:
    return " ".join(p for p in (row.get("findings") or "", row.get("impression") or "") if p.strip())


def _prf(tp, fp, fn):
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _positive(labels: np.ndarray, mode: str) -> np.ndarray:
    return (labels == 1) | ((labels == -1) if mode == "positive" else False)


def _gold(truth: list[set], obs: str) -> np.ndarray:
    return np.array([obs in t for t in truth], dtype=bool)


def score(labels: np.ndarray, truth: list[set], normal: np.ndarray, mode: str) -> dict:
    """Per observation and micro scores, and the No Finding agreement, of one part in one mode."""
    positive = _positive(labels, mode)
    per_observation, totals = {}, np.zeros(3)
    for obs in COMPARED:
        pred, gold = positive[:, CHEXPERT_OBSERVATIONS.index(obs)], _gold(truth, obs)
        tp, fp, fn = int((pred & gold).sum()), int((pred & ~gold).sum()), int((~pred & gold).sum())
        totals += (tp, fp, fn)
        precision, recall, f1 = _prf(tp, fp, fn)
        per_observation[obs] = {"support": int(gold.sum()), "predicted": int(pred.sum()),
                                "accuracy": round(float((pred == gold).mean()), 4), "precision": round(precision, 4),
                                "recall": round(recall, 4), "f1": round(f1, 4)}
    micro_p, micro_r, micro_f1 = _prf(*totals)
    macro = [v["f1"] for v in per_observation.values() if v["support"] or v["predicted"]]
    return {
        "per_observation": per_observation,
        "micro": {"precision": round(micro_p, 4), "recall": round(micro_r, 4), "f1": round(micro_f1, 4),
                  "tp": int(totals[0]), "fp": int(totals[1]), "fn": int(totals[2])},
        "macro_f1_over_observations_with_support_or_predictions": round(float(np.mean(macro)), 4) if macro else 0.0,
        "no_finding_vs_problems_normal": _no_finding(labels, truth, normal),
    }


def _no_finding(labels: np.ndarray, truth: list[set], normal: np.ndarray) -> dict:
    no_finding = labels[:, CHEXPERT_OBSERVATIONS.index("No Finding")] == 1
    precision, recall, f1 = _prf(int((no_finding & normal).sum()), int((no_finding & ~normal).sum()),
                                 int((~no_finding & normal).sum()))
    unmapped_only = np.array([not t and not n for t, n in zip(truth, normal)], dtype=bool)
    agree = no_finding == normal
    return {"accuracy": round(float(agree.mean()), 4), "precision": round(precision, 4),
            "recall": round(recall, 4), "f1": round(f1, 4), "normal_reports": int(normal.sum()),
            "labeler_no_finding": int(no_finding.sum()),
            "accuracy_excluding_reports_with_only_unmapped_problems":
                round(float(agree[~unmapped_only].mean()), 4) if (~unmapped_only).any() else 0.0,
            "reports_with_only_unmapped_problems": int(unmapped_only.sum())}


def print_misses(rows: list[dict], texts: list[str], labels: np.ndarray, truth: list[set], mode: str) -> None:
    """Disagreements, one line each, to stderr: call it with fit rows only."""
    positive = _positive(labels, mode)
    for obs in COMPARED:
        pred, gold = positive[:, CHEXPERT_OBSERVATIONS.index(obs)], _gold(truth, obs)
        for i in np.flatnonzero(pred != gold):
            kind = "FP" if pred[i] else "FN"
            mentions = [m for m in extract_mentions(texts[i]) if m[0] == obs]
            print(f"{kind} {obs} | uid {rows[i]['uid']} | Problems: {rows[i]['Problems']} | {texts[i]} "
                  f"| {mentions}", file=sys.stderr)


def read_parts(path: str, split: bool) -> dict[str, list[dict]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if not split or not rows or "uid" not in rows[0]:
        return {"all": rows}
    parts = {"fit": [], "validation": []}
    for row in rows:
        parts[split_of(row["uid"])].append(row)
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", default=str(DEFAULT_CSV))
    parser.add_argument("--no-split", action="store_true", help="score the whole CSV as one part, \"all\"")
    parser.add_argument("--misses", action="store_true", help="print the fit part's disagreements to stderr")
    parser.add_argument("--uncertain", choices=MODES, default="positive",
                        help="for --misses: count the labeler's uncertain (-1) as positive (default) or negative")
    args = parser.parse_args(argv)

    results, summary = {}, {}
    for part, rows in read_parts(args.csv, not args.no_split).items():
        texts = [report_text(r) for r in rows]
        labels = label_reports(texts)
        truth = [problem_labels(r["Problems"], r["MeSH"]) for r in rows]
        normal = np.array([r["Problems"].strip().lower() == "normal" for r in rows], dtype=bool)
        results[part] = {"reports": len(rows),
                         **{f"uncertain_{mode}": score(labels, truth, normal, mode) for mode in MODES}}
        summary[part] = {f"micro_f1_uncertain_{mode}": results[part][f"uncertain_{mode}"]["micro"]["f1"]
                         for mode in MODES}
        if args.misses and part in ("fit", "all"):
            print_misses(rows, texts, labels, truth, args.uncertain)
    print(json.dumps({
        "csv": args.csv,
        "split": None if "all" in results else f"sha256(uid) % {VALIDATION_MODULUS} == 0 -> validation, else fit",
        "mapping": {**PROBLEM_TO_OBSERVATION,
                    **{k: f"{v[1]} (when MeSH site is {v[0]})" for k, v in PROBLEM_BY_SITE.items()}},
        "parts": results,
        "summary": summary,
    }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
