"""MIMIC-CXR-JPG (v2.0.0 / v2.1.0) as PhysioNet ships it, with the MIMIC-CXR free-text reports.

Layout under `root` (each CSV may also be the shipped ``.csv.gz``)::

    mimic-cxr-2.0.0-split.csv       dicom_id, study_id, subject_id, split (train/validate/test)
    mimic-cxr-2.0.0-metadata.csv    dicom_id, subject_id, study_id, ViewPosition, ...
    mimic-cxr-2.0.0-chexpert.csv    subject_id, study_id, 14 observations (1.0/0.0/-1.0/blank)
    files/p10/p10000032/s50414267/<dicom_id>.jpg
    files/p10/p10000032/s50414267.txt           reports (MIMIC-CXR), or mimic-cxr-reports.zip

Splits come from the official split file only, which is patient-disjoint by construction.
A study is one record (``studies="frontal"`` or ``"all_views"``), optionally with the patient's
previous study as its ``prior`` (``priors=True``, by StudyDate/StudyTime in the metadata file);
by default each kept image is its own record, as before.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from medvlm.data.images import check_image_file
from medvlm.data.records import (
    DataError, PathGuard, SkipLog, as_prior, canonical_split, check_split_arg, check_studies, labels_from_mapping,
    latest_priors, make_image, make_record, shape_study,
)
from medvlm.data.tables import read_csv
from medvlm.data.reports import TARGET_SECTIONS, compose_target, decode_report, extract_sections
from medvlm.errors import UserError
from medvlm.observations import CHEXPERT_OBSERVATIONS

PREFIX = "mimic-cxr-2.0.0"
DEFAULT_VIEWS = ("PA", "AP")
_VIEW_PREFERENCE = ("PA", "AP", "LATERAL", "LL")


def find_table(root: Path, name: str, *, required: bool = True) -> Path | None:
    """`root/name` as .csv or .csv.gz."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    if required:
        raise DataError(f"{root}: missing {name} (or {name}.gz); expected the MIMIC-CXR-JPG "
                        "metadata files in the dataset root", path=root / name, reason="missing_file")
    return None


class ReportSource:
    """Reads `files/pXX/pSUBJECT/sSTUDY.txt` from a directory or from mimic-cxr-reports.zip."""

    def __init__(self, path: Path, allow_outside_root: bool = False):
        self.path = path
        self.guard = PathGuard(path, allow_outside_root)
        self.zip = None
        self.members: dict[str, str] = {}
        if path.is_file():
            try:
                self.zip = zipfile.ZipFile(path)
            except zipfile.BadZipFile as err:
                raise DataError(f"{path}: not a readable zip file ({err})", path=path,
                                reason="bad_table") from None
            for name in self.zip.namelist():
                # Index by the part from "files/" on, so an extra top folder does not matter.
                i = name.find("files/")
                if i >= 0 and name.endswith(".txt"):
                    self.members[name[i:]] = name
        elif not path.is_dir():
            raise DataError(f"{path}: reports not found; expected a directory holding files/pXX/... "
                            "or mimic-cxr-reports.zip (option reports_path)", path=path,
                            reason="missing_file")

    def read(self, rel: str, where: str = "") -> str:
        if self.zip is None:
            file = self.guard(rel, where=where or str(self.path), what="report path")
            try:
                data = file.read_bytes()
            except FileNotFoundError:
                raise DataError(f"{file}: report file not found", path=file,
                                reason="missing_report") from None
            return decode_report(data, str(file))
        member = self.members.get(rel)
        name = f"{self.path}!{rel}"
        if member is None:
            raise DataError(f"{name}: report not in the zip", path=name, reason="missing_report")
        return decode_report(self.zip.read(member), name)

    def close(self):
        if self.zip is not None:
            self.zip.close()


def _default_reports(root: Path) -> Path:
    for candidate in (root / "mimic-cxr-reports.zip", root.parent / "mimic-cxr-reports.zip"):
        if candidate.is_file():
            return candidate
    return root


