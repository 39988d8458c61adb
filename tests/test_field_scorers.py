"""F1-CheXbert and RadGraph-F1 (`eval.field_scorers`): the packages' numbers under our keys when
they are there (stub packages stand in for them), "not computed: <why>" when the package or its
weights are not, and the setting's check. Neither package is needed: the real ones are used only
where installed, for the path with no weights on disk."""

import importlib.util
import json
import os
import sys
import types

import numpy as np
import pytest

from medvlm.config import ConfigError, EvalConfig, load_config
from medvlm.metrics import field_scorers
from medvlm.metrics.field_scorers import field_scores
from medvlm.results import write_results

REFS = ["Small left pleural effusion.", "No acute cardiopulmonary process."]
HYPS = ["Left pleural effusion.", "Normal chest."]


@pytest.fixture(autouse=True)
def fresh_scorers(monkeypatch):
    monkeypatch.setattr(field_scorers, "_LOADED", {})
    monkeypatch.setattr(field_scorers, "_REPORTED", set())


def _report(micro: float, macro: float) -> dict:
    return {"micro avg": {"f1-score": micro}, "macro avg": {"f1-score": macro}, "Edema": {"f1-score": 0.5}}


def _stub_packages(monkeypatch, weights_folder):
    """Stand-ins for f1chexbert and radgraph with the packages' call shapes; they record what
    they were built with and called on."""
    seen = {}

    class F1CheXbert:
        def __init__(self, **kwargs):
            seen["chexbert"] = (chexbert_inner.CACHE_DIR, os.environ.get("HF_HUB_OFFLINE"))

        def __call__(self, hyps, refs):
            seen["chexbert_call"] = (list(refs), list(hyps))
            return 0.5, np.array([1.0, 0.0]), _report(0.25, 0.125), _report(0.75, 0.625)

    class F1RadGraph:
        def __init__(self, reward_level, model_type=None, **kwargs):
            seen["radgraph"] = (reward_level, model_type, kwargs.get("model_cache_dir"), os.environ.get("HF_HUB_OFFLINE"))

        def __call__(self, refs, hyps):
            return (np.float64(0.6), np.float64(0.5), np.float64(0.4)), ([0.6, 0.6], [0.5, 0.5], [0.4, 0.4]), [], []

    chexbert_inner = types.SimpleNamespace(CACHE_DIR="/nowhere/chexbert")
    radgraph_inner = types.SimpleNamespace(CACHE_DIR="/nowhere/radgraph")
    for name, package, inner in (("f1chexbert", types.SimpleNamespace(F1CheXbert=F1CheXbert), chexbert_inner),
                                 ("radgraph", types.SimpleNamespace(F1RadGraph=F1RadGraph), radgraph_inner)):
        monkeypatch.setitem(sys.modules, name, package)
        monkeypatch.setitem(sys.modules, f"{name}.{name}", inner)
    (weights_folder / "chexbert.pth").write_bytes(b"stub")
    (weights_folder / "radgraph-xl").mkdir()
    for name in ("config.json", "weights.th"):
        (weights_folder / "radgraph-xl" / name).write_text("{}")
    return seen, chexbert_inner


