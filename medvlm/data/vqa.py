"""Medical VQA datasets (VQA-RAD, SLAKE) in their published layouts (answer normalisation for
scoring is `medvlm.metrics.vqa.normalize_answer`).

VQA records are common-schema records (see `medvlm.data.records`) with `text` = the answer and
four more keys: `question`, `answer`, `answer_type` ("closed" or "open") and `qid` (str).
`findings`/`impression` are "", `labels` None, `view` "".

VQA-RAD (OSF release)::

    VQA_RAD Dataset Public.json   [{"qid", "image_name", "image_organ", "question", "answer",
                                    "answer_type": "CLOSED"/"OPEN", "phrase_type", ...}]
    VQA_RAD Image Folder/synpic12345.jpg

  `phrase_type` values starting with "test" (test_freeform, test_para) are the test split,
  everything else is train. There is no official validation split; ``validation_fraction``
  moves that share of the training *images* (by `hash_split` of the image name, so all
  questions about one image stay together) into "validation".

SLAKE::

    train.json, validate.json, test.json   [{"img_id", "img_name": "xmlab102/source.jpg",
        "question", "answer", "answer_type", "q_lang": "en"/"zh", "qid", "content_type",
        "modality", "location", ...}]
    imgs/xmlab102/source.jpg
"""

from __future__ import annotations

import re
from pathlib import Path

from medvlm.data.images import check_image_file
from medvlm.data.records import DataError, PathGuard, SkipLog, check_split_arg, hash_split, make_record
from medvlm.data.tables import read_json
from medvlm.errors import UserError

VQA_RAD_JSON = "VQA_RAD Dataset Public.json"
VQA_RAD_IMAGES = "VQA_RAD Image Folder"
SLAKE_FILES = {"train": "train.json", "validation": "validate.json", "test": "test.json"}
_CHEST_LOCATIONS = ("chest", "lung")  # SLAKE `location` values of chest images start so

def _answer_type(value, where: str, path) -> str:
    kind = str(value).strip().upper()
    if kind in ("CLOSED", "OPEN"):
        return kind.lower()
    raise DataError(f"{where}: answer_type {value!r}; expected CLOSED or OPEN", path=path,
                    reason="bad_field")


def _require(item, fields, where: str, path) -> None:
    if not isinstance(item, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(item).__name__}", path=path,
                        reason="bad_field")
    missing = [f for f in fields if f not in item or item[f] is None]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}; the item has {sorted(item)}",
                        path=path, reason="missing_field")


class _ImageCheck:
    """check_image_file once per distinct image (many questions share one image)."""

    def __init__(self, require: bool, verify: bool):
        self.require, self.verify = require, verify
        self.seen: dict[Path, DataError | None] = {}

    def __call__(self, path: Path) -> None:
        if not (self.require or self.verify):
            return
        if path not in self.seen:
            try:
                check_image_file(path, decode=self.verify)
                self.seen[path] = None
            except DataError as err:
                self.seen[path] = err
        if self.seen[path] is not None:
            raise self.seen[path]


def _check_texts(item: dict, where: str, path) -> None:
    """The question must be text, the answer text or a number (VQA-RAD has numeric answers)."""
    for key, numbers in (("question", False), ("answer", True)):
        value = item[key]
        if not (isinstance(value, str) or numbers and isinstance(value, (int, float)) and not isinstance(value, bool)):
            raise DataError(f"{where}, field {key!r}: expected text, got {type(value).__name__} {value!r:.60}",
                            path=path, reason="bad_field")


def _vqa_record(*, image, question, answer, answer_type, qid, study_id, split) -> dict:
    answer = str(answer).strip()
    return make_record(
        image=str(image), text=answer, study_id=study_id, split=split,
        question=str(question).strip(), answer=answer, answer_type=answer_type, qid=str(qid),
    )


# --------------------------------------------------------------------------- VQA-RAD