def _check_views(views):
    if views is None or views == "all":
        return None
    names = [views] if isinstance(views, str) else list(views)
    return tuple(str(v).strip().upper() for v in names)


def load_mimic_cxr(
    root,
    *,
    split=None,
    on_error: str = "raise",
    views=DEFAULT_VIEWS,
    images_per_study: str | None = None,
    studies: str = "per_image",
    priors: bool = False,
    target_section: str = "findings",
    drop_missing_target: bool = True,
    reports_path=None,
    images_root=None,
    label_source: str = "chexpert",
    require_images: bool = True,
    deid_tokens: str = "drop",
    verify_images: bool = False,
    allow_outside_root: bool = False,
) -> list[dict]:
    """MIMIC-CXR-JPG records: one per image by default (with one image per study), or one per
    study with all its images and the patient's previous study.

    Options:
      views: ViewPosition values to keep (default ("PA", "AP")); None or "all" keeps every view.
      studies: "per_image" (default: one record per image, as before), "frontal" (one record
        per study with its first frontal image, PA before AP) or "all_views" (one record per
        study with every kept image, ordered PA, AP, LATERAL, LL, others; pair it with
        ``views="all"`` to get the lateral views too). See `medvlm.data.records.STUDIES`.
      images_per_study: with studies="per_image" only: "one" (default) keeps one image per
        study, preferring the views in the order given (PA, then AP by default; then LATERAL,
        LL, others), ties broken by split-file order; "all" keeps every image that passes `views`.
      priors: attach the previous study (``prior``: its images, reduced as `studies` says, and
        its report) to each record; needs studies="frontal" or "all_views". The prior is the
        same subject's latest study with an earlier (StudyDate, StudyTime) in the metadata file,
        and only when it is in the same split (else there is none; MIMIC's official split is
        patient-disjoint, so this is a safeguard). A prior whose report or every image is
        unusable, or whose views were all filtered away, is no prior.
      target_section: "findings" (default, as R2Gen), "impression" or "findings+impression";
        `text` is that section (both joined for the last).
      drop_missing_target: leave out studies whose target text is empty (counted as dropped
        "missing_target", per record it would have given); False keeps them with text "".
        Such a study can still be the prior of a later one.
      reports_path: a directory holding files/pXX/pSUBJECT/sSTUDY.txt or mimic-cxr-reports.zip;
        default root/mimic-cxr-reports.zip (or next to root), else root itself.
      images_root: where files/pXX/... images live (default root).
      label_source: "chexpert" (default), "negbio" (mimic-cxr-2.0.0-negbio.csv) or None; a study
        absent from the label file gets labels None.
      require_images: check that every image file exists and is not empty (a stat per image).
      verify_images: also decode every image (slow; finds truncated/corrupt files up front).
      deid_tokens: "drop" (default) removes the "___" blanks, "keep" leaves them.
      allow_outside_root: let the ids in the metadata files name image or report paths outside
        `images_root` / the reports folder (by default such an item is a bad item).
    """
    root = Path(root)
    log = SkipLog(on_error, source=f"mimic_cxr({root})")
    splits = check_split_arg(split)
    views = _check_views(views)
    images_per_study = _check_options(images_per_study, studies, priors, target_section, label_source)
    images_root = PathGuard(Path(images_root) if images_root is not None else root, allow_outside_root)

    split_path, split_table, meta_path, meta = _read_metadata(root, dates=priors)
    labels_of, bad_labels = _read_labels(root, label_source, log)
    grouped = _studies(split_path, split_table, meta_path, meta, splits, views, log, every_split=priors)
    reports = ReportSource(Path(reports_path) if reports_path is not None else _default_reports(root),
                           allow_outside_root)
    preference = (views or ()) + tuple(v for v in _VIEW_PREFERENCE if v not in (views or ()))
    rank = {v: k for k, v in enumerate(preference)}
    loaded = {}
    try:
        for study_id, images in grouped.items():
            if (splits is not None and images[0][3] not in splits) or study_id in bad_labels:
                continue  # another split (kept for the prior rule), or its label row was counted as bad
            images = sorted(images, key=lambda im: rank.get(im[2], len(rank)))  # stable: file order in a tie
            if images_per_study == "one":
                images = images[:1]
            record = _study_record(study_id, images, reports, labels_of.get(study_id), images_root, log,
                                   target_section=target_section, deid_tokens=deid_tokens,
                                   check_images=require_images or verify_images, decode_images=verify_images)
            if record is not None:
                loaded[study_id] = record
    finally:
        reports.close()
    prior_of = latest_priors((s, im[0][1], im[0][3], im[0][5]) for s, im in grouped.items()) if priors else {}
    return log.finish(_final_records(loaded, prior_of, studies, drop_missing_target, log))


