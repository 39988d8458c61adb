"""VQA: scores (normalised exact match, token F1, majority baselines), answer-only loss,
fine-tuning and evaluation on synthetic questions, `medvlm vqa`, and the VQA-RAD sample."""

import json
import math
from pathlib import Path

import pytest

from medvlm.cli import main
from medvlm.metrics.vqa import majority_answers, normalize_answer, token_f1, vqa_scores
from tiny import ROOT, TINY, load_script

VQA_RAD_SAMPLE = ROOT.parent / "shared" / "data" / "vqa_rad_sample"
TINY_VQA = [t for t in TINY if not t.startswith("data.options")] + [
    "data.options={num_train: 12, num_validation: 4, num_test: 6, seed: 3, vqa: true, questions_per_study: 2}",
    "model.contrastive_weight=0.0", "model.caption_weight=1.0"]


def test_normalize_answer():
    assert normalize_answer("Yes.") == "yes" and normalize_answer(" NO ") == "no"
    assert normalize_answer("True") == "yes"
    assert normalize_answer("The left lung") == "left lung"
    assert normalize_answer("two") == normalize_answer(2) == "2"
    assert normalize_answer("2.5 cm") == "2.5 cm"
    assert normalize_answer("Right-sided, upper lobe!") == "right sided upper lobe"
    assert normalize_answer("patient's  heart") == "patients heart"
    assert normalize_answer("none") == "none"


def test_vqa_scores_normalise_answers():
    scores = vqa_scores(["Yes.", "two", "left lung", "small"], ["yes", "2", "left upper lung", "Moderate"],
                        ["closed", "open", "open", "open"])
    assert scores["vqa_closed_acc"] == 1.0
    assert scores["vqa_open_acc"] == pytest.approx(1 / 3)  # "two" == "2"; the others differ
    assert scores["vqa_overall_acc"] == 0.5
    assert scores["vqa_open_f1"] == pytest.approx((1.0 + token_f1("left lung", "left upper lung") + 0.0) / 3)
    assert token_f1("left lung", "left upper lung") == pytest.approx(0.8)
    assert vqa_scores(["a"], ["a"], ["open"])["vqa_closed_acc"] is None  # no closed questions


def test_majority_baselines():
    train_q = ["is there x?", "is there x?", "is there x?", "where?", "is there y?"]
    train_a = ["no", "no", "yes", "left", "yes"]
    types = ["closed", "closed", "closed", "open", "closed"]
    guesses = majority_answers(train_q, train_a, types, ["Is there x?", "is there z?", "where?"],
                               ["closed", "closed", "open"])
    assert guesses["majority"] == ["no", "no", "left"]  # most frequent answer per answer type
    assert guesses["question_majority"] == ["no", "no", "left"]  # unseen question falls back to its type


def test_synthetic_vqa_records_train_on_the_answer():
    from medvlm.data.synthetic import synthetic_vqa_records

    records = synthetic_vqa_records(6, seed=1, image_size=32)
    assert all(r["text"] == r["answer"] and r["report"].startswith("FINDINGS:") for r in records)
    assert {r["answer_type"] for r in records} <= {"closed", "open"}


def test_prompt_tokens_carry_no_loss(pretrained):
    from medvlm.modeling.losses import IGNORE_INDEX
    from medvlm.processing import MedVLMProcessor

    processor = MedVLMProcessor.from_pretrained(pretrained)
    batch = processor.texts(["yes", "left"], prompts=["is there a pleural effusion?", "which side?"])
    tokenizer = processor.tokenizer
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        sep = ids.tolist().index(tokenizer.sep_token_id)
        assert (labels[: sep + 1] == IGNORE_INDEX).all()
        kept = labels[labels != IGNORE_INDEX]
        assert tokenizer.decode(kept, skip_special_tokens=True).strip() in ("yes", "left")