def test_the_packages_numbers_come_back_under_their_keys(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    seen, chexbert_inner = _stub_packages(monkeypatch, tmp_path)
    scores = field_scores(REFS, HYPS, ["f1chexbert", "radgraph"], str(tmp_path))
    assert scores == {"f1chexbert_micro_f1_14": 0.25, "f1chexbert_macro_f1_14": 0.125,
                      "f1chexbert_micro_f1_5": 0.75, "f1chexbert_macro_f1_5": 0.625, "f1chexbert_accuracy_5": 0.5,
                      "radgraph_f1_simple": 0.6, "radgraph_f1_partial": 0.5, "radgraph_f1_complete": 0.4}
    assert all(type(v) is float for v in scores.values())
    # built offline, from the configured folder; the package's own setting and the environment restored
    assert seen["chexbert"] == (str(tmp_path), "1") and chexbert_inner.CACHE_DIR == "/nowhere/chexbert"
    assert seen["radgraph"] == ("all", "radgraph-xl", str(tmp_path), "1") and "HF_HUB_OFFLINE" not in os.environ
    assert seen["chexbert_call"] == (REFS, HYPS)
    # one load per process: the second call reuses the scorers
    del seen["chexbert"], seen["radgraph"]
    assert field_scores(REFS, HYPS, ["radgraph", "f1chexbert"], str(tmp_path)) == scores and not seen.keys() & {
        "chexbert", "radgraph"}


def test_evaluate_report_generation_adds_them_for_the_model_and_the_nearest_neighbour(monkeypatch, tmp_path):
    import medvlm.tasks.report_generation as rg

    calls = []
    monkeypatch.setattr(rg, "field_scores", lambda refs, hyps, names, weights: calls.append(
        (list(hyps), list(names), weights)) or {"radgraph_f1_partial": 0.5, "f1chexbert": "not computed: stub"})
    monkeypatch.setattr(rg, "for_generation", lambda model, weights: model)
    monkeypatch.setattr(rg, "generate_reports", lambda model, processor, records, batch_size, **kw: ["gen"] * len(records))
    monkeypatch.setattr(rg, "image_embeddings", lambda model, processor, records, batch_size: np.eye(len(records), 2))
    monkeypatch.setattr(rg, "_scored_with_intervals", lambda refs, reports, *rest: ({"bleu_4": 0.1}, {"bleu_4": [0, 1]}))
    test = [{"text": "Left effusion.", "study_id": 1}, {"text": "Normal.", "study_id": 2}]
    train = [{"text": "Normal."}, {"text": "Right effusion."}]
    cfg = EvalConfig(field_scorers=["radgraph", "f1chexbert"], field_scorer_weights=str(tmp_path))
    metrics = rg.evaluate_report_generation(None, None, test, train, cfg).metrics
    assert metrics["radgraph_f1_partial"] == 0.5 and metrics["f1chexbert"] == "not computed: stub"
    assert metrics["baselines.nearest_neighbour.radgraph_f1_partial"] == 0.5
    assert "baselines.random.radgraph_f1_partial" not in metrics
    assert calls == [(["gen", "gen"], ["radgraph", "f1chexbert"], str(tmp_path)),
                     (["Normal.", "Right effusion."], ["radgraph", "f1chexbert"], str(tmp_path))]
    assert "radgraph_f1_partial" not in rg.evaluate_report_generation(None, None, test, train, EvalConfig()).metrics

    # strings and numbers both survive the writer: metrics.json keeps them, results.md shows them
    write_results(metrics, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["f1chexbert"] == "not computed: stub"
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "| radgraph_f1_partial | 0.5000 |" in markdown and 'f1chexbert: "not computed: stub"' in markdown


def test_a_package_that_is_not_installed_is_not_computed_never_zero(monkeypatch):
    monkeypatch.setitem(sys.modules, "f1chexbert", None)  # what `import f1chexbert` meets when it is absent
    monkeypatch.setitem(sys.modules, "radgraph", None)
    scores = field_scores(REFS, HYPS, ["f1chexbert", "radgraph"])
    assert scores == {
        "f1chexbert": "not computed: package f1chexbert not installed (pip install 'medvlm[clinical-scorers]')",
        "radgraph": "not computed: package radgraph not installed (pip install 'medvlm[clinical-scorers]')"}
    assert field_scores([], [], ["radgraph"]) == {"radgraph": "not computed: no reports to score"}


def test_missing_weights_and_a_failing_scorer_are_not_computed(monkeypatch, tmp_path):
    stocked, empty = tmp_path / "stocked", tmp_path / "empty"
    stocked.mkdir(), empty.mkdir()
    seen, _ = _stub_packages(monkeypatch, stocked)
    monkeypatch.setattr(field_scorers, "_hub_cached", lambda filename, cache_dir=None: None)
    scores = field_scores(REFS, HYPS, ["f1chexbert", "radgraph"], str(empty))
    for name in ("f1chexbert", "radgraph"):
        assert scores[name].startswith(f"not computed: {name} weights not found locally (tried {empty}")
        assert "eval.field_scorer_weights=<folder>" in scores[name]
    assert "chexbert" not in seen and "radgraph" not in seen  # never built without its weights
    assert field_scores(REFS, HYPS, ["radgraph"], str(tmp_path / "typo")) == {
        "radgraph": f"not computed: eval.field_scorer_weights={str(tmp_path / 'typo')!r} is not a folder"}

    class Broken:
        def __init__(self, **kwargs):
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(sys.modules["f1chexbert"], "F1CheXbert", Broken)
    text = field_scores(REFS, HYPS, ["f1chexbert"], str(stocked))["f1chexbert"]
    assert text.startswith("not computed: f1chexbert weights not found locally") and "bert-base-uncased" in text
    field_scorers._LOADED[("radgraph", None)] = lambda refs, hyps: 1 / 0
    assert field_scores(REFS, HYPS, ["radgraph"]) == {
        "radgraph": "not computed: radgraph failed while scoring (ZeroDivisionError: division by zero)"}


@pytest.mark.parametrize("package", ["f1chexbert", "radgraph"])
def test_the_real_package_without_weights_on_disk_is_not_computed(package, monkeypatch, tmp_path):
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (the clinical-scorers extra)")
    import huggingface_hub.constants

    inner = importlib.import_module(f"{package}.{package}")
    monkeypatch.setattr(inner, "CACHE_DIR", str(tmp_path / "package-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "weights").mkdir()
    text = field_scores(REFS, HYPS, [package], str(tmp_path / "weights"))[package]
    assert text.startswith(f"not computed: {package} weights not found locally (tried {tmp_path / 'weights'}")
    assert not (tmp_path / "package-cache").exists()  # nothing left behind


def test_the_setting_names_its_allowed_scorers():
    assert load_config(None, ["eval.field_scorers=[f1chexbert, radgraph]"]).eval.field_scorers == [
        "f1chexbert", "radgraph"]
    assert load_config(None, []).eval.field_scorers == []
    with pytest.raises(ConfigError, match=r"config key 'eval.field_scorers' must be a list, each item one of "
                                          r"'f1chexbert', 'radgraph', got \['bertscore'\]"):
        load_config(None, ["eval.field_scorers=[bertscore]"])
    with pytest.raises(ConfigError, match="unknown config key 'eval.field_scorer_weight'"):
        load_config(None, ["eval.field_scorer_weight=/models"])
    import typing

    from medvlm.config import FieldScorer
    assert typing.get_args(FieldScorer) == field_scorers.SCORERS == tuple(field_scorers.LOADERS)
