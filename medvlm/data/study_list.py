"""Studies named on the command line or in a JSONL file, for `medvlm generate` and `explain`.

A study is {"id", "images", "views", "prior", "prior_views", "prior_report"}: image paths of
the current study (frontal first), their view names ([] = the first frontal, the others
lateral), the prior study's image paths and views ([] when there is no prior), and the prior's
report text ("" when not given; read by models trained with data.prior_report).

In a studies file each line is one JSON object with "images" (a list of paths, required) and
optionally "id", "views", "prior", "prior_views", "prior_report"; relative paths are read from
the file's folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError

FIELDS = ("id", "images", "views", "prior", "prior_views", "prior_report")


def command_line_study(images: list[str], views: list[str] | None = None, prior: list[str] | None = None,
                       prior_views: list[str] | None = None, prior_report: str | None = None) -> dict:
    """The one study given as FRONTAL [LATERAL ...] --views ... --prior ... --prior-views ...
    --prior-report ...."""
    study = {"id": images[0], "images": list(images), "views": list(views or []), "prior": list(prior or []),
             "prior_views": list(prior_views or []), "prior_report": prior_report or ""}
    _check_views(study, "--views", "--prior-views")
    return study


def read_study_list(path) -> list[dict]:
    """The studies of a JSONL file (see the module docstring); a bad line is a UserError naming
    the file, the line and the field."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--studies {path}: no such file")
    studies = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            studies.append(_study_of_line(line, f"{path}:{number}", path.parent))
    if not studies:
        raise UserError(f"--studies {path}: no studies (expected one JSON object per line)")
    return studies


def _study_of_line(line: str, where: str, folder: Path) -> dict:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as error:
        raise UserError(f"{where}: not JSON ({error.msg})") from None
    if not isinstance(entry, dict):
        raise UserError(f"{where}: expected a JSON object with an 'images' list")
    unknown = sorted(set(entry) - set(FIELDS))
    if unknown:
        raise UserError(f"{where}: unknown field(s) {unknown}; known: {list(FIELDS)}")
    for field in ("images", "views", "prior", "prior_views"):
        value = entry.get(field, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UserError(f"{where}: '{field}' must be a list of strings, got {value!r}")
    if not isinstance(entry.get("prior_report", ""), str):
        raise UserError(f"{where}: 'prior_report' must be a string, got {entry['prior_report']!r}")
    if not entry.get("images"):
        raise UserError(f"{where}: 'images' must name at least one image")
    study = {"id": str(entry.get("id", entry["images"][0])),
             "images": [str(folder / p) for p in entry["images"]], "views": entry.get("views", []),
             "prior": [str(folder / p) for p in entry.get("prior", [])], "prior_views": entry.get("prior_views", []),
             "prior_report": entry.get("prior_report", "")}
    _check_views(study, f"{where}: 'views'", f"{where}: 'prior_views'")
    return study


def _check_views(study: dict, views_name: str, prior_views_name: str) -> None:
    for images, views, name in ((study["images"], study["views"], views_name),
                                (study["prior"], study["prior_views"], prior_views_name)):
        if views and len(views) != len(images):
            raise UserError(f"{name}: {len(views)} view names for {len(images)} images; give one per image")
