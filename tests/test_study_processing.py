"""Records of studies become model batches: every view and the prior as slots, padded per batch."""

import numpy as np
import pytest
import torch

from medvlm.data.images import ImageTransform
from medvlm.data.records import make_prior, make_record
from medvlm.processing import Collator, MedVLMProcessor, RecordDataset, is_study_set, view_id
from medvlm.modeling import MedVLMForConditionalGeneration
from medvlm.tasks.report_generation import generate_reports
from medvlm.tokenization import train_report_tokenizer
from tests.tiny import tiny_config


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    reports = ["Small left pleural effusion.", "No pneumothorax. Heart size is normal.", "Unchanged cardiomegaly."]
    return train_report_tokenizer(reports * 20, tmp_path_factory.mktemp("tok"), vocab_size=60)


def _image(value: int) -> np.ndarray:
    return np.full((40, 40), value, dtype=np.uint8)


def _records():
    prior = make_prior(images=[{"image": _image(10), "view": "PA"}], text="old report", study_id="p1")
    return [
        make_record(text="two views and a prior", study_id="s1", split="test", prior=prior,
                    images=[{"image": _image(200), "view": "LATERAL"}, {"image": _image(100), "view": "PA"}]),
        make_record(text="one view", study_id="s2", split="test", image=_image(50), view="AP"),
    ]


def test_view_ids_follow_the_view_kinds():
    assert [view_id(v) for v in ("PA", "ap", "LATERAL", "LL", "", "SWIMMERS")] == [1, 1, 2, 2, 3, 3]


def test_a_study_set_gives_every_view_and_the_prior_padded_per_batch(tokenizer):
    records = _records()
    assert is_study_set(records) and not is_study_set(records[1:])
    processor = MedVLMProcessor(tokenizer, ImageTransform(32), max_length=16)
    dataset = RecordDataset(records, processor)
    first = dataset[0]
    assert first["pixel_values"].shape == (3, 1, 32, 32)
    assert first["image_views"].tolist() == [1, 2, 1]  # frontal first, then lateral, then the prior
    assert first["image_is_prior"].tolist() == [False, False, True]
    # the frontal slot holds the frontal pixels (brighter lateral comes second)
    assert first["pixel_values"][0].mean() < first["pixel_values"][1].mean()
    batch = Collator(processor)([dataset[0], dataset[1]])
    assert batch["pixel_values"].shape == (2, 3, 1, 32, 32)
    assert batch["image_views"].tolist() == [[1, 2, 1], [1, 0, 0]]
    assert batch["image_is_prior"].tolist() == [[False, False, True], [False, False, False]]
    # a set of single images reads as before: one (C, S, S) image per item
    single = RecordDataset(records[1:], processor)
    assert single[0]["pixel_values"].shape == (1, 32, 32) and "image_views" not in single[0]
    assert RecordDataset(records, processor, studies=False)[0]["pixel_values"].shape == (1, 32, 32)


def test_reports_are_generated_per_study(tokenizer):
    model = MedVLMForConditionalGeneration(tiny_config(vocab_size=len(tokenizer))).eval()
    processor = MedVLMProcessor(tokenizer, ImageTransform(32), max_length=16)
    reports = generate_reports(model, processor, _records(), batch_size=2, max_new_tokens=3)
    assert len(reports) == 2
    study = processor.study([_image(1), _image(2)], ["PA", "LATERAL"], [_image(3)])
    assert study["pixel_values"].shape == (1, 3, 1, 32, 32)
    assert study["image_views"].tolist() == [[1, 2, 1]] and study["image_is_prior"].tolist() == [[False, False, True]]
    assert model.generate(**study, max_new_tokens=3).shape[0] == 1


def test_shuffled_priors_come_from_other_patients_and_each_is_used_once():
    from medvlm.tasks.report_generation import with_shuffled_priors

    records = []
    for i in range(6):
        prior = make_prior(images=[{"image": _image(i), "view": "PA"}], text=f"prior {i}", study_id=f"p{i}") if i != 2 else None
        records.append(make_record(text=f"r{i}", study_id=f"s{i}", subject_id=f"patient{i}", split="test",
                                   image=_image(i), view="PA", prior=prior))
    shuffled = with_shuffled_priors(records, seed=1)
    assert shuffled[2]["prior"] is None
    moved = [r["prior"]["text"] for r in shuffled if r["prior"]]
    assert sorted(moved) == sorted(r["prior"]["text"] for r in records if r["prior"])
    assert all(s["prior"]["text"] != r["prior"]["text"] for s, r in zip(shuffled, records) if r["prior"])
    assert [r["text"] for r in shuffled] == [r["text"] for r in records]


def test_a_prior_report_processor_trains_and_generates_after_the_prior_impression(tokenizer, tmp_path):
    processor = MedVLMProcessor(tokenizer, ImageTransform(32), max_length=48, prior_report=True)
    records = _records()
    records[0]["prior"]["impression"] = "Small left pleural effusion."
    dataset = RecordDataset(records, processor)
    assert dataset[0]["prior_report"] == "Small left pleural effusion." and dataset[1]["prior_report"] == ""
    batch = Collator(processor)([dataset[0], dataset[1]])
    sep = tokenizer.sep_token_id
    for row in range(2):  # the prompt (up to <sep>) is not trained on; the report after it is
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        at = int((ids == sep).nonzero()[0])
        assert (labels[: at + 1] == -100).all() and (labels[at + 1:] != -100).any()
    processor.save_pretrained(tmp_path)
    assert MedVLMProcessor.from_pretrained(tmp_path).prior_report
    model = MedVLMForConditionalGeneration(tiny_config(vocab_size=len(tokenizer))).eval()
    seen = []
    original = model.generate
    model.generate = lambda **kw: seen.append(kw["input_ids"]) or original(**kw)
    reports = generate_reports(model, processor, records, batch_size=2, max_new_tokens=3)
    assert len(reports) == 2
    prompts = processor.prompts(["Small left pleural effusion.", ""], reserve=3)["input_ids"]
    assert torch.equal(seen[0], prompts)  # each study's report is written after its prior's impression
