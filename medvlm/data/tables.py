"""The one reader of user tables: CSV/TSV, JSON Lines (or a JSON list of objects), a Hugging Face
`datasets` dataset; and `load_tabular`, records from any of them through a column mapping.

Every command that reads a table or a JSONL file reads it here (the dataset loaders, `medvlm
label`), so every problem is worded the same way: the file, the line as an editor shows it
(1-based; for CSV the physical line a row starts on, quoted newlines counted), and the column or
field. Text is UTF-8, with or without a byte-order mark; other bytes are an error naming the
line and the byte offset (re-encode the file, or pass its `encoding`).

    table = read_csv(path)                 # Table: .name, .columns, .rows (dicts), .lines
    table.text(i, "report")                # the cell as text; a number, list or dict is an error
    table.where(i, "report")               # "reports.csv, line 7, column 'report'"

`load_tabular` maps columns to the record schema (see `medvlm.data.records`). Without a split
column each row gets a deterministic split from `hash_split` of its subject id (else study id,
else image path), so all rows of one patient share a split when `subject_column` is given.
Image paths resolve inside the image root (see `PathGuard`); rows whose report is empty are left
out and counted ("3 rows with an empty report skipped") unless ``empty_reports="keep"``.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
from pathlib import Path

import numpy as np

from medvlm.data.images import check_image_file, load_image
from medvlm.data.records import (
    DataError, PathGuard, SkipLog, canonical_split, check_fractions, check_split_arg, hash_split,
    make_record, parse_label,
)
from medvlm.data.reports import clean_report
from medvlm.batch import BadItems
from medvlm.errors import UserError
from medvlm.observations import CHEXPERT_OBSERVATIONS

FORMATS = ("auto", "csv", "tsv", "jsonl", "hf")
EMPTY_REPORTS = ("skip", "keep")
REPORT_COLUMNS = ("Reports", "report", "text")  # `medvlm label`: CSV columns, in preference order
REPORT_KEYS = ("report", "text")  # `medvlm label`: JSONL keys
csv.field_size_limit(2**31 - 1)  # a long report is text, not an error


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and not value.strip())


def _kind(value) -> str:
    """'a number (42)', 'a list (['a', 'b'])', ... for messages."""
    kinds = {bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "an object",
             str: "a string"}
    shown = repr(value)
    return f"{kinds.get(type(value), type(value).__name__)} ({shown[:60]}{'...' if len(shown) > 60 else ''})"


class Table:
    """Rows of one user table, each remembered with the line it starts on.

    name: the file (for messages); columns: the header (CSV) or every key met (JSONL), in order;
    rows: one dict per row; lines: the 1-based line each row starts on, or None where a source
    has no lines (a datasets object: rows are then named "row N"); split: a DatasetDict's key.
    """

    def __init__(self, name: str, columns: list, rows: list[dict], lines: list[int] | None = None,
                 split: str | None = None, field_word: str = "column"):
        self.name, self.columns, self.rows, self.lines, self.split = name, columns, rows, lines, split
        self.field_word = field_word  # "column" (CSV, datasets) or "field" (JSON)

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, i: int, column=None) -> str:
        """'t.csv, line 7' or 'data, row 3 of split 'train'', with ", column 'x'" when given."""
        place = f"line {self.lines[i]}" if self.lines is not None else f"row {i + 1}"
        if self.split is not None:
            place += f" of split {self.split!r}"
        return f"{self.name}, {place}" + ("" if column is None else f", {self.field_word} {column!r}")

    def require(self, columns) -> None:
        """A DataError listing the table's columns when any of `columns` is missing."""
        missing = [c for c in columns if c not in self.columns]
        if missing:
            raise DataError(f"{self.name}: missing column(s) {missing}; the file has columns {self.columns}",
                            path=self.name, reason="missing_column")

    def text(self, i: int, column, *, numbers: bool = False) -> str:
        """The cell as stripped text ("" when absent or blank). A number (unless `numbers`, for ids
        and answers), true/false, a list or an object is a DataError: it is not text."""
        value = self.rows[i].get(column)
        if _blank(value):
            return ""
        if isinstance(value, str):
            return value.strip()
        if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise DataError(f"{self.where(i, column)}: expected text, got {_kind(value)}", path=self.name,
                        reason="bad_field")


