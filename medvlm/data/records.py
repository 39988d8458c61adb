"""The record schema every loader returns, and the bad-input handling they all share.

A record is one study: a plain dict with the keys in `RECORD_KEYS` (VQA records add `VQA_KEYS`):

    images      the study's images, frontal first where there is one: a list of
                {"image": str path or np.ndarray pixels, "view": "PA" / "AP" / "LATERAL" / ...}
    prior       the same patient's previous study, or None: {"study_id", "images" (as above),
                "text", "findings", "impression"} (its report is what the comparison is with)
    image       images[0]["image"], kept for code that reads one image per record
    text        the training target string (report section(s), or the answer for VQA)
    findings    FINDINGS section, "" when absent
    impression  IMPRESSION section, "" when absent
    study_id    str
    subject_id  str (the patient; equal to study_id where a dataset has no patient ids)
    view        images[0]["view"]: "PA", "AP", "LATERAL", "FRONTAL", ... or "" when unknown
    split       "train", "validation" or "test"
    labels      14 floats in `CHEXPERT_OBSERVATIONS` order (1 positive, 0 negative,
                -1 uncertain, NaN not mentioned), or None when the dataset has no labels

Bad input. A loader meets two kinds of problems:

- structural ones (a metadata file or a required column is missing, an option has a value it does
  not know): these always raise `DataError`, because no record could be trusted;
- per-item ones (a missing, empty, truncated or corrupt image, an empty or non-UTF-8 report, a
  row with an unreadable value, an image path that leads out of the dataset's root, see
  `PathGuard`): these raise `DataError` under ``on_error="raise"`` (the
  default), and under ``on_error="skip"`` the item is left out, counted by reason in a `SkipLog`
  and summarised with one ``logging.warning`` when loading ends.

Items a loader leaves out on purpose (a study without the requested report section under
``drop_missing_target=True``, a view that was filtered away) are *dropped*, not skipped: they are
counted separately, never raise, and are logged at INFO level. Every loader returns a
`RecordList`, a plain list that also carries both tallies as ``.skipped`` and ``.dropped``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from medvlm.errors import UserError
from medvlm.observations import CHEXPERT_OBSERVATIONS

logger = logging.getLogger("medvlm.data")

RECORD_KEYS = (
    "images", "prior", "image", "text", "findings", "impression", "study_id", "subject_id", "view", "split", "labels",
)
VQA_KEYS = ("question", "answer", "answer_type", "qid")
SPLITS = ("train", "validation", "test")
ON_ERROR = ("raise", "skip")
# items left out without an error that still deserve a warning (the user may not expect them
# gone), and how the summary says so
WARNED_DROPS = {"empty_report": "{n} row{s} with an empty report skipped"}

# Spellings of split names met in the wild -> our three names.
_SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "validation", "valid": "validation", "validate": "validation",
    "validation": "validation", "dev": "validation",
    "test": "test", "testing": "test",
}


class DataError(UserError):
    """A file, row or field is not what a loader expected (a `UserError`, so the command line
    prints it as one line).

    The message names the file (and row/field where there is one) and what was expected.
    `reason` is a short key (``"missing_image"``, ``"corrupt_image"``, ``"empty_report"``, ...)
    under which `SkipLog` counts the item when ``on_error="skip"``.
    """

    def __init__(self, message: str, *, path=None, reason: str = "invalid"):
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.reason = reason

    def __reduce__(self):  # keep path/reason across process boundaries (prepare workers)
        return (_rebuild_data_error, (str(self), self.path, self.reason))


def _rebuild_data_error(message, path, reason):
    return DataError(message, path=path, reason=reason)


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR:
        raise UserError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    return on_error


class RecordList(list):
    """A list of records that also says what was left out while loading it.

    ``skipped``: Counter of bad items by reason (only non-empty under ``on_error="skip"``);
    ``dropped``: Counter of items left out by a loader option (e.g. ``"missing_target"``).
    """

    def __init__(self, records: Iterable[dict] = (), skipped=None, dropped=None):
        super().__init__(records)
        self.skipped: Counter = Counter(skipped or {})
        self.dropped: Counter = Counter(dropped or {})


class SkipLog:
    """Collects bad items for one loading run; raises or counts them according to `on_error`.

        log = SkipLog(on_error, source="mimic_cxr")
        for row in rows:
            try:
                records.append(build(row))
            except DataError as err:
                log.skip(err)          # re-raises under on_error="raise"
        return log.finish(records)     # RecordList; one logging.warning if anything was left out
    """

    def __init__(self, on_error: str = "raise", source: str = "data", max_examples: int = 3):
        self.on_error = check_on_error(on_error)
        self.source = source
        self.max_examples = max_examples
        self.skipped: Counter = Counter()
        self.dropped: Counter = Counter()
        self.examples: dict[str, list[str]] = {}

    def skip(self, err: DataError) -> None:
        """Raise `err` under ``on_error="raise"``; otherwise count it by its reason."""
        if self.on_error == "raise":
            raise err
        self.skipped[err.reason] += 1
        examples = self.examples.setdefault(err.reason, [])
        if len(examples) < self.max_examples:
            examples.append(str(err))

    def drop(self, reason: str, n: int = 1) -> None:
        """Count `n` items left out on purpose (an option asked for it); never raises."""
        if n:
            self.dropped[reason] += n

    def merge(self, other: SkipLog) -> None:
        self.skipped.update(other.skipped)
        self.dropped.update(other.dropped)
        for reason, examples in other.examples.items():
            mine = self.examples.setdefault(reason, [])
            mine.extend(examples[: self.max_examples - len(mine)])

    def summary(self) -> str:
        parts = []
        if self.skipped:
            parts.append(
                f"skipped {sum(self.skipped.values())} bad item(s): "
                + ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items()))
            )
            for reason, examples in sorted(self.examples.items()):
                parts.extend(f"  e.g. [{reason}] {e}" for e in examples)
        parts.extend(WARNED_DROPS[k].format(n=n, s="" if n == 1 else "s")
                     for k, n in sorted(self.dropped.items()) if k in WARNED_DROPS)
        by_option = {k: n for k, n in self.dropped.items() if k not in WARNED_DROPS}
        if by_option:
            parts.append(
                f"dropped {sum(by_option.values())} item(s) by option: "
                + ", ".join(f"{k}={v}" for k, v in sorted(by_option.items()))
            )
        return "\n".join(parts)

    def finish(self, records: Iterable[dict]) -> RecordList:
        """Wrap `records` in a RecordList carrying the tallies and log the summary once.

        One logging.warning when bad items were skipped (or items in WARNED_DROPS, such as rows
        with an empty report, were left out); logging.info when items were only dropped by
        options (filters are not a problem worth a warning).
        """
        out = RecordList(records, self.skipped, self.dropped)
        if self.skipped or set(self.dropped) & set(WARNED_DROPS):  # bad or missing input: a warning
            logger.warning("%s: loaded %d record(s); %s", self.source, len(out), self.summary())
        elif self.dropped:  # only what the options asked for: for the record
            logger.info("%s: loaded %d record(s); %s", self.source, len(out), self.summary())
        return out


# --------------------------------------------------------------------------- schema helpers


FRONTAL_VIEWS = ("PA", "AP", "FRONTAL", "AP AXIAL", "PA LLD", "AP LLD", "AP RLD", "PA RLD")
LATERAL_VIEWS = ("LATERAL", "LL", "RL", "LAO", "RAO", "LPO", "XTABLE LATERAL")
# the view kinds the model tells apart (index 0 of its view table is "no image in this slot")
VIEW_KINDS = ("frontal", "lateral", "other")


def view_kind(view) -> str:
    """'PA', 'AP', 'Frontal', ... -> 'frontal'; 'LATERAL', 'LL', ... -> 'lateral'; else 'other'
    (an unknown or empty view is 'other', never guessed)."""
    name = str(view or "").strip().upper()
    if name in FRONTAL_VIEWS:
        return "frontal"
    if name in LATERAL_VIEWS:
        return "lateral"
    return "other"


def make_image(image, view: str = "") -> dict:
    """One image of a study: {"image": path or pixels, "view": view name}."""
    return {"image": image, "view": str(view or "")}


def make_prior(*, images: Sequence[dict], text: str, study_id, findings: str = "", impression: str = "",
               **extra) -> dict:
    """The previous study of a record's patient (its images and its report)."""
    if not images:
        raise ValueError("a prior study needs at least one image")
    return {"study_id": str(study_id), "images": [make_image(i["image"], i.get("view", "")) for i in images],
            "text": text, "findings": findings, "impression": impression, **extra}


