"""`medvlm label`: label reports with the rule-based labeler and write the CheXpert labeler's CSV
layout. The reports file is read by the one reader of user files, `medvlm.data.tables`
(`read_reports`), which the command line hands in: metrics import nothing from data."""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ...observations import CHEXPERT_OBSERVATIONS
from .labeler import POSITIVE, extract_mentions, label_reports


def write_labels_csv(reports: list[str], labels: np.ndarray, out_csv) -> None:
    """The CheXpert labeler's output layout: `Reports`, then the 14 observations with
    1.0 / 0.0 / -1.0 or blank. Written atomically."""
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_csv.parent, prefix=f".{out_csv.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["Reports", *CHEXPERT_OBSERVATIONS])
            for report, row in zip(reports, labels):
                writer.writerow([report, *("" if np.isnan(v) else f"{v:.1f}" for v in row)])
        os.replace(tmp, out_csv)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medvlm label",
        description="Label radiology reports with the 14 CheXpert observations (medvlm's rule-based "
                    "labeler) and write them in the CheXpert labeler's CSV layout: Reports, then "
                    "1.0 positive / 0.0 negative / -1.0 uncertain / blank not mentioned. A report that "
                    "mentions nothing, the empty report included, is No Finding = 1.0 (CheXpert's rule); "
                    "`medvlm eval` instead scores an empty generated report as no prediction.")
    parser.add_argument("reports", help="a .txt file (one report per line), .jsonl (a 'report' or 'text' key) "
                                        "or .csv (a 'Reports', 'report' or 'text' column)")
    parser.add_argument("-o", "--out", help="output CSV (default: <reports>_labeled.csv next to the input)")
    parser.add_argument("--encoding", default="utf-8",
                        help="text encoding of the reports file (default utf-8, with or without a byte-order mark)")
    parser.add_argument("--mentions", action="store_true",
                        help="also print every mention found with its label (for checking the labeler)")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first row without a text report (default: name it, leave it out, "
                             "label the others, exit 1 at the end)")
    return parser


def label_main(argv: list[str] | None, read_reports: Callable[..., list[str]]) -> int:
    """`medvlm label`. `read_reports(path, encoding=..., bad=...)` reads the reports file: the
    command line hands in `medvlm.data.tables.read_reports` (metrics import nothing from data).
    A row without a text report is named and left out (`--strict`: stops there); the labels are
    written row by row as they are made, so an interruption keeps the rows before it."""
    from ...batch import BadItems

    args = _parser().parse_args(argv)
    in_path = Path(args.reports)
    out = Path(args.out) if args.out else in_path.with_name(in_path.stem + "_labeled.csv")
    bad = BadItems("label", args.strict)
    reports = read_reports(in_path, encoding=args.encoding, bad=bad)
    out.parent.mkdir(parents=True, exist_ok=True)
    positives = dict.fromkeys(CHEXPERT_OBSERVATIONS, 0)
    with open(out, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Reports", *CHEXPERT_OBSERVATIONS])
        for i, report in enumerate(reports):
            row = label_reports([report])[0]
            writer.writerow([report, *("" if np.isnan(v) else f"{v:.1f}" for v in row)])
            f.flush()
            for name, value in zip(CHEXPERT_OBSERVATIONS, row):
                positives[name] += int(value == POSITIVE)
            if args.mentions:
                for observation, text, label in extract_mentions(report):
                    print(f"{i}\t{observation}\t{label:+.0f}\t{text}")
    print(json.dumps({"reports": len(reports), "out": str(out), "positives": positives}, indent=1))
    return bad.finish(len(reports))
