"""`medvlm label`: label a file of reports with the rule-based labeler and write the CheXpert
labeler's CSV layout. The readers here name the file (and line) in every error they raise."""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ...errors import UserError
from ...observations import CHEXPERT_OBSERVATIONS
from .labeler import POSITIVE, extract_mentions, label_reports

_TEXT_COLUMNS = ("Reports", "report", "text")
_TEXT_KEYS = ("report", "text")


def _read_jsonl(path: Path, f) -> list[str]:
    reports = []
    for number, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}:{number}: expected a JSON object with a 'report' or 'text' key, "
                            f"found {type(record).__name__}")
        key = next((k for k in _TEXT_KEYS if k in record), None)
        if key is None:
            raise UserError(f"{path}:{number}: no 'report' or 'text' key (keys: {', '.join(record)})")
        reports.append(record[key] or "")
    return reports


def _read_csv(path: Path, f) -> list[str]:
    reader = csv.DictReader(f)
    columns = reader.fieldnames or []
    column = next((c for c in _TEXT_COLUMNS if c in columns), None)
    if column is None:
        raise UserError(f"{path}: no report column; expected one of {', '.join(_TEXT_COLUMNS)}, "
                        f"found: {', '.join(columns) or '(none)'}")
    return [row[column] or "" for row in reader]


def _read_lines(path: Path, f) -> list[str]:
    return [line.rstrip("\n").rstrip("\r") for line in f if line.strip()]


def read_reports(path) -> list[str]:
    """Reports from a .txt (one report per line), .jsonl (a "report" or "text" key per line) or
    .csv (a "Reports", "report" or "text" column) file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        read, newline = _read_jsonl, None
    elif suffix == ".csv":
        read, newline = _read_csv, ""
    else:
        read, newline = _read_lines, None
    try:
        f = open(path, encoding="utf-8", newline=newline)
    except OSError as error:
        raise UserError(f"{path}: cannot read ({error.strerror})") from None
    with f:
        try:
            return read(path, f)
        except UnicodeDecodeError as error:
            raise UserError(f"{path}: not UTF-8 text ({error.reason})") from None


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


def label_file(in_path, out_csv) -> np.ndarray:
    """Label every report of a txt/JSONL/CSV file and write the CheXpert-layout CSV; returns
    the (N, 14) labels."""
    reports = read_reports(in_path)
    labels = label_reports(reports)
    write_labels_csv(reports, labels, out_csv)
    return labels


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medvlm label",
        description="Label radiology reports with the 14 CheXpert observations (medvlm's rule-based "
                    "labeler) and write them in the CheXpert labeler's CSV layout: Reports, then "
                    "1.0 positive / 0.0 negative / -1.0 uncertain / blank not mentioned.")
    parser.add_argument("reports", help="a .txt file (one report per line), .jsonl (a 'report' or 'text' key) "
                                        "or .csv (a 'Reports', 'report' or 'text' column)")
    parser.add_argument("-o", "--out", help="output CSV (default: <reports>_labeled.csv next to the input)")
    parser.add_argument("--mentions", action="store_true",
                        help="also print every mention found with its label (for checking the labeler)")
    return parser


def label_main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    in_path = Path(args.reports)
    out = Path(args.out) if args.out else in_path.with_name(in_path.stem + "_labeled.csv")
    reports = read_reports(in_path)
    labels = label_reports(reports)
    write_labels_csv(reports, labels, out)
    if args.mentions:
        for i, report in enumerate(reports):
            for observation, text, label in extract_mentions(report):
                print(f"{i}\t{observation}\t{label:+.0f}\t{text}")
    positives = {name: int((labels[:, j] == POSITIVE).sum()) for j, name in enumerate(CHEXPERT_OBSERVATIONS)}
    print(json.dumps({"reports": len(reports), "out": str(out), "positives": positives}, indent=1))
    return 0