def frontal_first(images: Sequence[dict]) -> list[dict]:
    """The images in a stable order with the frontal ones first (the model's first slot, and the
    one image of code that reads one)."""
    order = {kind: i for i, kind in enumerate(VIEW_KINDS)}
    return sorted(images, key=lambda image: order[view_kind(image.get("view"))])


def make_record(
    *,
    text: str,
    study_id,
    split: str,
    image=None,
    images: Sequence[dict] | None = None,
    prior: dict | None = None,
    findings: str = "",
    impression: str = "",
    subject_id=None,
    view: str = "",
    labels=None,
    **extra,
) -> dict:
    """One study record in the common schema (ids become str; subject_id defaults to study_id).

    Give `images` (several views) or `image` and `view` (a study of one image); `image` and
    `view` of the record are then those of the first image, frontal first."""
    study_id = str(study_id)
    if images is None:
        if image is None:
            raise ValueError("make_record needs image or images")
        images = [make_image(image, view)]
    elif not images:
        raise ValueError(f"study {study_id}: images is empty")
    images = frontal_first([make_image(i["image"], i.get("view", "")) for i in images])
    record = {
        "images": images,
        "prior": prior,
        "image": images[0]["image"],
        "text": text,
        "findings": findings,
        "impression": impression,
        "study_id": study_id,
        "subject_id": study_id if subject_id is None else str(subject_id),
        "view": images[0]["view"],
        "split": split,
        "labels": labels,
    }
    record.update(extra)
    return record


