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
A row may hold several images (several image columns, or a cell with a list), rows sharing a
study id form one study under ``studies="frontal"`` / ``"all_views"``, and a study's prior comes
from `prior_study_column` or from `study_date_column` + `subject_column` (see `load_tabular`).
"""

from __future__ import annotations

import ast
import csv
import datetime
import gzip
import io
import json
import math
from pathlib import Path

import numpy as np

from medvlm.data.images import check_image_file, load_image
from medvlm.data.records import (
    DataError, PathGuard, SkipLog, as_prior, canonical_split, check_fractions, check_split_arg, check_studies,
    hash_split, latest_priors, make_image, make_record, parse_label, shape_study,
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
    named = [(opt, col) for opt, cols in wanted.items() for col in (cols if isinstance(cols, list) else [cols])]
    missing = [f"{opt}={col!r}" for opt, col in named if col is not None and col not in columns]
    missing += [f"label column {col!r}" for col in labels or () if col is not None and col not in columns]
    if missing:
        name = tables[0].name if tables else "table"
        raise DataError(f"{name}: no column for {', '.join(missing)}; the table has columns {columns}",
                        path=name, reason="missing_column")


def _image_spec(image_column, view_column, image_views) -> tuple[list, list]:
    """(the image columns, and for each the source of its views: ("fixed", name), ("column",
    name) or None) from the options; an inconsistent combination is a UserError."""
    columns = [image_column] if isinstance(image_column, str) else list(image_column or [])
    if not columns or not all(isinstance(c, str) for c in columns):
        raise UserError(f"image_column must be a column name or a list of them, got {image_column!r}")
    if image_views is not None:
        if view_column is not None or len(list(image_views)) != len(columns):
            raise UserError(f"image_views names one view per image column ({len(columns)}) and replaces "
                            f"view_column; got image_views={image_views!r}, view_column={view_column!r}")
        return columns, [("fixed", str(v).strip().upper()) for v in image_views]
    if view_column is None:
        return columns, [None] * len(columns)
    views = [view_column] if isinstance(view_column, str) else list(view_column)
    if len(views) != len(columns):
        raise UserError(f"view_column: give one view column per image column ({len(columns)} image columns "
                        f"{columns}), got {view_column!r}")
    return columns, [("column", v) for v in views]


def _study_options(studies, prior_study_column, study_date_column, study_time_column, subject_column,
                   question_column) -> bool:
    """Check the study options; True when priors are to be linked."""
    priors = prior_study_column is not None or study_date_column is not None
    check_studies(studies, priors)
    if prior_study_column is not None and study_date_column is not None:
        raise UserError("give prior_study_column or study_date_column (+ subject_column), not both")
    if study_date_column is not None and subject_column is None:
        raise UserError("study_date_column needs subject_column: a prior is the same patient's earlier study")
    if study_time_column is not None and study_date_column is None:
        raise UserError("study_time_column needs study_date_column")
    if priors and question_column is not None:
        raise UserError("VQA tables (question_column) have no prior studies")
    return priors


def load_tabular(
    source,
    *,
    split=None,
    on_error: str = "raise",
    image_column="image",
    text_column: str | None = "text",
    split_column: str | None = None,
    study_column: str | None = None,
    subject_column: str | None = None,
    view_column=None,
    image_views=None,
    studies: str = "per_image",
    prior_study_column: str | None = None,
    study_date_column: str | None = None,
    study_time_column: str | None = None,
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
    Image feature or an array; or a list of columns, one image each, e.g. ["frontal",
    "lateral"]; a cell may also hold a list of images: a JSON list, a JSON list in a CSV cell
    such as ``["a.png", "b.png"]``, or a dataset list column), `text_column` (the target; None:
    text ""), `split_column` (values train/val/validate/validation/dev/test, any case),
    `study_column` (default: the first image value), `subject_column` (default: the study id),
    `view_column` (a view per image: with several image columns a list of as many view
    columns; a cell holding a list gives the views of a list of images), `image_views` (instead
    of view columns, a fixed view per image column, e.g. ["PA", "LATERAL"]), `findings_column`,
    `impression_column` (text defaults to findings, else impression, when `text_column` is
    None), `label_columns` ("chexpert" for columns named like the 14 observations, a list of 14
    column names in CHEXPERT_OBSERVATIONS order, or a dict observation -> column; cells
    1/0/-1/blank). With `question_column` and `answer_column` the records are VQA records (text
    = answer; `answer_type_column` closed/open, default "open"; `qid_column`, default the row
    number; one record per question). Text cells must be text: a number, list or object there
    is a bad row. An empty cell in one of several image columns is a view the study lacks.

    studies: "per_image" (default: one record per image, as before), "frontal" or "all_views"
      (one record per study: the rows sharing a study id are one study, its images those of all
      its rows, its report that of its first row); see `medvlm.data.records.STUDIES`.
    prior_study_column: a column naming the study id of the row's previous study (blank: none);
      or study_date_column (ISO dates or times such as 2020-01-31 or 2020-01-31T08:15, or
      YYYYMMDD[HHMM[SS]]) with `subject_column` (and optionally study_time_column, HH:MM[:SS] or
      HHMMSS): the prior is the same subject's latest strictly earlier study. Either way it must
      be in the study's own split, else the study has no prior. They need studies="frontal" or
      "all_views".
    image_root: base of image paths (default: the table's folder); a path that is absolute or
      leads out of it (symlinks followed) is a bad row unless `allow_outside_root` (data.allow_outside_root).
    split: without `split_column`, a DatasetDict's keys are the splits; otherwise `hash_split`
      of the subject (else study, else image) id with `split_fractions` (train, validation,
      test; default 0.8/0.1/0.1) and `split_seed`.
    encoding: of a CSV/JSONL file (default UTF-8, with or without a byte-order mark).
    clean_text: pass text columns through `clean_report` (whitespace, de-identification tokens).
    empty_reports: "skip" (default) leaves out report rows whose target text is empty, counted
      and logged; "keep" keeps them with text "" (e.g. for an image classifier). A study with an
      empty report can still be the prior of another.
    require_images / verify_images: check each image path exists (and decodes); a bad image is
      left out of its study, and a study left without images is left out.
    """
    splits = check_split_arg(split)
    split_fractions = check_fractions(split_fractions)
    if empty_reports not in EMPTY_REPORTS:
        raise UserError(f"empty_reports must be one of {EMPTY_REPORTS}, got {empty_reports!r}")
    image_columns, view_sources = _image_spec(image_column, view_column, image_views)
    priors = _study_options(studies, prior_study_column, study_date_column, study_time_column, subject_column,
                            question_column)
    labels = _label_columns(label_columns)
    base, tables = read_source(source, format, encoding=encoding)
    wanted = {
        "text_column": text_column, "split_column": split_column,
        "study_column": study_column, "subject_column": subject_column,
        "findings_column": findings_column, "impression_column": impression_column,
        "question_column": question_column, "answer_column": answer_column,
        "answer_type_column": answer_type_column, "qid_column": qid_column,
    }
    links = {"prior_study_column": prior_study_column, "study_date_column": study_date_column,
             "study_time_column": study_time_column}
    _check_columns(tables, {"image_column": image_columns, **wanted, **links,
                            "view_column": [v for kind, v in filter(None, view_sources) if kind == "column"]}, labels)
    if (question_column is None) != (answer_column is None):
        raise UserError("VQA tables need both question_column and answer_column")
    root = Path(image_root) if image_root is not None else base
    guard = PathGuard(root, allow_outside_root) if root is not None else None
    log = SkipLog(on_error, source=f"tabular({tables[0].name if tables else source})")
    skip_empty = empty_reports == "skip" and question_column is None and any(
        (text_column, findings_column, impression_column))
    rows = _table_rows(tables, splits, split_column, log, wanted=wanted, images=(image_columns, view_sources),
                       links=links, labels=labels, guard=guard, fractions=split_fractions, seed=split_seed,
                       clean_text=clean_text)
    grouped = _group_studies(rows, by_row=studies == "per_image" or question_column is not None, log=log)
    loaded = _checked_studies(grouped, splits, skip_empty and not priors, require_images or verify_images,
                              verify_images, log)
    prior_of = _prior_ids(grouped, prior_study_column, log) if priors else {}
    records = []
    for key, record in loaded.items():
        prior_key = prior_of.get(key)
        if prior_key in loaded:
            record = {**record, "prior": as_prior(loaded[prior_key])}
        if skip_empty and not record["text"]:
            log.drop("empty_report")
            continue
        records += shape_study(record, studies, log)
    return log.finish(records)