def test_finetune_eval_and_answer_on_synthetic_questions(pretrained, tmp_path, capsys):
    out = tmp_path / "vqa"
    assert load_script("train").main(["--config", str(ROOT / "configs/vqa_demo.yaml"), f"train.output_dir={out}",
                                      f"train.init_from={pretrained}", "train.max_steps=2", "train.eval_every=2",
                                      "train.save_every=0", *TINY_VQA]) == 0
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("val_vqa_overall_acc" in r and "val_vqa_open_recall" in r for r in log)  # the evaluator answers
    assert any("val_loss" in r for r in log)  # and the validation loss (answer tokens) is computed
    final = out / "final"
    assert main(["eval", "--checkpoint", str(final)]) == 0
    metrics = json.loads((final.parent / "final-eval" / "metrics.json").read_text())
    for key in ("vqa_closed_acc", "vqa_open_acc", "vqa_overall_acc", "vqa_open_f1", "vqa_closed_acc_likelihood",
                "vqa_open_recall", "baselines.majority.vqa_closed_acc", "baselines.question_majority.vqa_overall_acc",
                "baselines.question_majority.vqa_open_recall", "baselines.blank_image.vqa_closed_acc_likelihood"):
        assert key in metrics, key
    rows = [json.loads(line) for line in (final.parent / "final-eval" / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == metrics["num_samples"] and {"question", "answer", "predicted"} <= set(rows[0])

    from medvlm.data.synthetic import make_study
    from PIL import Image

    image = tmp_path / "x.png"
    Image.fromarray(make_study(0, image_size=32)["image"]).save(image)
    capsys.readouterr()
    assert main(["vqa", "--checkpoint", str(final), "--image", str(image), "--question", "Is there a pneumothorax?",
                 "--question", "Which side is the pleural effusion on?"]) == 0
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [a["question"] for a in answers] == ["Is there a pneumothorax?", "Which side is the pleural effusion on?"]
    assert all(isinstance(a["answer"], str) for a in answers)


@pytest.mark.skipif(not VQA_RAD_SAMPLE.is_dir(), reason="../shared/data/vqa_rad_sample is absent")
def test_vqa_rad_sample_loads_fine_tunes_one_epoch_and_scores_the_held_out_images(pretrained, tmp_path):
    from medvlm.data.vqa import load_vqa_rad

    records = load_vqa_rad(VQA_RAD_SAMPLE, validation_fraction=0.15, test_fraction=0.2)  # the preset's split
    train = [r for r in records if r["split"] == "train"]
    assert len(records) == 225 and train and {r["split"] for r in records} == {"train", "validation", "test"}
    assert {r["answer_type"] for r in records} == {"closed", "open"}
    assert all(Path(r["image"]).is_file() and r["text"] == r["answer"] for r in records)
    batch_size = 32
    out = tmp_path / "vqa_rad"
    overrides = [t for t in TINY if not t.startswith(("data.options", "train.batch_size", "train.eval"))]
    assert main(["train", "--config", str(ROOT / "configs/vqa_rad.yaml"), f"data.root={VQA_RAD_SAMPLE}",
                 f"train.init_from={pretrained}",
                 f"train.output_dir={out}", f"train.batch_size={batch_size}",
                 f"train.max_steps={math.ceil(len(train) / batch_size)}",  # one epoch
                 "train.eval_every=3", "train.save_every=0", *overrides]) == 0  # the preset's early stopping on
    assert (out / "final" / "model.safetensors").is_file()
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in log if "loss" in r)
    assert any(math.isfinite(r.get("val_loss", math.nan)) for r in log)
    stopping = json.loads((out / "run_info.json").read_text())["early_stopping"]
    assert stopping["metric"] == "val_vqa_overall_acc"  # the preset's: an accuracy, maximised
    evaluated = {r["step"]: r[stopping["metric"]] for r in log if stopping["metric"] in r}
    assert stopping["best_step"] == max(evaluated, key=lambda step: (evaluated[step], -step))  # the first of equals
    # the preset's eval.split is test: images neither training nor early stopping saw, scored
    # against baselines fitted on train
    assert main(["eval", "--checkpoint", str(out / "final")]) == 0
    metrics = json.loads((out / "final-eval" / "metrics.json").read_text())
    held_out = [r for r in records if r["split"] == "test"]
    assert metrics["num_samples"] == len(held_out)
    seen = {Path(r["image"]).name for r in records if r["split"] != "test"}
    assert seen.isdisjoint(Path(r["image"]).name for r in held_out)
    assert metrics["vqa_closed_candidates"] >= 2 and metrics["vqa_closed_acc_likelihood"] is not None


@pytest.mark.skipif(not VQA_RAD_SAMPLE.is_dir(), reason="../shared/data/vqa_rad_sample is absent")
def test_vqa_rad_test_fraction_holds_out_whole_images_and_leaves_the_old_split_alone():
    from medvlm.data.vqa import load_vqa_rad
    from medvlm.errors import UserError

    old = load_vqa_rad(VQA_RAD_SAMPLE, validation_fraction=0.2)
    assert [r["split"] for r in load_vqa_rad(VQA_RAD_SAMPLE, validation_fraction=0.2, test_fraction=0.0)] == \
        [r["split"] for r in old]
    records = load_vqa_rad(VQA_RAD_SAMPLE, validation_fraction=0.15, test_fraction=0.2)
    images = {split: {Path(r["image"]).name for r in records if r["split"] == split} for split in ("train", "validation", "test")}
    assert all(images.values())
    assert not (images["train"] & images["test"] or images["validation"] & images["test"]
                or images["train"] & images["validation"])
    with pytest.raises(UserError, match="test_fraction"):
        load_vqa_rad(VQA_RAD_SAMPLE, validation_fraction=0.5, test_fraction=0.5)
