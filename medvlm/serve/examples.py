"""The studies the page offers to try: a few built-in synthetic ones and any folder of the user's.

A folder of examples holds one subfolder per study (its image files are the views, in name
order), or loose image files named `<study>_<anything>.<ext>`, grouped by the part before the
first "_" (the Open-i / Kaggle IU X-ray names: `CXR1900_IM-0584-1001.png`, `..._IM-0584-2001.png`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


@dataclass(frozen=True)
class Example:
    name: str
    views: tuple[str, ...]  # image paths, first one read by the model
    reference: str = ""     # the study's own report, where there is one


def builtin_examples(folder: Path, count: int = 3, image_size: int = 256, seed: int = 20261202) -> list[Example]:
    """`count` synthetic studies (drawn as the built-in data draws them, from a seed no split
    uses) written as PNG into `folder` (the server's temporary folder)."""
    from ..data.synthetic import make_study

    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for index in range(count):
        study = make_study(index, seed=seed, image_size=image_size)
        path = folder / f"synthetic_{index + 1}.png"
        Image.fromarray(study["image"]).save(path)
        examples.append(Example(f"synthetic study {index + 1}", (str(path),), study["text"]))
    return examples


def folder_examples(root: str | Path) -> list[Example]:
    """The studies of a folder, as the module docstring says; a folder with none is a UserError."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--examples {root}: not a folder")
    studies: dict[str, list[Path]] = {}
    for path in sorted(root.iterdir()):
        if path.is_dir():
            views = [p for p in sorted(path.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
            if views:
                studies[path.name] = views
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            studies.setdefault(path.name.split("_", 1)[0], []).append(path)
    if not studies:
        raise UserError(f"--examples {root}: no study found (expected subfolders of images, or image files named "
                        f"<study>_<view>{IMAGE_SUFFIXES[0]}; suffixes {', '.join(IMAGE_SUFFIXES)})")
    return [Example(name, tuple(str(p) for p in views)) for name, views in studies.items()]