def _table_rows(tables: list[Table], splits, split_column, log: SkipLog, **row_options) -> list[tuple]:
    """(record of the row, its study's moment or None, the prior study id its row names or None,
    where) for every good row; a bad row is counted in `log` (or raises)."""
    rows = []
    for table in tables:
        if splits is not None and split_column is None and table.split is not None and canonical_split(
                table.split, where=table.name) not in splits:
            continue  # a DatasetDict split that was not asked for
        for i in range(len(table)):
            try:
                rows.append((_row_record(table, i, **row_options), *_row_links(table, i, **row_options["links"]),
                             table.where(i)))
            except DataError as err:
                log.skip(err)
    return rows


def _group_studies(rows: list[tuple], *, by_row: bool, log: SkipLog) -> dict:
    """{key: [record, moment, prior id]}: one per row (`by_row`), else one per study id, the
    images of all its rows joined (its report, split and subject: those of its first row; a
    later row of another split is a bad row)."""
    grouped, images = {}, {}
    for n, (record, moment, prior_ref, where) in enumerate(rows):
        key = n if by_row else record["study_id"]
        if key not in grouped:
            grouped[key], images[key] = [record, moment, prior_ref], list(record["images"])
            continue
        first = grouped[key][0]
        if record["split"] != first["split"]:
            log.skip(DataError(f"{where}: study {record['study_id']!r} is in split {record['split']!r} here but "
                               f"{first['split']!r} on an earlier row", reason="bad_split"))
            continue
        images[key] += record["images"]
        if moment is not None and (grouped[key][1] is None or moment < grouped[key][1]):
            grouped[key][1] = moment
        grouped[key][2] = grouped[key][2] or prior_ref
    for key, entry in grouped.items():
        if len(images[key]) > len(entry[0]["images"]):
            fields = {k: v for k, v in entry[0].items() if k not in ("images", "image", "view")}
            entry[0] = make_record(images=images[key], **fields)
    return grouped


