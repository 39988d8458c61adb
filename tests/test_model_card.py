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
