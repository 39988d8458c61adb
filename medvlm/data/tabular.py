"""Records from any table: CSV/TSV, JSON Lines, or a Hugging Face `datasets` dataset.

A column mapping says which column holds what; every option naming a column must name one that
exists (otherwise a DataError lists the columns there are). Without a split column each row gets
a deterministic split from `hash_split` of its subject id (else study id, else image path), so
all rows of one patient share a split when `subject_column` is given.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from medvlm.data.images import check_image_file, load_image
from medvlm.data.records import (
    DataError, SkipLog, canonical_split, check_fractions, check_split_arg, hash_split, make_record,
    parse_label, read_json, read_table,
)
from medvlm.data.reports import clean_report
from medvlm.errors import UserError
from medvlm.observations import CHEXPERT_OBSERVATIONS

FORMATS = ("auto", "csv", "tsv", "jsonl", "hf")


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and not value.strip())


def _label_columns(label_columns) -> list[str | None] | None:
    """The option -> 14 column names in CHEXPERT_OBSERVATIONS order (None: no column, NaN)."""
    if label_columns is None:
        return None
    if isinstance(label_columns, str):
        if label_columns != "chexpert":
            raise UserError(f"label_columns must be 'chexpert', a list of 14 column names or a "
                            f"dict observation -> column, got {label_columns!r}")
        return list(CHEXPERT_OBSERVATIONS)
    if isinstance(label_columns, dict):
        unknown = [k for k in label_columns if k not in CHEXPERT_OBSERVATIONS]
        if unknown:
            raise UserError(f"label_columns: {unknown} are not CheXpert observations; expected "
                            f"keys among {list(CHEXPERT_OBSERVATIONS)}")
        return [label_columns.get(obs) for obs in CHEXPERT_OBSERVATIONS]
    columns = list(label_columns)
    if len(columns) != len(CHEXPERT_OBSERVATIONS):
        raise UserError(f"label_columns: a list must name {len(CHEXPERT_OBSERVATIONS)} columns in "
                        f"CHEXPERT_OBSERVATIONS order, got {len(columns)}; use a dict "
                        "observation -> column for fewer")
    return columns


def _read_source(source, fmt: str):
    """-> (name for messages, base dir, list of (split or None, list of row dicts), column names)."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        datasets = None
    if datasets is not None and isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        return ("<datasets object>", None, *_hf_parts(source))
    path = Path(source)
    if fmt == "auto":
        name = path.name.lower()
        if path.is_dir():
            fmt = "hf"
        elif name.endswith((".csv", ".csv.gz")):
            fmt = "csv"
        elif name.endswith((".tsv", ".tsv.gz")):
            fmt = "tsv"
        elif name.endswith((".jsonl", ".jsonl.gz", ".json", ".ndjson")):
            fmt = "jsonl"
        else:
            raise DataError(f"{path}: cannot tell the table format from the name; expected .csv, "
                            ".tsv, .jsonl or a dataset saved with save_to_disk (or set format)",
                            path=path, reason="missing_file" if not path.exists() else "bad_table")
    if fmt in ("csv", "tsv"):
        df = read_table(path, sep="," if fmt == "csv" else "\t")
        return str(path), path.parent, [(None, df.to_dict("records"))], list(df.columns)
    if fmt == "jsonl":
        rows = read_json(path, lines=True)
        columns = list(dict.fromkeys(k for row in rows for k in row))
        return str(path), path.parent, [(None, rows)], columns
    if fmt == "hf":
        if not path.exists():
            raise DataError(f"{path}: dataset folder not found", path=path, reason="missing_file")
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as err:  # datasets raises FileNotFoundError/ValueError variants
            raise DataError(f"{path}: not a dataset saved with save_to_disk ({err})", path=path,
                            reason="bad_table") from None
        return (str(path), path, *_hf_parts(ds))
    raise UserError(f"format must be one of {FORMATS}, got {fmt!r}")


