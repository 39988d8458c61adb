"""NIH ChestX-ray14 in its published layout: image-level labels for CheXNet-style classifiers.

    Data_Entry_2017.csv   Image Index, Finding Labels ("Cardiomegaly|Effusion" or "No Finding"),
                          Follow-up #, Patient ID, Patient Age, Patient Gender, View Position, ...
    train_val_list.txt, test_list.txt   the official split (image names, one a line), optional
    images/00000001_000.png             or the Kaggle layout images_001/images/*.png ... images_012/

Records carry `labels` as 14 floats in `CHESTXRAY14_LABELS` order (1 present, 0 absent; this
dataset states no uncertainty), *not* the CheXpert order used elsewhere: a classifier trained on
them names its outputs with this list. `text` is "" (there are no reports).

Splits: the official lists when present (validation = `validation_fraction` of the train_val
patients, by `hash_split` of the patient id); otherwise `split_fractions` over patients. Either
way all images of one patient share a split.
"""

from __future__ import annotations

from pathlib import Path

from medvlm.data.records import DataError, PathGuard, SkipLog, check_split_arg, hash_split, make_record
from medvlm.data.tables import read_csv

CHESTXRAY14_LABELS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)
ENTRY_FILE = "Data_Entry_2017.csv"
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")


def parse_finding_labels(cell: str, where: str = "") -> list[float]:
    """'Effusion|Mass' -> 14 floats in CHESTXRAY14_LABELS order; 'No Finding' -> all 0."""
    names = [n.strip() for n in str(cell).split("|") if n.strip()]
    unknown = [n for n in names if n not in CHESTXRAY14_LABELS and n != "No Finding"]
    if unknown or not names:
        raise DataError(f"{where}: Finding Labels {cell!r} names {unknown or 'nothing'}; expected "
                        f"'No Finding' or '|'-joined names from {list(CHESTXRAY14_LABELS)}", reason="bad_label")
    return [1.0 if label in names else 0.0 for label in CHESTXRAY14_LABELS]


def _image_index(root: Path, images_dir) -> dict[str, Path] | Path:
    """A folder holding every image, or (Kaggle layout) a name -> path map over images_*/images
    (paths relative to root)."""
    if images_dir is not None:
        return Path(images_dir)
    if (root / "images").is_dir():
        return root / "images"
    index = {}
    for folder in sorted(root.glob("images_*/images")):
        for path in folder.iterdir():
            index[path.name] = path.relative_to(root)
    if not index:
        raise DataError(f"{root}: no images/ folder and no images_*/images folders", path=root, reason="missing_file")
    return index


def _read_list(path: Path) -> set[str] | None:
    return {line.strip() for line in path.read_text().splitlines() if line.strip()} if path.is_file() else None


def load_chestxray14(
    root,
    *,
    split=None,
    on_error: str = "raise",
    validation_fraction: float = 0.1,
    split_fractions=(0.7, 0.1, 0.2),
    split_seed: int = 0,
    views=None,
    images_dir=None,
    require_images: bool = True,
    allow_outside_root: bool = False,
) -> list[dict]:
    """ChestX-ray14 images as records with 14 NIH labels (see the module docstring).

    Options: validation_fraction (with the official lists), split_fractions (without them),
    split_seed, views (e.g. ["PA"]: keep these `View Position` values), images_dir (a folder
    holding every image), require_images (check each file exists), allow_outside_root (let an
    `Image Index` name, or a link in the image folders, lead out of them).
    """
    root = Path(root)
    splits = check_split_arg(split)
    table = read_csv(root / ENTRY_FILE, REQUIRED_COLUMNS)
    images = _image_index(root, images_dir)
    guard = PathGuard(images if isinstance(images, Path) else root, allow_outside_root)
    test_list = _read_list(root / "test_list.txt")
    official = test_list is not None and (root / "train_val_list.txt").is_file()
    views = None if views is None else {str(v).upper() for v in ([views] if isinstance(views, str) else views)}
    log = SkipLog(on_error, source=f"chestxray14({root})")
    records = []
    for i, row in enumerate(table.rows):
        name, patient = row["Image Index"].strip(), row["Patient ID"].strip()
        where = table.where(i, "Image Index")
        if views is not None and row.get("View Position", "").strip().upper() not in views:
            log.drop("view_filtered")
            continue
        if official:
            row_split = "test" if name in test_list else hash_split(
                patient, (1.0 - validation_fraction, validation_fraction, 0.0), split_seed)
        else:
            row_split = hash_split(patient, split_fractions, split_seed)
        if splits is not None and row_split not in splits:
            continue
        try:
            labels = parse_finding_labels(row["Finding Labels"], table.where(i, "Finding Labels"))
            rel = name if isinstance(images, Path) else images.get(name)
            path = None if rel is None else guard(rel, where=where)
            if path is None or (require_images and not path.is_file()):
                raise DataError(f"{where}: image file {name!r} not found", path=path, reason="missing_file")
        except DataError as err:
            log.skip(err)
            continue
        records.append(make_record(image=str(path), text="", study_id=Path(name).stem, subject_id=patient,
                                   split=row_split, view=row.get("View Position", "").strip(), labels=labels))
    return log.finish(records)
