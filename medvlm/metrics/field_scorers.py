"""The field's learnt report scorers, where this machine has them: F1-CheXbert (the `f1chexbert`
package) and RadGraph-F1 (the `radgraph` package), both from `pip install 'medvlm[clinical-scorers]'`.

Both packages fetch their weights from the Hugging Face hub (StanfordAIMI/RRG_scorers) on first
use. Here they are loaded with the hub switched off (HF_HUB_OFFLINE), so a scorer whose weights
are not on disk is never a hang on the network: its entry is the string
``"not computed: <why>"``, never a number. Keys (`field_scores`):

- ``f1chexbert_micro_f1_14`` / ``f1chexbert_macro_f1_14``: micro / macro F1 over the 14 CheXbert
  observations, ``f1chexbert_micro_f1_5`` / ``f1chexbert_macro_f1_5``: over the 5 of CheXpert's
  competition (cardiomegaly, edema, consolidation, atelectasis, pleural effusion),
  ``f1chexbert_accuracy_5``: the share of reports whose 5 labels all match (the package's
  "rrg" labels: positive or uncertain counts as present);
- ``radgraph_f1_simple`` / ``radgraph_f1_partial`` / ``radgraph_f1_complete``: the package's
  reward levels (RG_E entities, RG_ER entities with their relations - the one papers report -,
  RG_ER-bar), mean over reports, with the RadGraph-XL model (`RADGRAPH_MODEL`);
- ``f1chexbert`` / ``radgraph``: the "not computed: ..." string instead, when that scorer is missing.

The loaded scorers are kept per process (`_LOADED`), so the model and a baseline share them.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)

SCORERS = ("f1chexbert", "radgraph")  # medvlm.config.FieldScorer
INSTALL = "pip install 'medvlm[clinical-scorers]'"
HUB_REPO = "StanfordAIMI/RRG_scorers"  # where both packages download their weights from
CHEXBERT_FILE = "chexbert.pth"
CHEXBERT_TEXT_MODEL = "bert-base-uncased"  # the package reads its tokenizer and config from the HF cache
RADGRAPH_MODEL = "radgraph-xl"  # the package's default model
RADGRAPH_FILES = ("config.json", "weights.th")  # of the extracted <folder>/radgraph-xl/

_LOADED: dict[tuple[str, str | None], object] = {}  # (name, weights folder) -> scorer(references, hypotheses)
_REPORTED: set[str] = set()  # "not computed" reasons already logged


class NotComputed(Exception):
    """Why a scorer gives no numbers here (its message follows "not computed: ")."""


def field_scores(references: list[str], hypotheses: list[str], names, weights: str | None = None) -> dict:
    """The scores of each scorer in `names` (see the module docstring for the keys); a scorer that
    cannot run here gives ``{name: "not computed: <why>"}`` instead. `weights`: a local folder
    holding the weights (eval.field_scorer_weights), looked in before the packages' own caches."""
    scores: dict = {}
    for name in dict.fromkeys(names):
        try:
            if not references:
                raise NotComputed("no reports to score")
            scores.update(_score(name, references, hypotheses, weights))
        except NotComputed as reason:
            scores[name] = f"not computed: {reason}"
            if scores[name] not in _REPORTED:
                _REPORTED.add(scores[name])
                logger.warning("%s %s", name, scores[name])
    return scores


def _score(name: str, references: list[str], hypotheses: list[str], weights: str | None) -> dict:
    if name not in LOADERS:
        raise ValueError(f"unknown field scorer {name!r}; known: {', '.join(SCORERS)}")
    key = (name, weights)
    if key not in _LOADED:
        _LOADED[key] = LOADERS[name](weights)
    try:
        return _LOADED[key](list(references), list(hypotheses))
    except Exception as error:  # noqa: BLE001 - a scorer that breaks must not lose the rest of the evaluation
        raise NotComputed(f"{name} failed while scoring ({_first_line(error)})") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def _import(package: str):
    """The package and its inner module of the same name (where its cache folder is set)."""
    try:
        with warnings.catch_warnings():  # f1chexbert switches every warning of the process off on import
            return importlib.import_module(package), importlib.import_module(f"{package}.{package}")
    except ImportError as error:
        if error.name == package:
            raise NotComputed(f"package {package} not installed ({INSTALL})") from None
        raise NotComputed(f"package {package} cannot be imported ({_first_line(error)}; {INSTALL})") from None


@contextlib.contextmanager
def _offline():
    """The Hugging Face hub switched off (environment and huggingface_hub's own flag, which it
    reads once at import), so loading reads local files only; restored afterwards."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: "1" for name in names})
    try:
        from huggingface_hub import constants
    except ImportError:
        constants = None
    flag = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = flag
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _hub_cached(filename: str, cache_dir: str | None = None) -> Path | None:
    """`filename` of HUB_REPO in a Hugging Face cache (the default one unless `cache_dir`), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(HUB_REPO, filename, cache_dir=cache_dir)
    except Exception:  # noqa: BLE001 - no hub library, or an unreadable cache: not there
        return None
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def _folders(weights: str | None, package_cache: str) -> list[Path]:
    """Where to look, in order: the configured folder, then the package's own cache folder."""
    if weights is not None and not Path(weights).expanduser().is_dir():
        raise NotComputed(f"eval.field_scorer_weights={weights!r} is not a folder")
    return [*([Path(weights).expanduser()] if weights is not None else []), Path(package_cache)]


def _missing(name: str, tried: list[str], how: str, error: BaseException | None = None) -> NotComputed:
    seen = f"; {_first_line(error)}" if error is not None else ""
    return NotComputed(f"{name} weights not found locally (tried {', '.join(tried)}{seen}); {how}")