def _check_options(images_per_study, studies: str, priors: bool, target_section: str, label_source) -> str | None:
    """The checked options; images_per_study resolved ("one" by default under studies="per_image")."""
    check_studies(studies, priors)
    if images_per_study is not None and studies != "per_image":
        raise UserError(f"images_per_study applies to studies='per_image' only; studies={studies!r} "
                        "keeps the images the studies setting says")
    if studies == "per_image":
        images_per_study = "one" if images_per_study is None else images_per_study
        if images_per_study not in ("one", "all"):
            raise UserError(f"images_per_study must be 'one' or 'all', got {images_per_study!r}")
    if target_section not in TARGET_SECTIONS:
        raise UserError(f"target_section must be one of {TARGET_SECTIONS}, got {target_section!r}")
    if label_source not in ("chexpert", "negbio", None):
        raise UserError(f"label_source must be 'chexpert', 'negbio' or None, got {label_source!r}")
    return images_per_study


def _final_records(loaded: dict, prior_of: dict, studies: str, drop_missing_target: bool, log: SkipLog) -> list:
    """The loaded studies with their priors attached, shaped by `studies`, in split-file order."""
    records = []
    for study_id, record in loaded.items():
        prior_id = prior_of.get(study_id)
        if prior_id in loaded:
            record = {**record, "prior": as_prior(loaded[prior_id])}
        if not record["text"] and drop_missing_target:
            log.drop("missing_target", len(shape_study(record, studies)))
            continue
        records += shape_study(record, studies, log)
    return records


def _read_metadata(root: Path, dates: bool = False):
    """(split file, its table, metadata file, {dicom_id: (upper-case ViewPosition, (StudyDate,
    StudyTime) or None, or the DataError of an unreadable date)}); either file missing is a
    DataError. The dates are read only when asked for (`dates`: the prior rule needs them)."""
    split_path = find_table(root, f"{PREFIX}-split.csv")
    split_table = read_csv(split_path, ["dicom_id", "study_id", "subject_id", "split"])
    meta_path = find_table(root, f"{PREFIX}-metadata.csv")
    meta_table = read_csv(meta_path, ["dicom_id", "ViewPosition"] + (["StudyDate", "StudyTime"] if dates else []))
    meta = {}
    for i, row in enumerate(meta_table.rows):
        when = None
        if dates:
            try:
                when = _study_moment(row["StudyDate"], row["StudyTime"], meta_table.where(i))
            except DataError as err:
                when = err
        meta[row["dicom_id"]] = (row["ViewPosition"].strip().upper(), when)
    return split_path, split_table, meta_path, meta


def _study_moment(date: str, time: str, where: str) -> tuple[int, float]:
    """(StudyDate as YYYYMMDD, StudyTime as HHMMSS.ffffff) as numbers, which sort in time order."""
    try:
        day = int(float(date))
    except ValueError:
        raise DataError(f"{where}, column 'StudyDate': {date!r} is not a date YYYYMMDD", reason="bad_field") from None
    try:
        moment = float(time) if time.strip() else 0.0
    except ValueError:
        raise DataError(f"{where}, column 'StudyTime': {time!r} is not a time HHMMSS.ffffff",
                        reason="bad_field") from None
    return day, moment


