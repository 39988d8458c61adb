"""One entry point from a config's `data:` section to records of a split.

Each dataset module keeps its own loader; this file only maps the `dataset` name to it.
"""

import inspect
from pathlib import Path

from medvlm.errors import UserError

SYNTHETIC_DEFAULTS = {"num_train": 2000, "num_validation": 200, "num_test": 300, "seed": 0}
SPLITS = ("train", "validation", "test")


def _synthetic(root, split, image_size, on_error, **options):
    """The built-in synthetic set; besides the sizes and seed, options `views` (1: a PA film per
    study, 2: PA + LATERAL), `prior_share` (the share of studies with a prior study, whose report
    then states the changes), `vqa` / `questions_per_study`, and `hospitals` / `hospital` /
    `hospital_skew` (simulated sites for federated learning, `medvlm.data.hospitals`)."""
    from .hospitals import DEFAULT_SKEW, check_options, hospital_records
    from .synthetic import synthetic_records, synthetic_vqa_records

    extra = {"vqa": False, "questions_per_study": 4, "views": 1, "prior_share": 0.0,
             "hospitals": 0, "hospital": None, "hospital_skew": DEFAULT_SKEW}
    opts = {**SYNTHETIC_DEFAULTS, **extra, **options}
    unknown = set(opts) - set(SYNTHETIC_DEFAULTS) - set(extra)
    if unknown:
        raise UserError(f"data.options: unknown synthetic option(s) {sorted(unknown)}; "
                        f"known: {sorted(SYNTHETIC_DEFAULTS) + sorted(extra)}")
    if opts["views"] not in (1, 2):
        raise UserError(f"data.options.views: 1 (PA) or 2 (PA and lateral), got {opts['views']!r}")
    share = opts["prior_share"]
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
        raise UserError(f"data.options.prior_share: a number in [0, 1], got {opts['prior_share']!r}")
    check_options(opts)
    sizes = [opts["num_train"], opts["num_validation"], opts["num_test"]]
    start = sum(sizes[: SPLITS.index(split)])  # disjoint index ranges keep the splits apart
    common = {"seed": opts["seed"], "image_size": image_size, "split": split, "start_index": start,
              "views": opts["views"], "prior_share": float(opts["prior_share"])}
    if opts["vqa"]:
        return synthetic_vqa_records(sizes[SPLITS.index(split)], questions_per_study=opts["questions_per_study"],
                                     **common)
    if opts["hospitals"]:
        return hospital_records(sizes[SPLITS.index(split)], hospitals=opts["hospitals"], hospital=opts["hospital"],
                                skew=opts["hospital_skew"], **common)
    return synthetic_records(sizes[SPLITS.index(split)], **common)


def _loader(name: str):
    if name == "mimic_cxr":
        from .mimic_cxr import load_mimic_cxr
        return load_mimic_cxr
    if name == "iu_xray":
        from .iu_xray import load_iu_xray
        return load_iu_xray
    if name == "vqa_rad":
        from .vqa import load_vqa_rad
        return load_vqa_rad
    if name == "slake":
        from .vqa import load_slake
        return load_slake
    if name == "chestxray14":
        from .chestxray14 import load_chestxray14
        return load_chestxray14
    if name in ("csv", "jsonl", "hf"):
        from .tables import load_tabular
        return load_tabular
    raise UserError(f"data.dataset: unknown dataset '{name}'; expected one of "
                    "synthetic, mimic_cxr, iu_xray, vqa_rad, slake, chestxray14, csv, jsonl, hf")


def load_split(dataset: str, split: str, root: str | None = None, image_size: int = 128,
               on_error: str = "raise", options: dict | None = None,
               allow_outside_root: bool = False) -> list[dict]:
    """Records of one split ("train", "validation" or "test") of the configured dataset.
    `allow_outside_root` (data.allow_outside_root) lets image paths in the dataset's files be
    absolute or lead out of its root; by default such an item is a DataError."""
    if split not in SPLITS:
        raise UserError(f"split must be one of {SPLITS}, got '{split}'")
    options = dict(options or {})
    if "allow_outside_root" in options:
        raise UserError("data.options.allow_outside_root: it is data.allow_outside_root (a data setting)")
    if dataset == "synthetic":
        return _synthetic(root, split, image_size, on_error, **options)
    if root is None:
        raise UserError(f"data.root is required for dataset '{dataset}' (the folder that holds it)")
    if not Path(root).exists():
        raise UserError(f"data.root: {root} does not exist")
    loader = _loader(dataset)
    _check_options(dataset, loader, options)
    return loader(root, split=split, on_error=on_error, allow_outside_root=allow_outside_root, **options)


def _check_options(dataset: str, loader, options: dict) -> None:
    """data.options are the loader's keyword arguments: an unknown one is a UserError listing the known."""
    parameters = inspect.signature(loader).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    known = [name for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY
             and name not in ("split", "on_error", "allow_outside_root")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UserError(f"data.options: unknown option(s) {unknown} for dataset '{dataset}'; known: {known}")
