import json
from pathlib import Path

from medvlm.config import load_config
from medvlm.model_card import model_card

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_model_card_names_the_kind_of_model_and_the_synthetic_caveat():
    report = model_card(load_config(CONFIGS / "demo.yaml"), {"bleu_4": 0.5, "ci.bleu_4": [0.45, 0.55]}, "test")
    assert "CoCa-style" in report and "| bleu_4 | 0.500 [0.450, 0.550] |" in report
    assert "nothing about performance on real chest X-rays" in report
    chexnet = model_card(load_config(CONFIGS / "chexnet.yaml"), {"auroc_mean": 0.9}, "test")
    assert "CheXNet-style" in chexnet and "CoCa" not in chexnet and "| auroc_mean | 0.900 |" in chexnet


def test_run_info_is_updated_in_place_and_the_card_can_be_written_under_another_name(tmp_path):
    from medvlm.model_card import update_run_info, write_model_card, write_run_info

    write_run_info(tmp_path, load_config(CONFIGS / "demo.yaml"))
    update_run_info(tmp_path, skipped={"training": {"total": 1, "missing_file": 1}})
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["skipped"]["training"]["missing_file"] == 1 and "config" in info and "started" in info
    path = write_model_card(tmp_path, None, {"bleu_4": 0.25}, "test", name="model_card.md")
    assert path.name == "model_card.md" and "| bleu_4 | 0.250 |" in path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_card.md", "run_info.json"]  # no temporaries