def _checked_studies(grouped: dict, splits, skip_empty: bool, check: bool, decode: bool, log: SkipLog) -> dict:
    """{key: record} of the asked-for splits with their usable images (`check`: each path exists,
    `decode`: and decodes); a bad image is counted and left out, a study without images goes.
    With `skip_empty` a study with an empty report is dropped first (no image of it is read)."""
    loaded = {}
    for key, (record, _, _) in grouped.items():
        if splits is not None and record["split"] not in splits:
            continue
        if skip_empty and not record["text"]:
            log.drop("empty_report")
            continue
        kept = []
        for image in record["images"]:
            try:
                if check and isinstance(image["image"], str):
                    check_image_file(image["image"], decode=decode)
                kept.append(image)
            except DataError as err:
                log.skip(err)
        if len(kept) == len(record["images"]):
            loaded[key] = record
        elif kept:
            loaded[key] = {**record, "images": kept, "image": kept[0]["image"], "view": kept[0]["view"]}
    return loaded


def _prior_ids(grouped: dict, prior_study_column, log: SkipLog) -> dict:
    """{study key: its prior's key or None}: the study its row names (`prior_study_column`; a
    name that is no study of the table is a bad item, and the study keeps no prior), or by
    `latest_priors` from the study moments. A prior in another split is none."""
    if prior_study_column is None:
        return latest_priors((key, record["subject_id"], record["split"], moment)
                             for key, (record, moment, _) in grouped.items())
    prior_of = {}
    for key, (record, _, prior_ref) in grouped.items():
        if not prior_ref:
            continue
        ref, where = prior_ref
        if ref not in grouped or ref == key:
            what = "the study itself" if ref == key else "not a study of the table"
            log.skip(DataError(f"{where}: prior study {ref!r} is {what}", reason="missing_prior"))
        elif grouped[ref][0]["split"] == record["split"]:
            prior_of[key] = ref
    return prior_of


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