def study_images(record: dict) -> list[dict]:
    """The record's images ({"image", "view"} each); a record of the old one-image form gives one."""
    images = record.get("images")
    if images:
        return list(images)
    return [make_image(record["image"], record.get("view", ""))]


def frontal_only(record: dict) -> dict:
    """The record with its first frontal image alone (the first image when none is frontal) and
    no prior: the usual single-image protocol."""
    images = study_images(record)
    frontal = [i for i in images if view_kind(i["view"]) == "frontal"] or images
    return {**record, "images": frontal[:1], "prior": None, "image": frontal[0]["image"],
            "view": frontal[0]["view"]}


def one_image_per_record(record: dict) -> list[dict]:
    """One record per image of the study (the old one-image-per-sample form), no prior."""
    return [{**record, "images": [i], "prior": None, "image": i["image"], "view": i["view"]}
            for i in study_images(record)]


def canonical_split(value, *, where: str = "") -> str:
    """'validate', 'val', 'dev', ... -> 'validation'; an unknown name is a DataError."""
    key = str(value).strip().lower()
    if key not in _SPLIT_ALIASES:
        raise DataError(
            f"{where}: unknown split {value!r}; expected one of "
            f"{sorted(set(_SPLIT_ALIASES))}".lstrip(": "),
            reason="bad_split",
        )
    return _SPLIT_ALIASES[key]


def check_split_arg(split) -> tuple[str, ...] | None:
    """The loaders' `split` argument: None (all), a name, or several names -> canonical tuple."""
    if split is None:
        return None
    names = [split] if isinstance(split, str) else list(split)
    try:
        return tuple(canonical_split(s) for s in names)
    except DataError as err:
        raise UserError(f"split: {err}") from None