def _hf_parts(ds):
    import datasets

    parts = list(ds.items()) if isinstance(ds, datasets.DatasetDict) else [(None, ds)]
    out, columns = [], []
    for key, part in parts:
        # Image features: read the stored path/bytes, not a decoded PIL image.
        for col, feature in part.features.items():
            if isinstance(feature, datasets.Image) and feature.decode:
                part = part.cast_column(col, datasets.Image(decode=False))
        columns.extend(c for c in part.column_names if c not in columns)
        out.append((key, part.to_list()))
    return out, columns


def load_tabular(
    source,
    *,
    split=None,
    on_error: str = "raise",
    image_column: str = "image",
    text_column: str | None = "text",
    split_column: str | None = None,
    study_column: str | None = None,
    subject_column: str | None = None,
    view_column: str | None = None,
    label_columns=None,
    findings_column: str | None = None,
    impression_column: str | None = None,
    question_column: str | None = None,
    answer_column: str | None = None,
    answer_type_column: str | None = None,
    qid_column: str | None = None,
    image_root=None,
    format: str = "auto",
    split_fractions=(0.8, 0.1, 0.1),
    split_seed: int = 0,
    clean_text: bool = False,
    require_images: bool = True,
    verify_images: bool = False,
) -> list[dict]:
    """Records from a CSV/TSV/JSONL file, a dataset folder saved with save_to_disk, or a
    `datasets.Dataset` / `DatasetDict` object, through a column mapping.

    Columns: `image_column` (required; a path, absolute or relative to `image_root`; in a
    dataset also an Image feature or an array), `text_column` (the target; None: text ""),
    `split_column` (values train/val/validate/validation/dev/test, any case), `study_column`
    (default: the image value), `subject_column` (default: the study id), `view_column`,
    `findings_column`, `impression_column` (text defaults to findings, else impression, when
    `text_column` is None), `label_columns` ("chexpert" for columns named like the 14
    observations, a list of 14 column names in CHEXPERT_OBSERVATIONS order, or a dict
    observation -> column; cells 1/0/-1/blank). With `question_column` and `answer_column` the
    records are VQA records (text = answer; `answer_type_column` closed/open, default "open";
    `qid_column`, default the row number).

    image_root: base of relative image paths (default: the table's folder).
    split: without `split_column`, a DatasetDict's keys are the splits; otherwise `hash_split`
      of the subject (else study, else image) id with `split_fractions` (train, validation,
      test; default 0.8/0.1/0.1) and `split_seed`.
    clean_text: pass text columns through `clean_report` (whitespace, de-identification tokens).
    require_images / verify_images: check each image path exists (and decodes).
    """
    splits = check_split_arg(split)
    split_fractions = check_fractions(split_fractions)
    labels = _label_columns(label_columns)
    name, base, parts, columns = _read_source(source, format)
    wanted = {
        "image_column": image_column, "text_column": text_column, "split_column": split_column,
        "study_column": study_column, "subject_column": subject_column, "view_column": view_column,
        "findings_column": findings_column, "impression_column": impression_column,
        "question_column": question_column, "answer_column": answer_column,
        "answer_type_column": answer_type_column, "qid_column": qid_column,
    }
    missing = [f"{opt}={col!r}" for opt, col in wanted.items() if col is not None and col not in columns]
    missing += [f"label column {col!r}" for col in labels or () if col is not None and col not in columns]
    if missing:
        raise DataError(f"{name}: no column for {', '.join(missing)}; the table has columns {columns}",
                        path=name, reason="missing_column")
    if (question_column is None) != (answer_column is None):
        raise UserError("VQA tables need both question_column and answer_column")
    image_root = Path(image_root) if image_root is not None else base
    log = SkipLog(on_error, source=f"tabular({name})")

    records = []
    for part_split, rows in parts:
        for i, row in enumerate(rows):
            where = f"{name}, row {i + 1}" + (f" of split {part_split!r}" if part_split else "")
            try:
                record = _row_record(row, index=i, where=where, name=name, part_split=part_split, **wanted,
                                     labels=labels, image_root=image_root, fractions=split_fractions,
                                     seed=split_seed, clean_text=clean_text)
                if splits is not None and record["split"] not in splits:
                    continue
                if isinstance(record["image"], str) and (require_images or verify_images):
                    check_image_file(record["image"], decode=verify_images)
            except DataError as err:
                log.skip(err)
                continue
            records.append(record)
    return log.finish(records)