def _row_record(table: Table, i: int, *, wanted: dict, images, links, labels, guard, fractions, seed,
                clean_text) -> dict:
    """The record of one row (its images: every image column, each cell one image or a list)."""
    def text(column, clean: bool = clean_text) -> str:
        value = table.text(i, column) if column is not None else ""
        return clean_report(value) if clean and value else value

    row_images, image_key = _row_images(table, i, *images, guard)
    findings, impression = text(wanted["findings_column"]), text(wanted["impression_column"])
    target = text(wanted["text_column"]) if wanted["text_column"] else (findings or impression)
    study_column, subject_column = wanted["study_column"], wanted["subject_column"]
    study_id = (table.text(i, study_column, numbers=True) if study_column else "") or image_key
    subject_id = (table.text(i, subject_column, numbers=True) if subject_column else "") or study_id
    row_split = _row_split(table, i, wanted["split_column"], subject_id, fractions, seed)
    label_values = None
    if labels is not None:
        label_values = [math.nan if col is None else
                        parse_label(table.rows[i].get(col), where=table.where(i, col)) for col in labels]
    extra = {}
    if wanted["question_column"] is not None:
        extra = _vqa_fields(table, i, wanted["question_column"], wanted["answer_column"],
                            wanted["answer_type_column"], wanted["qid_column"])
        target = extra["answer"]
    return make_record(images=row_images, text=target, findings=findings, impression=impression,
                       study_id=study_id, subject_id=subject_id, split=row_split, labels=label_values, **extra)


def _row_links(table: Table, i: int, *, prior_study_column, study_date_column, study_time_column) -> tuple:
    """(the row's study moment or None, (prior study id, where) or None) for the prior rule."""
    prior_ref = None
    if prior_study_column is not None:
        ref = table.text(i, prior_study_column, numbers=True)
        prior_ref = (ref, table.where(i, prior_study_column)) if ref else None
    if study_date_column is None:
        return None, prior_ref
    moment = _moment(table.rows[i].get(study_date_column), table.where(i, study_date_column), table.name)
    if study_time_column is not None and not _blank(table.rows[i].get(study_time_column)):
        moment += _time_of_day(table.rows[i][study_time_column], table.where(i, study_time_column), table.name)
    return moment, prior_ref


_DIGIT_DATES = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}