def _read_labels(root: Path, label_source: str | None, log: SkipLog) -> tuple[dict, set]:
    """({study_id: 14 labels}, study ids whose label row was bad); empty without a label file."""
    labels_of, bad_labels = {}, set()
    if label_source is None:
        return labels_of, bad_labels
    label_path = find_table(root, f"{PREFIX}-{label_source}.csv", required=False)
    if label_path is None:
        return labels_of, bad_labels
    label_table = read_csv(label_path, ["subject_id", "study_id", *CHEXPERT_OBSERVATIONS])
    for i, row in enumerate(label_table.rows):
        try:
            labels_of[row["study_id"]] = labels_from_mapping(row, CHEXPERT_OBSERVATIONS, where=label_table.where(i))
        except DataError as err:
            log.skip(err)
            bad_labels.add(row["study_id"])
    return labels_of, bad_labels


def _studies(split_path: Path, split_table, meta_path: Path, meta: dict, splits, views, log: SkipLog,
             every_split: bool = False) -> dict:
    """The split file's images grouped by study, in file order: {study_id: [(dicom_id, subject_id,
    view, split, where, when), ...]}, keeping the requested views and splits (`where`: its line;
    `when`: (StudyDate, StudyTime) or None). With `every_split` (the prior rule looks at every
    split) the other splits' studies are kept too, and their bad rows left out without a word."""
    studies: dict[str, list[tuple]] = {}
    for i, row in enumerate(split_table.rows):
        where = split_table.where(i)
        try:
            row_split = canonical_split(row["split"], where=where)
        except DataError as err:
            log.skip(err)
            continue
        wanted = splits is None or row_split in splits
        if not (wanted or every_split):
            continue
        if row["dicom_id"] not in meta:
            if wanted:
                log.skip(DataError(f"{where}: dicom_id {row['dicom_id']!r} is not in {meta_path.name}",
                                   path=split_path, reason="missing_metadata"))
            continue
        view, when = meta[row["dicom_id"]]
        if isinstance(when, DataError):
            if wanted:
                log.skip(DataError(f"{when} (dicom_id {row['dicom_id']!r})", path=meta_path, reason=when.reason))
            continue
        if views is not None and view not in views:
            if wanted:
                log.drop("view_filtered")
            continue
        studies.setdefault(row["study_id"], []).append(
            (row["dicom_id"], row["subject_id"], view, row_split, where, when))
    for images in studies.values():  # a study's moment: its earliest image's
        moment = min((im[5] for im in images if im[5] is not None), default=None)
        images[:] = [im[:5] + (moment,) for im in images]
    return studies


def _study_record(study_id: str, images, reports: ReportSource, labels, images_root: PathGuard, log: SkipLog, *,
                  target_section: str, deid_tokens: str, check_images: bool, decode_images: bool) -> dict | None:
    """One study with its usable images (in the order given), or None when its report or every
    image is bad (each counted in `log`)."""
    subject_id = images[0][1]
    folder = f"files/p{subject_id[:2]}/p{subject_id}"
    try:
        sections = extract_sections(reports.read(f"{folder}/s{study_id}.txt", where=images[0][4]), deid=deid_tokens)
    except DataError as err:
        log.skip(err)
        return None
    kept = []
    for dicom_id, _, view, _, where, _ in images:
        try:
            image = images_root(f"{folder}/s{study_id}/{dicom_id}.jpg", where=where)
            if check_images:
                check_image_file(image, decode=decode_images)
        except DataError as err:
            log.skip(err)
            continue
        kept.append(make_image(str(image), view))
    if not kept:
        return None
    return make_record(
        images=kept, text=compose_target(sections["findings"], sections["impression"], target_section),
        findings=sections["findings"], impression=sections["impression"], study_id=study_id,
        subject_id=subject_id, split=images[0][3], labels=None if labels is None else list(labels))