def _text(row, column, clean: bool) -> str:
    if column is None or _blank(row.get(column)):
        return ""
    text = str(row[column]).strip()
    return clean_report(text) if clean else text


def _row_record(row, *, index, where, name, part_split, image_column, text_column, split_column,
                study_column, subject_column, view_column, findings_column, impression_column,
                question_column, answer_column, answer_type_column, qid_column, labels,
                image_root, fractions, seed, clean_text) -> dict:
    image, image_key = _image(row.get(image_column), where=where, column=image_column,
                              image_root=image_root)
    findings = _text(row, findings_column, clean_text)
    impression = _text(row, impression_column, clean_text)
    text = _text(row, text_column, clean_text) if text_column else (findings or impression)
    study_id = _text(row, study_column, False) or image_key
    subject_id = _text(row, subject_column, False) or study_id
    if split_column is not None:
        if _blank(row.get(split_column)):
            raise DataError(f"{where}: column {split_column!r} is empty; expected a split name",
                            path=name, reason="bad_split")
        row_split = canonical_split(row[split_column], where=f"{where}, column {split_column!r}")
    elif part_split is not None:
        row_split = canonical_split(part_split, where=where)
    else:
        row_split = hash_split(subject_id, fractions, seed)
    label_values = None
    if labels is not None:
        label_values = [math.nan if col is None else
                        parse_label(row.get(col), where=f"{where}, column {col!r}") for col in labels]
    extra = {}
    if question_column is not None:
        answer = _text(row, answer_column, False)
        if not answer or _blank(row.get(question_column)):
            raise DataError(f"{where}: empty question or answer", path=name, reason="missing_field")
        answer_type = "open"
        if answer_type_column is not None and not _blank(row.get(answer_type_column)):
            answer_type = str(row[answer_type_column]).strip().lower()
            if answer_type not in ("closed", "open"):
                raise DataError(f"{where}, column {answer_type_column!r}: {row[answer_type_column]!r}; "
                                "expected closed or open", path=name, reason="bad_field")
        extra = {"question": str(row[question_column]).strip(), "answer": answer,
                 "answer_type": answer_type,
                 "qid": str(row[qid_column]) if qid_column is not None else str(index + 1)}
        text = answer
    view = _text(row, view_column, False).upper()
    return make_record(image=image, text=text, findings=findings, impression=impression,
                       study_id=study_id, subject_id=subject_id, view=view, split=row_split,
                       labels=label_values, **extra)


def _image(value, *, where, column, image_root):
    """-> (image for the record: a path str or an array, a key for ids/hashing)."""
    if isinstance(value, dict):  # datasets Image(decode=False): {"bytes": ..., "path": ...}
        path, data = value.get("path"), value.get("bytes")
        if path:
            resolved = Path(path) if image_root is None or Path(path).is_absolute() else image_root / path
            if resolved.exists() or not data:
                return str(resolved), str(path)
        if data:
            return load_image(data), str(path or where)
        raise DataError(f"{where}, column {column!r}: image has neither a path nor bytes",
                        reason="missing_field")
    if isinstance(value, (list, np.ndarray)):  # pixels stored in the table
        return load_image(np.asarray(value)), where
    if _blank(value):
        raise DataError(f"{where}, column {column!r}: empty; expected an image path",
                        reason="missing_field")
    rel = str(value).strip()
    path = Path(rel)
    if not path.is_absolute() and image_root is not None:
        path = image_root / path
    return str(path), rel