# --------------------------------------------------------------------------- files


def read_text(path, encoding: str = "utf-8") -> str:
    """A text file (gzip-compressed when it ends in .gz) decoded whole. UTF-8 accepts and drops a
    byte-order mark. Missing, unreadable or wrongly encoded files are DataErrors naming the
    file (and for bad bytes the line and the byte offset)."""
    path = Path(path)
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found", path=path, reason="missing_file") from None
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read ({getattr(err, 'strerror', None) or err})", path=path,
                        reason="missing_file") from None
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        return data.decode(codec)
    except LookupError:
        raise UserError(f"encoding {encoding!r} is not a known text encoding") from None
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        shown = "UTF-8" if codec == "utf-8-sig" else encoding
        raise DataError(f"{path}, line {line}: not {shown} text (byte {err.start}: 0x{data[err.start]:02x}); "
                        "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8) or give its encoding",
                        path=path, reason="not_utf8") from None


def read_csv(path, required_columns=(), *, sep: str = ",", encoding: str = "utf-8") -> Table:
    """A CSV/TSV file (optionally .gz) as a Table of str cells; each row remembers the physical
    line it starts on. An empty file, a repeated column name, a row with more cells than the
    header or a quote never closed is a DataError naming the line."""
    path = Path(path)
    reader = csv.reader(io.StringIO(read_text(path, encoding), newline=""), delimiter=sep, strict=True)
    rows, lines, start = [], [], 1
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: the file is empty; expected a header row", path=path, reason="bad_table")
        repeated = sorted({c for c in header if header.count(c) > 1})
        if repeated:
            raise DataError(f"{path}, line 1: column(s) {repeated} appear more than once", path=path,
                            reason="bad_table")
        start = reader.line_num + 1
        for cells in reader:
            if cells and len(cells) > len(header):
                raise DataError(f"{path}, line {start}: {len(cells)} cells, but the header has {len(header)} "
                                "columns (an unquoted comma?)", path=path, reason="bad_table")
            if cells:
                rows.append(dict(zip(header, cells + [""] * (len(header) - len(cells)))))
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as err:
        hint = "; a quote opened here is never closed" if "end of data" in str(err) else ""
        raise DataError(f"{path}, line {start}: cannot parse CSV ({err}){hint}", path=path, reason="bad_table") from None
    table = Table(str(path), header, rows, lines)
    table.require(required_columns)
    return table


def _json_error(path, line: int, err: json.JSONDecodeError) -> DataError:
    return DataError(f"{path}, line {line}: not valid JSON ({err.msg} at column {err.colno})", path=path,
                     reason="bad_table")


def read_json(path, *, encoding: str = "utf-8"):
    """A whole JSON document; a syntax error names the file, line and column."""
    text = read_text(path, encoding)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise _json_error(path, err.lineno, err) from None


