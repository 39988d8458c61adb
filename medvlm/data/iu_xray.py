"""IU X-ray (Indiana University chest X-rays, Open-i) in its two common layouts.

R2Gen layout (``layout="r2gen"``)::

    annotation.json     {"train": [...], "val": [...], "test": [...]}, each item
                        {"id": "CXR2384_IM-0942", "report": "...", "split": "train",
                         "image_path": ["CXR2384_IM-0942/0.png", "CXR2384_IM-0942/1.png"]}
    images/CXR2384_IM-0942/0.png

  The report is R2Gen's cleaned findings text; the split is R2Gen's. R2Gen lists the frontal
  image first and the lateral second, and `views` trusts that order.

Open-i / Kaggle CSV layout (``layout="openi"``)::

    indiana_reports.csv       uid, MeSH, Problems, image, indication, comparison, findings, impression
    indiana_projections.csv   uid, filename, projection (Frontal / Lateral)
    images/images_normalized/<filename>   (or images/<filename>; option images_dir)

  These files have no official split: each study goes to a split by `hash_split` of its uid
  (sha1 of "<split_seed>:<uid>", fractions `split_fractions`, default 0.7/0.1/0.2 as R2Gen), so
  the assignment is deterministic and does not change when studies are added. IU has one study
  per patient, so the split is patient-disjoint; subject_id is the uid.

Both views of a study share one report. A record is one image by default (``studies="per_image"``),
or one study with both views (``studies="all_views"``, R2Gen's protocol) or its frontal view only
(``studies="frontal"``, the usual single-image protocol).
"""

from __future__ import annotations

from pathlib import Path

from medvlm.data.images import check_image_file
from medvlm.data.records import (
    DataError, PathGuard, SkipLog, canonical_split, check_fractions, check_split_arg, check_studies, hash_split,
    make_image, make_record, shape_study,
)
from medvlm.data.tables import read_csv, read_json
from medvlm.data.reports import DEID_POLICIES, TARGET_SECTIONS, clean_report, compose_target
from medvlm.errors import UserError

VIEWS = ("frontal", "lateral", "both")
EMPTY_FINDINGS = ("drop", "use_impression", "keep")
_R2GEN_VIEWS = ("FRONTAL", "LATERAL")  # position 0, 1 in R2Gen's image_path