# ------------------------------------------------------------------ F1-CheXbert

CHEXBERT_HOW = (f"download {CHEXBERT_FILE} on a machine that reaches the hub (`hf download {HUB_REPO} "
                f"{CHEXBERT_FILE} --local-dir <folder>`), copy it here and set eval.field_scorer_weights=<folder>; "
                f"the {CHEXBERT_TEXT_MODEL} tokenizer and config must be in the Hugging Face cache too "
                f"(`hf download {CHEXBERT_TEXT_MODEL} config.json vocab.txt tokenizer_config.json`)")


def _load_f1chexbert(weights: str | None):
    package, inner = _import("f1chexbert")
    folders = _folders(weights, inner.CACHE_DIR)
    cached = _hub_cached(CHEXBERT_FILE)
    candidates = [folder / CHEXBERT_FILE for folder in folders] + ([cached] if cached else [])
    found = next((path for path in candidates if path.is_file()), None)
    tried = [str(path) for path in candidates] + ([] if cached else [f"the Hugging Face cache ({HUB_REPO})"])
    if found is None:
        raise _missing("f1chexbert", tried, CHEXBERT_HOW)
    default_folder = inner.CACHE_DIR
    inner.CACHE_DIR = str(found.parent)  # the package reads <CACHE_DIR>/chexbert.pth when it is built
    try:
        with _offline():
            scorer = package.F1CheXbert()
    except OSError as error:  # a file missing from the HF cache (the tokenizer), or an unreadable checkpoint
        raise _missing("f1chexbert", [str(found), f"{CHEXBERT_TEXT_MODEL} in the Hugging Face cache"],
                       CHEXBERT_HOW, error) from None
    except Exception as error:  # noqa: BLE001 - a package that does not load must not end the evaluation
        raise NotComputed(f"f1chexbert could not be loaded ({_first_line(error)})") from None
    finally:
        inner.CACHE_DIR = default_folder
    return lambda references, hypotheses: _chexbert_scores(scorer(hyps=hypotheses, refs=references))


def _chexbert_scores(output) -> dict:
    """The package's (accuracy on 5, per-report accuracy, report on 14, report on 5) as our keys."""
    accuracy, _, report_14, report_5 = output
    return {"f1chexbert_micro_f1_14": float(report_14["micro avg"]["f1-score"]),
            "f1chexbert_macro_f1_14": float(report_14["macro avg"]["f1-score"]),
            "f1chexbert_micro_f1_5": float(report_5["micro avg"]["f1-score"]),
            "f1chexbert_macro_f1_5": float(report_5["macro avg"]["f1-score"]),
            "f1chexbert_accuracy_5": float(accuracy)}


# ------------------------------------------------------------------ RadGraph-F1

RADGRAPH_HOW = (f"download {RADGRAPH_MODEL}.tar.gz on a machine that reaches the hub (`hf download {HUB_REPO} "
                f"{RADGRAPH_MODEL}.tar.gz --local-dir .`), unpack it here (`mkdir -p <folder>/{RADGRAPH_MODEL} && "
                f"tar xzf {RADGRAPH_MODEL}.tar.gz -C <folder>/{RADGRAPH_MODEL}`) and set "
                f"eval.field_scorer_weights=<folder>; the transformer its config.json names must be in the "
                f"Hugging Face cache too")


def _radgraph_folder(folder: Path) -> bool:
    """True when `folder` (a radgraph model_cache_dir) holds the model unpacked, or its archive
    in the hub cache layout the package unpacks from."""
    unpacked = folder / RADGRAPH_MODEL
    return all((unpacked / name).is_file() for name in RADGRAPH_FILES) or (
        _hub_cached(f"{RADGRAPH_MODEL}.tar.gz", str(folder)) is not None)


def _load_radgraph(weights: str | None):
    package, inner = _import("radgraph")
    folders = _folders(weights, inner.CACHE_DIR)
    found = next((folder for folder in folders if _radgraph_folder(folder)), None)
    if found is None:  # checked first: the package would leave an empty model folder behind
        raise _missing("radgraph", [str(folder / RADGRAPH_MODEL) for folder in folders], RADGRAPH_HOW)
    try:
        with _offline():
            scorer = package.F1RadGraph(reward_level="all", model_type=RADGRAPH_MODEL, model_cache_dir=str(found))
    except OSError as error:  # the transformer's files missing from the HF cache
        text_model = _radgraph_text_model(found / RADGRAPH_MODEL)
        raise _missing("radgraph", [str(found / RADGRAPH_MODEL), f"{text_model} in the Hugging Face cache"],
                       RADGRAPH_HOW, error) from None
    except Exception as error:  # noqa: BLE001 - a package that does not load must not end the evaluation
        raise NotComputed(f"radgraph could not be loaded ({_first_line(error)})") from None
    return lambda references, hypotheses: _radgraph_scores(scorer(refs=references, hyps=hypotheses))


def _radgraph_text_model(model_dir: Path) -> str:
    """The transformer the unpacked model's config.json names (for the message), or a description."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
        return str(config["dataset_reader"]["token_indexers"]["bert"]["model_name"])
    except Exception:  # noqa: BLE001 - only for a message
        return "the transformer its config.json names"


def _radgraph_scores(output) -> dict:
    """The package's (mean rewards (simple, partial, complete), per report, annotations) as our keys."""
    simple, partial, complete = output[0]
    return {"radgraph_f1_simple": float(simple), "radgraph_f1_partial": float(partial),
            "radgraph_f1_complete": float(complete)}


LOADERS = {"f1chexbert": _load_f1chexbert, "radgraph": _load_radgraph}  # name -> loader(weights folder)