def read_jsonl(path, *, encoding: str = "utf-8") -> Table:
    """JSON Lines (one object per line; blank lines ignored) as a Table; a .json file holding a
    list of objects is read too (its rows are then named "row N"). A line that is not valid JSON
    or not an object is a DataError naming the line."""
    path = Path(path)
    text = read_text(path, encoding)
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        items = read_json(path, encoding=encoding)
        numbered = [(None, item) for item in items]
    else:
        numbered = []
        for n, line in enumerate(text.split("\n"), start=1):  # "\n" only: JSON text may hold U+2028
            if line.strip():
                try:
                    numbered.append((n, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise _json_error(path, n, err) from None
    for i, (n, item) in enumerate(numbered):
        if not isinstance(item, dict):
            place = f"line {n}" if n is not None else f"row {i + 1}"
            raise DataError(f"{path}, {place}: expected a JSON object {{\"key\": value, ...}}, got {_kind(item)}",
                            path=path, reason="bad_table")
    rows = [item for _, item in numbered]
    lines = None if numbered and numbered[0][0] is None else [n for n, _ in numbered]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return Table(str(path), columns, rows, lines, field_word="field")


def read_reports(path, *, encoding: str = "utf-8", bad: BadItems | None = None) -> list[str]:
    """The reports of a `medvlm label` input: a .txt file (one report per line, blank lines
    ignored), .jsonl/.ndjson (a "report" or "text" field per line) or .csv (a "Reports",
    "report" or "text" column). A row whose report is missing or not text is a DataError naming
    file, line and field; with `bad` it is named there and left out instead (the file itself
    missing or without a report column is always an error)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        table = read_jsonl(path, encoding=encoding)

        def report_of(i: int) -> str:
            key = next((k for k in REPORT_KEYS if k in table.rows[i]), None)
            if key is None:
                raise DataError(f"{table.where(i)}: no 'report' or 'text' field (fields: "
                                f"{', '.join(table.rows[i])})", path=path, reason="missing_field")
            return table.text(i, key)
    elif suffix == ".csv":
        table = read_csv(path, encoding=encoding)
        column = next((c for c in REPORT_COLUMNS if c in table.columns), None)
        if column is None:
            raise DataError(f"{path}: no report column; expected one of {', '.join(REPORT_COLUMNS)}, "
                            f"found: {', '.join(table.columns) or '(none)'}", path=path, reason="missing_column")

        def report_of(i: int) -> str:
            return table.text(i, column)
    else:
        return [line.rstrip("\r") for line in read_text(path, encoding).split("\n") if line.strip()]
    if bad is None:
        return [report_of(i) for i in range(len(table))]
    results = (bad.attempt(table.where(i), lambda i=i: report_of(i)) for i in range(len(table)))
    return [report for ok, report in results if ok]


# --------------------------------------------------------------------------- any source


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        return "hf"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith((".tsv", ".tsv.gz")):
        return "tsv"
    if name.endswith((".jsonl", ".jsonl.gz", ".json", ".ndjson")):
        return "jsonl"
    raise DataError(f"{path}: cannot tell the table format from the name; expected .csv, .tsv, .jsonl or a "
                    "dataset saved with save_to_disk (or set format)", path=path,
                    reason="missing_file" if not path.exists() else "bad_table")


def read_source(source, fmt: str = "auto", *, encoding: str = "utf-8") -> tuple[Path | None, list[Table]]:
    """-> (the folder relative paths start from, or None for a datasets object; the Tables: one,
    or one per split of a DatasetDict). `source`: a CSV/TSV/JSONL path, a folder saved with
    `save_to_disk`, or a `datasets.Dataset` / `DatasetDict`."""
    import datasets

    if fmt not in FORMATS:
        raise UserError(f"format must be one of {FORMATS}, got {fmt!r}")
    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        return None, _hf_tables(source, "<datasets object>")
    path = Path(source)
    fmt = _format_of(path) if fmt == "auto" else fmt
    if fmt in ("csv", "tsv"):
        return path.parent, [read_csv(path, sep="," if fmt == "csv" else "\t", encoding=encoding)]
    if fmt == "jsonl":
        return path.parent, [read_jsonl(path, encoding=encoding)]
    if not path.exists():
        raise DataError(f"{path}: dataset folder not found", path=path, reason="missing_file")
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as err:  # datasets raises FileNotFoundError/ValueError variants
        raise DataError(f"{path}: not a dataset saved with save_to_disk ({err})", path=path,
                        reason="bad_table") from None
    return path, _hf_tables(ds, str(path))


def _hf_tables(ds, name: str) -> list[Table]:
    import datasets

    parts = list(ds.items()) if isinstance(ds, datasets.DatasetDict) else [(None, ds)]
    tables = []
    for key, part in parts:
        # Image features: read the stored path/bytes, not a decoded PIL image.
        for col, feature in part.features.items():
            if isinstance(feature, datasets.Image) and feature.decode:
                part = part.cast_column(col, datasets.Image(decode=False))
        tables.append(Table(name, list(part.column_names), part.to_list(), None, split=key))
    return tables


# --------------------------------------------------------------------------- records from a table


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


def _check_columns(tables: list[Table], wanted: dict, labels) -> None:
    columns = list(dict.fromkeys(c for table in tables for c in table.columns))
    missing = [f"{opt}={col!r}" for opt, col in wanted.items() if col is not None and col not in columns]
    missing += [f"label column {col!r}" for col in labels or () if col is not None and col not in columns]
    if missing:
        name = tables[0].name if tables else "table"
        raise DataError(f"{name}: no column for {', '.join(missing)}; the table has columns {columns}",
                        path=name, reason="missing_column")


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
    encoding: str = "utf-8",
    split_fractions=(0.8, 0.1, 0.1),
    split_seed: int = 0,
    clean_text: bool = False,
    empty_reports: str = "skip",
    require_images: bool = True,
    verify_images: bool = False,
    allow_outside_root: bool = False,
) -> list[dict]:
    """Records from a CSV/TSV/JSONL file, a dataset folder saved with save_to_disk, or a
    `datasets.Dataset` / `DatasetDict` object, through a column mapping.

    Columns: `image_column` (required; a path relative to `image_root`; in a dataset also an
    Image feature or an array), `text_column` (the target; None: text ""), `split_column`
    (values train/val/validate/validation/dev/test, any case), `study_column` (default: the
    image value), `subject_column` (default: the study id), `view_column`, `findings_column`,
    `impression_column` (text defaults to findings, else impression, when `text_column` is
    None), `label_columns` ("chexpert" for columns named like the 14 observations, a list of 14
    column names in CHEXPERT_OBSERVATIONS order, or a dict observation -> column; cells
    1/0/-1/blank). With `question_column` and `answer_column` the records are VQA records (text
    = answer; `answer_type_column` closed/open, default "open"; `qid_column`, default the row
    number). Text cells must be text: a number, list or object there is a bad row.

    image_root: base of image paths (default: the table's folder); a path that is absolute or
      leads out of it (symlinks followed) is a bad row unless `allow_outside_root` (data.allow_outside_root).
    split: without `split_column`, a DatasetDict's keys are the splits; otherwise `hash_split`
      of the subject (else study, else image) id with `split_fractions` (train, validation,
      test; default 0.8/0.1/0.1) and `split_seed`.
    encoding: of a CSV/JSONL file (default UTF-8, with or without a byte-order mark).
    clean_text: pass text columns through `clean_report` (whitespace, de-identification tokens).
    empty_reports: "skip" (default) leaves out report rows whose target text is empty, counted
      and logged; "keep" keeps them with text "" (e.g. for an image classifier).
    require_images / verify_images: check each image path exists (and decodes).
    """
    splits = check_split_arg(split)
    split_fractions = check_fractions(split_fractions)
    if empty_reports not in EMPTY_REPORTS:
        raise UserError(f"empty_reports must be one of {EMPTY_REPORTS}, got {empty_reports!r}")
    labels = _label_columns(label_columns)
    base, tables = read_source(source, format, encoding=encoding)
    wanted = {
        "image_column": image_column, "text_column": text_column, "split_column": split_column,
        "study_column": study_column, "subject_column": subject_column, "view_column": view_column,
        "findings_column": findings_column, "impression_column": impression_column,
        "question_column": question_column, "answer_column": answer_column,
        "answer_type_column": answer_type_column, "qid_column": qid_column,
    }
    _check_columns(tables, wanted, labels)
    if (question_column is None) != (answer_column is None):
        raise UserError("VQA tables need both question_column and answer_column")
    root = Path(image_root) if image_root is not None else base
    guard = PathGuard(root, allow_outside_root) if root is not None else None
    log = SkipLog(on_error, source=f"tabular({tables[0].name if tables else source})")
    skip_empty = empty_reports == "skip" and question_column is None and any(
        (text_column, findings_column, impression_column))
    records = []
    for table in tables:
        if splits is not None and split_column is None and table.split is not None and canonical_split(
                table.split, where=table.name) not in splits:
            continue  # a DatasetDict split that was not asked for
        for i in range(len(table)):
            try:
                record = _row_record(table, i, **wanted, labels=labels, guard=guard, fractions=split_fractions,
                                     seed=split_seed, clean_text=clean_text)
                if splits is not None and record["split"] not in splits:
                    continue
                if skip_empty and not record["text"]:
                    log.drop("empty_report")
                    continue
                if isinstance(record["image"], str) and (require_images or verify_images):
                    check_image_file(record["image"], decode=verify_images)
            except DataError as err:
                log.skip(err)
                continue
            records.append(record)
    return log.finish(records)


def _row_split(table: Table, i: int, split_column, subject_id: str, fractions, seed) -> str:
    if split_column is not None:
        value = table.text(i, split_column, numbers=True)
        if not value:
            raise DataError(f"{table.where(i, split_column)}: empty; expected a split name",
                            path=table.name, reason="bad_split")
        return canonical_split(value, where=table.where(i, split_column))
    if table.split is not None:
        return canonical_split(table.split, where=table.where(i))
    return hash_split(subject_id, fractions, seed)


def _vqa_fields(table: Table, i: int, question_column, answer_column, answer_type_column, qid_column) -> dict:
    question = table.text(i, question_column)
    answer = table.text(i, answer_column, numbers=True)
    if not answer or not question:
        raise DataError(f"{table.where(i)}: empty question or answer", path=table.name, reason="missing_field")
    answer_type = "open"
    if answer_type_column is not None and table.text(i, answer_type_column):
        answer_type = table.text(i, answer_type_column).lower()
        if answer_type not in ("closed", "open"):
            raise DataError(f"{table.where(i, answer_type_column)}: {table.rows[i][answer_type_column]!r}; "
                            "expected closed or open", path=table.name, reason="bad_field")
    qid = table.text(i, qid_column, numbers=True) if qid_column is not None else str(i + 1)
    return {"question": question, "answer": answer, "answer_type": answer_type, "qid": qid}


def _row_record(table: Table, i: int, *, image_column, text_column, split_column, study_column,
                subject_column, view_column, findings_column, impression_column, question_column,
                answer_column, answer_type_column, qid_column, labels, guard, fractions, seed,
                clean_text) -> dict:
    def text(column, clean: bool = clean_text) -> str:
        value = table.text(i, column) if column is not None else ""
        return clean_report(value) if clean and value else value

    image, image_key = _image(table, i, image_column, guard)
    findings, impression = text(findings_column), text(impression_column)
    target = text(text_column) if text_column else (findings or impression)
    study_id = (table.text(i, study_column, numbers=True) if study_column else "") or image_key
    subject_id = (table.text(i, subject_column, numbers=True) if subject_column else "") or study_id
    row_split = _row_split(table, i, split_column, subject_id, fractions, seed)
    label_values = None
    if labels is not None:
        label_values = [math.nan if col is None else
                        parse_label(table.rows[i].get(col), where=table.where(i, col)) for col in labels]
    extra = {}
    if question_column is not None:
        extra = _vqa_fields(table, i, question_column, answer_column, answer_type_column, qid_column)
        target = extra["answer"]
    view = text(view_column, False).upper()
    return make_record(image=image, text=target, findings=findings, impression=impression,
                       study_id=study_id, subject_id=subject_id, view=view, split=row_split,
                       labels=label_values, **extra)


def _image(table: Table, i: int, column, guard: PathGuard | None):
    """-> (image for the record: a path str or an array, a key for ids/hashing)."""
    value, where = table.rows[i].get(column), table.where(i, column)
    if isinstance(value, dict):  # datasets Image(decode=False): {"bytes": ..., "path": ...}
        path, data = value.get("path"), value.get("bytes")
        if path:
            try:
                resolved = guard(path, where=where) if guard is not None else Path(path)
            except DataError:
                if not data:
                    raise
                resolved = None  # the bytes are in the table: no file outside the root is opened
            if resolved is not None and (resolved.exists() or not data):
                return str(resolved), str(path)
        if data:
            return load_image(data), str(path or table.where(i))
        raise DataError(f"{where}: image has neither a path nor bytes", path=table.name, reason="missing_field")
    if isinstance(value, (list, np.ndarray)) and table.field_word == "column":  # pixels stored in a dataset
        return load_image(np.asarray(value)), table.where(i)
    rel = table.text(i, column)
    if not rel:
        raise DataError(f"{where}: empty; expected an image path", path=table.name, reason="missing_field")
    return str(guard(rel, where=where) if guard is not None else Path(rel)), rel