def load_iu_xray(
    root,
    *,
    split=None,
    on_error: str = "raise",
    layout: str = "auto",
    views: str = "both",
    studies: str = "per_image",
    target_section: str = "findings",
    empty_findings: str = "drop",
    deid_tokens: str = "drop",
    images_dir=None,
    require_images: bool = True,
    verify_images: bool = False,
    split_fractions=(0.7, 0.1, 0.2),
    split_seed: int = 0,
    allow_outside_root: bool = False,
) -> list[dict]:
    """IU X-ray records: one per image by default, or one per study holding both its views.

    Options:
      layout: "auto" (annotation.json -> r2gen, else indiana_reports.csv -> openi), "r2gen", "openi".
      views: "frontal", "lateral" or "both" (default): the images kept.
      studies: "per_image" (default: one record per kept image, as before), "frontal" (one
        record per study with its frontal image) or "all_views" (one record per study with its
        kept views, frontal first: R2Gen's protocol, which reads both views of a study). See
        `medvlm.data.records.STUDIES`. IU X-ray has no study dates, so no record has a prior.
      target_section: "findings" (default), "impression" or "findings+impression" (openi only;
        R2Gen's report is findings text).
      empty_findings: what to do with a study whose findings are empty when the target needs
        them: "drop" (default; counted as dropped "empty_findings"), "use_impression" (text =
        impression; dropped when that is empty too), "keep" (text may be "").
      deid_tokens: "drop" (default) removes the XXXX de-identification tokens, "keep" keeps them.
      images_dir: folder of the images (default root/images, or root/images/images_normalized).
      require_images: check each image exists and is not empty; False parses reports without
        images (the paths are still filled in).
      verify_images: also decode every image (slow; finds corrupt files up front).
      split_fractions, split_seed: the hash split of the openi layout (see module docstring).
      allow_outside_root: let image paths in the metadata be absolute or lead out of the image
        folder (by default such an image is a bad item).
    """
    root = Path(root)
    splits = check_split_arg(split)
    if views not in VIEWS:
        raise UserError(f"views must be one of {VIEWS}, got {views!r}")
    if target_section not in TARGET_SECTIONS:
        raise UserError(f"target_section must be one of {TARGET_SECTIONS}, got {target_section!r}")
    if empty_findings not in EMPTY_FINDINGS:
        raise UserError(f"empty_findings must be one of {EMPTY_FINDINGS}, got {empty_findings!r}")
    if deid_tokens not in DEID_POLICIES:
        raise UserError(f"deid_tokens must be one of {DEID_POLICIES}, got {deid_tokens!r}")
    split_fractions = check_fractions(split_fractions)
    check_studies(studies)
    if layout == "auto":
        if (root / "annotation.json").is_file():
            layout = "r2gen"
        elif (root / "indiana_reports.csv").is_file():
            layout = "openi"
        else:
            raise DataError(f"{root}: neither annotation.json (R2Gen layout) nor indiana_reports.csv "
                            "(Open-i/Kaggle layout) found", path=root, reason="missing_file")
    log = SkipLog(on_error, source=f"iu_xray({root})")
    opts = dict(splits=splits, views=views, studies=studies, target_section=target_section,
                empty_findings=empty_findings, deid=deid_tokens, require_images=require_images,
                verify_images=verify_images, log=log)
    if layout == "r2gen":
        images = Path(images_dir) if images_dir is not None else root / "images"
        records = _load_r2gen(root / "annotation.json", PathGuard(images, allow_outside_root), **opts)
    elif layout == "openi":
        if images_dir is not None:
            images = Path(images_dir)
        elif (root / "images" / "images_normalized").is_dir():
            images = root / "images" / "images_normalized"
        else:
            images = root / "images"
        records = _load_openi(root, PathGuard(images, allow_outside_root), fractions=split_fractions,
                              seed=split_seed, **opts)
    else:
        raise UserError(f"layout must be 'auto', 'r2gen' or 'openi', got {layout!r}")
    return log.finish(records)


def _target(findings: str, impression: str, target: str, policy: str, log: SkipLog):
    """The training text under the empty-findings policy, or None when the study is dropped."""
    if not findings and target != "impression":
        if policy == "drop":
            log.drop("empty_findings")
            return None
        if policy == "use_impression":
            if not impression:
                log.drop("empty_target")
                return None
            return impression
        return compose_target(findings, impression, target)  # "keep"
    text = compose_target(findings, impression, target)
    if not text and policy != "keep":
        log.drop("empty_target")
        return None
    return text


def _image_ok(path: Path, require: bool, verify: bool, log: SkipLog) -> bool:
    if not (require or verify):
        return True
    try:
        check_image_file(path, decode=verify)
    except DataError as err:
        log.skip(err)
        return False
    return True


def _study(images: list, *, split: str, log: SkipLog, studies: str, **fields) -> list[dict]:
    """The records of one study's usable images (as `studies` says), none when there is none."""
    if not images:
        return []
    return shape_study(make_record(images=images, split=split, **fields), studies, log)


def _r2gen_paths(item, where: str, annotation: Path) -> list[str]:
    """The image paths of one annotation item, after checking its fields (a DataError if bad)."""
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(item).__name__}",
                        path=annotation, reason="bad_field")
    missing = [f for f in ("id", "report", "image_path") if f not in item]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}; the item has {sorted(item)}",
                        path=annotation, reason="missing_field")
    paths = item["image_path"]
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(paths, list) or not paths or not all(isinstance(x, str) for x in paths):
        raise DataError(f"{where}: image_path must be a non-empty list of paths",
                        path=annotation, reason="bad_field")
    if not isinstance(item["report"], str):
        raise DataError(f"{where}: report must be a string", path=annotation, reason="bad_field")
    return paths