def load_vqa_rad(
    root,
    *,
    split=None,
    on_error: str = "raise",
    organs=None,
    chest_only: bool = False,
    validation_fraction: float = 0.0,
    test_fraction: float = 0.0,
    split_seed: int = 0,
    require_images: bool = True,
    verify_images: bool = False,
    json_name: str = VQA_RAD_JSON,
    images_dir=None,
    allow_outside_root: bool = False,
) -> list[dict]:
    """VQA-RAD questions as VQA records (one per question).

    Options:
      organs: keep only these `image_organ` values (e.g. ["CHEST"]; case-insensitive).
      chest_only: shorthand for organs=["CHEST"].
      validation_fraction: share of training images moved to "validation" (default 0: none).
      test_fraction: share of training images moved to "test", for a release without its test
        questions: held-out images that neither training nor early stopping sees (default 0).
      require_images / verify_images: check each image exists (and decodes).
      json_name, images_dir: file and folder names if they differ from the OSF release.
      allow_outside_root: let `image_name` be absolute or lead out of the image folder.
    """
    root = Path(root)
    splits = check_split_arg(split)
    if not (0.0 <= validation_fraction < 1.0 and 0.0 <= test_fraction < 1.0
            and validation_fraction + test_fraction < 1.0):
        raise UserError(f"validation_fraction and test_fraction must be in [0, 1) with a sum below 1, got "
                        f"{validation_fraction} and {test_fraction}")
    if chest_only:
        organs = ["CHEST"]
    organs = None if organs is None else {str(o).strip().upper() for o in
                                          ([organs] if isinstance(organs, str) else organs)}
    json_path = root / json_name
    images = PathGuard(Path(images_dir) if images_dir is not None else root / VQA_RAD_IMAGES, allow_outside_root)
    items = read_json(json_path)
    if not isinstance(items, list):
        raise DataError(f"{json_path}: expected a list of questions, got {type(items).__name__}",
                        path=json_path, reason="bad_table")
    log = SkipLog(on_error, source=f"vqa_rad({root})")
    check = _ImageCheck(require_images, verify_images)
    records = []
    for i, item in enumerate(items):
        where = f"{json_path}, item {i} (qid {item.get('qid') if isinstance(item, dict) else '?'})"
        try:
            _require(item, ("qid", "image_name", "question", "answer", "answer_type"), where, json_path)
            _check_texts(item, where, json_path)
            if organs is not None and str(item.get("image_organ", "")).strip().upper() not in organs:
                log.drop("organ_filtered")
                continue
            answer_type = _answer_type(item["answer_type"], where, json_path)
            image_name = str(item["image_name"]).strip()
            if str(item.get("phrase_type", "")).strip().lower().startswith("test"):
                item_split = "test"
            else:  # train, or an image held out by the fractions (a split by image)
                item_split = hash_split(image_name, (1.0 - validation_fraction - test_fraction, validation_fraction,
                                                     test_fraction), split_seed)
            if splits is not None and item_split not in splits:
                continue
            image = images(image_name, where=f"{where}, field 'image_name'")
            check(image)
        except DataError as err:
            log.skip(err)
            continue
        records.append(_vqa_record(
            image=image, question=item["question"], answer=item["answer"],
            answer_type=answer_type, qid=item["qid"], study_id=Path(image_name).stem,
            split=item_split,
        ))
    return log.finish(records)


# --------------------------------------------------------------------------- SLAKE


def _norm_tag(value) -> str:
    return re.sub(r"[^a-z0-9]", "", str(value).lower())


def load_slake(
    root,
    *,
    split=None,
    on_error: str = "raise",
    languages=("en",),
    modality_filter=None,
    chest_only: bool = False,
    require_images: bool = True,
    verify_images: bool = False,
    images_dir=None,
    allow_outside_root: bool = False,
) -> list[dict]:
    """SLAKE questions as VQA records (one per question).

    Options:
      languages: `q_lang` values to keep (default ("en",); None keeps all, e.g. also "zh").
      modality_filter: keep only these `modality` values, e.g. "X-Ray" or ["X-Ray", "CT"]
        (case, spaces and hyphens ignored: "xray" matches "X-Ray").
      chest_only: keep only images whose `location` is Chest* or Lung.
      require_images / verify_images: check each image exists (and decodes).
      images_dir: image folder (default root/imgs).
      allow_outside_root: let `img_name` be absolute or lead out of the image folder.
    """
    root = Path(root)
    splits = check_split_arg(split)
    languages = None if languages is None else {str(lang).strip().lower() for lang in
                                                ([languages] if isinstance(languages, str) else languages)}
    modalities = None if modality_filter is None else {
        _norm_tag(m) for m in ([modality_filter] if isinstance(modality_filter, str) else modality_filter)}
    images = PathGuard(Path(images_dir) if images_dir is not None else root / "imgs", allow_outside_root)
    log = SkipLog(on_error, source=f"slake({root})")
    check = _ImageCheck(require_images, verify_images)
    records = []
    for file_split, filename in SLAKE_FILES.items():
        if splits is not None and file_split not in splits:
            continue
        json_path = root / filename
        items = read_json(json_path)
        if not isinstance(items, list):
            raise DataError(f"{json_path}: expected a list of questions, got {type(items).__name__}",
                            path=json_path, reason="bad_table")
        for i, item in enumerate(items):
            where = f"{json_path}, item {i} (qid {item.get('qid') if isinstance(item, dict) else '?'})"
            try:
                _require(item, ("qid", "img_name", "question", "answer", "answer_type"), where, json_path)
                _check_texts(item, where, json_path)
                if languages is not None and str(item.get("q_lang", "en")).strip().lower() not in languages:
                    log.drop("language_filtered")
                    continue
                if modalities is not None and _norm_tag(item.get("modality", "")) not in modalities:
                    log.drop("modality_filtered")
                    continue
                if chest_only and not _norm_tag(item.get("location", "")).startswith(_CHEST_LOCATIONS):
                    log.drop("location_filtered")
                    continue
                answer_type = _answer_type(item["answer_type"], where, json_path)
                image = images(str(item["img_name"]).strip(), where=f"{where}, field 'img_name'")
                check(image)
            except DataError as err:
                log.skip(err)
                continue
            study_id = item.get("img_id", Path(str(item["img_name"])).parent.name)
            records.append(_vqa_record(
                image=image, question=item["question"], answer=item["answer"],
                answer_type=answer_type, qid=item["qid"], study_id=study_id, split=file_split,
            ))
    return log.finish(records)
