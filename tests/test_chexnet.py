"""CheXNet: the class-weighted loss, the model contract (gradients, save/load, Auto classes),
training/eval/explain from the command line, and labelled data (ChestX-ray14 layout, CSV)."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageClassification

from medvlm.cli import main
from medvlm.data.chestxray14 import CHESTXRAY14_LABELS, load_chestxray14, parse_finding_labels
from medvlm.data.records import DataError
from medvlm.modeling import CheXNetConfig, CheXNetForImageClassification
from medvlm.modeling.modeling_chexnet import class_weighted_bce
from medvlm.tasks.classification import LabelCollator, positive_fraction
from tiny import ROOT

TINY_DENSENET = {"model_name": "densenet121", "img_size": 32, "in_chans": 1,
                 "timm_kwargs": {"growth_rate": 8, "block_config": [1, 1, 1, 1]}}
TINY = ["data.options={num_train: 24, num_validation: 8, num_test: 16, seed: 3}", "data.image_size=32",
        "model.vision.timm_kwargs={growth_rate: 8, block_config: [1, 1, 1, 1]}", "train.batch_size=8",
        "train.log_every=1", "train.warmup_steps=1", "eval.batch_size=8"]


def test_class_weighted_bce_matches_the_paper_formula():
    logits = torch.tensor([[0.3, -1.0], [2.0, 0.5]])
    targets = torch.tensor([[1.0, 0.0], [0.0, float("nan")]])
    f = torch.tensor([0.2, 0.4])
    p = torch.sigmoid(logits)
    by_hand = (-(1 - f[0]) * torch.log(p[0, 0]) - f[1] * torch.log(1 - p[0, 1]) - f[0] * torch.log(1 - p[1, 0])) / 3
    assert class_weighted_bce(logits, targets, f) == pytest.approx(float(by_hand), rel=1e-5)
    plain = torch.nn.functional.binary_cross_entropy_with_logits(logits[0], targets[0])
    assert class_weighted_bce(logits[:1], targets[:1]) == pytest.approx(float(plain), rel=1e-5)


def test_model_gradients_save_load_and_auto_class(tmp_path):
    torch.manual_seed(0)
    config = CheXNetConfig(vision=TINY_DENSENET, positive_fraction=[0.3] * 14)
    model = CheXNetForImageClassification(config)
    pixels = torch.randn(3, 1, 32, 32)
    labels = torch.randint(0, 2, (3, 14)).float()
    out = model(pixels, labels=labels)
    assert out.logits.shape == (3, 14) and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.save_pretrained(str(tmp_path))
    for loaded in (CheXNetForImageClassification.from_pretrained(str(tmp_path)),
                   AutoModelForImageClassification.from_pretrained(str(tmp_path))):
        assert isinstance(loaded, CheXNetForImageClassification)
        assert loaded.config.label_names == config.label_names and loaded.config.positive_fraction == [0.3] * 14
        model.eval(), loaded.eval()
        assert torch.allclose(model(pixels).logits, loaded(pixels).logits, atol=1e-6)
    from medvlm.explain.targets import default_layer

    assert default_layer(model) == "vision.backbone.features.denseblock3"  # the stride-16 stage
    assert default_layer(model, max_stride=None) == "vision.backbone.features.norm5"


def test_label_collator_and_class_weights():
    items = [{"pixel_values": torch.zeros(1, 4, 4), "labels": torch.tensor([1.0, -1.0, float("nan")])},
             {"pixel_values": torch.zeros(1, 4, 4)}]  # a record without labels
    batch = LabelCollator(3, "negative")(items + [None])
    assert batch["labels"][0].tolist() == [1.0, 0.0, 0.0]  # uncertain -> 0, not mentioned -> 0
    assert torch.isnan(batch["labels"][1]).all()  # no labels: ignored by the loss
    assert torch.isnan(LabelCollator(3, "ignore")(items)["labels"][0, 1])
    records = [{"labels": [1.0, 0.0, np.nan]}, {"labels": [0.0, 0.0, 1.0]}, {"labels": None}]
    assert positive_fraction(records, 3) == [0.5, 0.0, 0.5]


def test_train_eval_and_explain_from_the_command_line(tmp_path):
    out = tmp_path / "chexnet"
    assert main(["train", "--config", str(ROOT / "configs/chexnet.yaml"), f"train.output_dir={out}",
                 "train.max_steps=2", "train.eval_every=2", "train.save_every=0", "train.eval_samples=8", *TINY]) == 0
    final = out / "final"
    assert (final / "processor_config.json").is_file() and not (final / "tokenizer.json").exists()
    config = json.loads((final / "config.json").read_text())
    assert config["model_type"] == "chexnet" and len(config["positive_fraction"]) == 14
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss" in r for r in log)

    assert main(["eval", "--checkpoint", str(final)]) == 0
    metrics = json.loads((final.parent / "final-eval" / "metrics.json").read_text())
    assert "auroc_mean" in metrics and "auroc.Pleural Effusion" in metrics
    assert "Pneumonia" in metrics["auroc_skipped"]  # never present in the synthetic data
    assert "explain_pointing_game" in metrics and "explain_iou" in metrics
    assert metrics["baselines.random.auroc_mean"] == 0.5
    assert (final.parent / "final-eval" / "predictions.csv").is_file()

    from medvlm.data.synthetic import make_study

    image = tmp_path / "x.png"
    Image.fromarray(make_study(1, image_size=32)["image"]).save(image)
    assert main(["explain", str(image), "--checkpoint", str(final), "--out", str(tmp_path / "ex"),
                 "--target", "Cardiomegaly,Pleural Effusion"]) == 0
    assert (tmp_path / "ex" / "x_gradcam_Cardiomegaly.png").is_file()
    assert (tmp_path / "ex" / "x_gradcam_Pleural_Effusion.png").is_file()
    assert main(["explain", str(image), "--checkpoint", str(final), "--target", "Nope"]) == 2


def write_chestxray14(root, kaggle: bool = False, official: bool = True):
    rows = [("00000001_000.png", "Cardiomegaly", "1"), ("00000001_001.png", "Cardiomegaly|Effusion", "1"),
            ("00000002_000.png", "No Finding", "2"), ("00000003_000.png", "Hernia", "3"),
            ("00000004_000.png", "Mass|Nodule", "4")]
    folder = root / ("images_001/images" if kaggle else "images")
    folder.mkdir(parents=True)
    with open(root / "Data_Entry_2017.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
                         "Patient Gender", "View Position", "OriginalImage[Width", "Height]"])
        for name, labels, patient in rows:
            writer.writerow([name, labels, "0", patient, "50", "M", "PA", "64", "64"])
            Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(folder / name)
    if official:
        (root / "test_list.txt").write_text("00000004_000.png\n")
        (root / "train_val_list.txt").write_text("\n".join(r[0] for r in rows[:4]) + "\n")


@pytest.mark.parametrize("kaggle", [False, True])
def test_chestxray14_layout(tmp_path, kaggle):
    write_chestxray14(tmp_path, kaggle)
    records = load_chestxray14(tmp_path, validation_fraction=0.0)
    assert len(records) == 5 and [r["split"] for r in records].count("test") == 1
    by_id = {r["study_id"]: r for r in records}
    effusion = by_id["00000001_001"]["labels"]
    assert effusion[CHESTXRAY14_LABELS.index("Effusion")] == 1.0 and sum(effusion) == 2.0
    assert sum(by_id["00000002_000"]["labels"]) == 0.0 and by_id["00000002_000"]["subject_id"] == "2"
    assert by_id["00000004_000"]["split"] == "test"
    assert parse_finding_labels("Pleural_Thickening")[CHESTXRAY14_LABELS.index("Pleural_Thickening")] == 1.0
    with pytest.raises(DataError, match="Pneumonitis"):
        parse_finding_labels("Pneumonitis", "row 2")


def test_chexnet_trains_on_chestxray14_labels(tmp_path):
    root = tmp_path / "cxr14"
    root.mkdir()
    write_chestxray14(root, official=False)
    out = tmp_path / "run"
    assert main(["train", "--config", str(ROOT / "configs/chexnet.yaml"), f"train.output_dir={out}",
                 "data.dataset=chestxray14", f"data.root={root}", "data.options={split_fractions: [1.0, 0.0, 0.0]}",
                 "train.max_steps=1", "train.eval_every=0", "train.save_every=0", *TINY[1:]]) == 0
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["label_names"] == list(CHESTXRAY14_LABELS)