def _usable(images: PathGuard, rel: str, view: str, where: str, require: bool, verify: bool, log: SkipLog):
    """[{"image", "view"}] for a usable image, [] for a bad one (counted in `log`)."""
    try:
        image = images(rel, where=where)
    except DataError as err:
        log.skip(err)
        return []
    return [make_image(str(image), view)] if _image_ok(image, require, verify, log) else []


def _load_r2gen(annotation: Path, images: PathGuard, *, splits, views, studies, target_section, empty_findings,
                deid, require_images, verify_images, log) -> list[dict]:
    data = read_json(annotation)
    if not isinstance(data, dict):
        raise DataError(f"{annotation}: expected an object with keys train/val/test, got "
                        f"{type(data).__name__}", path=annotation, reason="bad_table")
    if target_section != "findings":
        raise UserError("the R2Gen layout has findings text only; use target_section='findings'")
    records = []
    for key, items in data.items():
        key_split = canonical_split(key, where=f"{annotation}, key {key!r}")
        if splits is not None and key_split not in splits:
            continue
        for i, item in enumerate(items):
            where = f"{annotation}, {key}[{i}]"
            try:
                paths = _r2gen_paths(item, where, annotation)
            except DataError as err:
                log.skip(err)
                continue
            findings = clean_report(item["report"], deid=deid)
            text = _target(findings, "", target_section, empty_findings, log)
            if text is None:
                continue
            kept = []
            for position, rel in enumerate(paths):
                view = _R2GEN_VIEWS[position] if position < 2 else ""
                if views == "both" or view == views.upper():
                    kept += _usable(images, rel, view, f"{where}, image_path[{position}]", require_images,
                                    verify_images, log)
            records += _study(kept, split=key_split, log=log, studies=studies, text=text, findings=findings,
                              impression="", study_id=item["id"])
    return records


def _openi_projections(projections, log: SkipLog) -> dict:
    """{uid: [(filename, FRONTAL or LATERAL, where), ...]} from indiana_projections.csv."""
    by_uid: dict[str, list[tuple[str, str, str]]] = {}
    for i, row in enumerate(projections.rows):
        projection = row["projection"].strip().upper()
        if projection not in ("FRONTAL", "LATERAL"):
            log.skip(DataError(f"{projections.where(i, 'projection')}: {row['projection']!r}; "
                               "expected Frontal or Lateral", path=projections.name, reason="bad_field"))
            continue
        by_uid.setdefault(row["uid"].strip(), []).append(
            (row["filename"].strip(), projection, projections.where(i, "filename")))
    return by_uid


def _load_openi(root: Path, images: PathGuard, *, fractions, seed, splits, views, studies, target_section,
                empty_findings, deid, require_images, verify_images, log) -> list[dict]:
    reports_path = root / "indiana_reports.csv"
    projections_path = root / "indiana_projections.csv"
    for path in (reports_path, projections_path):
        if not path.is_file():
            raise DataError(f"{path}: not found; the Open-i layout needs indiana_reports.csv and "
                            "indiana_projections.csv", path=path, reason="missing_file")
    reports = read_csv(reports_path, ["uid", "findings", "impression"])
    by_uid = _openi_projections(read_csv(projections_path, ["uid", "filename", "projection"]), log)
    records = []
    for row in reports.rows:
        uid = row["uid"].strip()
        row_split = hash_split(uid, fractions, seed)
        if splits is not None and row_split not in splits:
            continue
        files = by_uid.get(uid, [])
        if not files:
            log.drop("no_images")
            continue
        findings = clean_report(row["findings"], deid=deid)
        impression = clean_report(row["impression"], deid=deid)
        text = _target(findings, impression, target_section, empty_findings, log)
        if text is None:
            continue
        kept = []
        for filename, projection, where in files:
            if views == "both" or projection == views.upper():
                kept += _usable(images, filename, projection, where, require_images, verify_images, log)
        records += _study(kept, split=row_split, log=log, studies=studies, text=text, findings=findings,
                          impression=impression, study_id=uid)
    return records