def hash_split(key, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> str:
    """Deterministic train/validation/test assignment of `key` (a study or patient id).

    ``sha1(f"{seed}:{key}")`` is read as a number u in [0, 1); the key goes to train when
    u < fractions[0], to validation when u < fractions[0] + fractions[1], else to test. The
    result depends on nothing but the key, the fractions and the seed, so adding rows never
    moves an existing key to another split, and all rows sharing a key share a split (hash the
    patient id to keep splits patient-disjoint).
    """
    fractions = check_fractions(fractions)
    digest = hashlib.sha1(f"{seed}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "validation"
    return "test"


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise UserError(
            f"split fractions must be three non-negative numbers (train, validation, test) "
            f"summing to 1, got {fractions}"
        )
    return fractions


def parse_label(value, *, where: str) -> float:
    """One CheXpert label cell -> 1.0 / 0.0 / -1.0, or NaN for blank (not mentioned)."""
    if value is None:
        return math.nan
    if isinstance(value, float) and math.isnan(value):
        return math.nan
    if isinstance(value, str):
        value = value.strip()
        if value == "" or value.lower() in ("nan", "none", "null"):
            return math.nan
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if number not in (1.0, 0.0, -1.0):
        raise DataError(
            f"{where}: label value {value!r} is not one of 1, 0, -1 or blank", reason="bad_label"
        )
    return number


def labels_from_mapping(row, columns: Sequence[str], *, where: str) -> list[float]:
    """Labels in CHEXPERT_OBSERVATIONS order from `row[column]` for the 14 given column names."""
    if len(columns) != len(CHEXPERT_OBSERVATIONS):
        raise UserError(f"need {len(CHEXPERT_OBSERVATIONS)} label columns, got {len(columns)}")
    return [parse_label(row[c], where=f"{where}, column {c!r}") for c in columns]


# --------------------------------------------------------------------------- paths from files


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class PathGuard:
    """Paths read from a dataset's own files (a CSV cell, a JSON field, an id that names a folder),
    joined to the dataset's root so that they stay inside it.

        guard = PathGuard(root)                 # allow_outside=True: data.allow_outside_root
        image = guard(rel, where="t.csv, line 7, column 'image'")   # root / rel, or a DataError

    A path that is absolute, or that leads out of the root once `..` and symbolic links are
    resolved (a link inside the root pointing elsewhere counts), is a DataError (reason
    "outside_root", so ``on_error="skip"`` can count it) naming `where` and the path. Folders
    are resolved once each, so a large dataset costs about one `lstat` per path.
    """

    def __init__(self, root, allow_outside: bool = False):
        self.root = Path(root)
        self.allow_outside = bool(allow_outside)
        self._real_root: str | None = None
        self._folders: dict[str, bool] = {}

    def __call__(self, rel, *, where: str, what: str = "image path") -> Path:
        rel_path = Path(str(rel))
        if rel_path.is_absolute():
            if self.allow_outside:
                return rel_path
            raise DataError(f"{where}: {what} {str(rel)!r} is absolute; paths in a dataset's files must be "
                            f"relative to its root {self.root} (data.allow_outside_root: true allows it)",
                            path=str(rel), reason="outside_root")
        path = self.root / rel_path
        if not self.allow_outside and not self._inside(path, ".." in rel_path.parts):
            raise DataError(f"{where}: {what} {str(rel)!r} leads outside the dataset root {self.root} "
                            "(through '..' or a symbolic link; data.allow_outside_root: true allows it)",
                            path=str(rel), reason="outside_root")
        return path

    def _inside(self, path: Path, dotdot: bool) -> bool:
        if self._real_root is None:
            self._real_root = os.path.realpath(self.root)
            self._folders[str(self.root)] = self._real_root
        if dotdot:
            return _within(os.path.realpath(path), self._real_root)
        return _within(self._real(str(path), folder=False), self._real_root)

    def _real(self, path: str, folder: bool = True) -> str:
        """realpath(path), with the real paths of folders cached: a folder that is no link is its
        real parent plus its name (one lstat), so a whole dataset costs about one lstat per path."""
        if path in self._folders:
            return self._folders[path]
        parent, name = os.path.split(path)
        if os.path.islink(path) or not name or parent == path:
            real = os.path.realpath(path)
        else:
            real = os.path.join(self._real(parent), name)
        if folder:
            self._folders[path] = real
        return real


# --------------------------------------------------------------------------- studies and priors

# How a loader turns a study into records (the `studies` option of every study loader):
#   "per_image"  one record per image, no prior (the old one-image-per-sample form)
#   "frontal"    one record per study holding its first frontal image (studies without one are
#                dropped, counted as "no_frontal"); the usual single-image protocol
#   "all_views"  one record per study holding all its (kept) images, frontal first
STUDIES = ("per_image", "frontal", "all_views")


def check_studies(studies: str, priors: bool = False) -> str:
    """The `studies` option, checked; priors need a study form (they make no sense per image)."""
    if studies not in STUDIES:
        raise UserError(f"studies must be one of {STUDIES}, got {studies!r}")
    if priors and studies == "per_image":
        raise UserError("priors need studies='frontal' or 'all_views' (a per-image record has no prior)")
    return studies


def first_frontal(images: Sequence[dict]) -> list[dict]:
    """[the first frontal image] of `images`, or [] when none is frontal."""
    return [i for i in images if view_kind(i.get("view")) == "frontal"][:1]


def shape_study(record: dict, studies: str, log: SkipLog | None = None) -> list[dict]:
    """The records one study becomes under the `studies` option (see `STUDIES`); a prior is
    reduced the same way ("frontal": its first frontal image; no frontal image, no prior)."""
    if studies == "per_image":
        return one_image_per_record(record)
    if studies == "all_views":
        return [record]
    frontal = first_frontal(study_images(record))
    if not frontal:
        if log is not None:
            log.drop("no_frontal")
        return []
    prior = record.get("prior")
    if prior is not None:
        prior_frontal = first_frontal(prior["images"])
        prior = {**prior, "images": prior_frontal} if prior_frontal else None
    return [{**record, "images": frontal, "prior": prior, "image": frontal[0]["image"], "view": frontal[0]["view"]}]


def latest_priors(studies: Iterable[tuple]) -> dict:
    """{study_id: the study_id of its prior, or None} from (study_id, subject_id, split, when).

    The prior of a study is the same subject's latest study taken strictly earlier (`when`: any
    sortable value, e.g. (StudyDate, StudyTime)); among studies of that same moment the one met
    last in the input. It must be in the study's own split: when the latest earlier study is
    in another split the study has no prior (the search does not go further back), so no
    split ever sees another split's report.
    """
    by_subject: dict[str, list[tuple]] = {}
    for order, (study_id, subject_id, split, when) in enumerate(studies):
        by_subject.setdefault(str(subject_id), []).append((when, order, str(study_id), split))
    prior_of = {}
    for entries in by_subject.values():
        entries.sort(key=lambda e: (e[0], e[1]))
        n_earlier = 0  # entries[:n_earlier] are strictly earlier than the current one (a sorted prefix)
        for k, (when, _, study_id, split) in enumerate(entries):
            while n_earlier < k and entries[n_earlier][0] < when:
                n_earlier += 1
            latest = entries[n_earlier - 1] if n_earlier else None
            prior_of[study_id] = latest[2] if latest is not None and latest[3] == split else None
    return prior_of


def as_prior(record: dict) -> dict:
    """A loaded study record as the prior of a later one (its images and its report)."""
    return make_prior(images=study_images(record), text=record["text"], study_id=record["study_id"],
                      findings=record.get("findings", ""), impression=record.get("impression", ""))