def _moment(value, where: str, name: str) -> datetime.datetime:
    """A study date cell -> datetime: ISO 8601 text (2020-01-31, 2020-01-31T08:15:00, a time zone
    is turned to UTC) or digits YYYYMMDD[HHMM[SS]] (text or a number)."""
    if _blank(value):
        raise DataError(f"{where}: empty; expected the study date", path=name, reason="bad_field")
    shown = str(int(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and float(value).is_integer() else str(value).strip()
    try:
        if shown.isdigit() and len(shown) in _DIGIT_DATES:
            return datetime.datetime.strptime(shown, _DIGIT_DATES[len(shown)])
        moment = datetime.datetime.fromisoformat(shown)
    except ValueError:
        raise DataError(f"{where}: {value!r} is not a date (expected e.g. 2020-01-31, 2020-01-31T08:15 or "
                        "20200131)", path=name, reason="bad_field") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return moment


def _time_of_day(value, where: str, name: str) -> datetime.timedelta:
    """A study time cell (HH:MM[:SS[.f]] or HHMMSS[.f], as DICOM's StudyTime) -> time since midnight."""
    shown = str(value).strip()
    try:
        if ":" in shown:
            t = datetime.time.fromisoformat(shown)
            return datetime.timedelta(hours=t.hour, minutes=t.minute, seconds=t.second, microseconds=t.microsecond)
        number = float(shown)
        whole = int(number)
        if not 0 <= number < 240000 or whole % 100 >= 60 or whole // 100 % 100 >= 60:
            raise ValueError(shown)
        return datetime.timedelta(hours=whole // 10000, minutes=whole // 100 % 100, seconds=number - whole // 100 * 100)
    except ValueError:
        raise DataError(f"{where}: {value!r} is not a time of day (expected e.g. 08:15:00 or 081500)",
                        path=name, reason="bad_field") from None


def _row_images(table: Table, i: int, columns: list, view_sources: list, guard: PathGuard | None):
    """-> ([{"image", "view"}] of the row, a key for ids/hashing: its first image's). With several
    image columns an empty cell is a view the study lacks; a row with no image is a bad row."""
    images, keys = [], []
    for column, source in zip(columns, view_sources):
        values = _cell_images(table, i, column, optional=len(columns) > 1)
        views = _cell_views(table, i, source, len(values))
        for value, view in zip(values, views):
            image, key = _image(table, i, column, guard, value)
            images.append(make_image(image, view))
            keys.append(key)
    if not images:
        raise DataError(f"{table.where(i)}: no image in column(s) {columns}", path=table.name,
                        reason="missing_field")
    return images, keys[0]


def _listed(value):
    """A cell that holds a list: the list; a CSV cell of JSON (or Python) list text is parsed.
    None for anything else (text that only starts like a list, e.g. a file "[1].png", is text)."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            try:
                value = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                return None
    return value if isinstance(value, list) else None


def _cell_images(table: Table, i: int, column, *, optional: bool) -> list:
    """The image values of one cell: [value], the items of a list of paths or images, [] for an
    empty cell where that is allowed (one of several image columns)."""
    value = table.rows[i].get(column)
    if optional and _blank(value):
        return []
    items = _listed(value)
    if items is None or (table.field_word == "column" and not all(isinstance(v, (str, dict)) for v in items)):
        return [value]  # one image (in a dataset a list can also be pixels)
    if not items:
        raise DataError(f"{table.where(i, column)}: an empty list; expected image paths", path=table.name,
                        reason="missing_field")
    return items


def _cell_views(table: Table, i: int, source, n: int) -> list[str]:
    """The views of the `n` images of one cell: fixed, from a view cell (one view, or a list of
    `n`), or "" (unknown)."""
    if source is None:
        return [""] * n
    kind, name = source
    if kind == "fixed":
        return [name] * n
    where = table.where(i, name)
    value = table.rows[i].get(name)
    items = _listed(value)
    if items is None:
        view = table.text(i, name).upper()
        if n > 1 and view:
            raise DataError(f"{where}: one view {view!r} for {n} images; give a list of {n} views",
                            path=table.name, reason="bad_field")
        return [view] * n
    if len(items) != n or not all(isinstance(v, str) for v in items):
        raise DataError(f"{where}: {len(items)} view(s) {items!r} for {n} image(s); expected one view name "
                        "per image", path=table.name, reason="bad_field")
    return [v.strip().upper() for v in items]


def _image(table: Table, i: int, column, guard: PathGuard | None, value=None):
    """-> (image for the record: a path str or an array, a key for ids/hashing); `value`: the
    cell's value, or one item of a cell holding a list."""
    where = table.where(i, column)
    if value is None:
        value = table.rows[i].get(column)
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
    if _blank(value):
        raise DataError(f"{where}: empty; expected an image path", path=table.name, reason="missing_field")
    if not isinstance(value, str):
        raise DataError(f"{where}: expected an image path, got {_kind(value)}", path=table.name, reason="bad_field")
    rel = value.strip()
    return str(guard(rel, where=where) if guard is not None else Path(rel)), rel
