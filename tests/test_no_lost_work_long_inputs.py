"""Issue 15, inputs longer than the model: prompts and reports longer than the text tower's
positions are cut, with a warning that counts them (once per process), never an index error; the
processor's max_length never exceeds the model's positions."""

import logging

import numpy as np
import pytest
import torch

from medvlm.data.images import ImageTransform
from medvlm.modeling import MedVLMForConditionalGeneration
from medvlm.modeling.losses import IGNORE_INDEX
from medvlm import processing
from medvlm.processing import MedVLMProcessor
from medvlm.tasks.vqa import answer_questions
from medvlm.tokenization import train_report_tokenizer
from tiny import tiny_config

CORPUS = ["no acute cardiopulmonary process.", "heart size is normal.", "small left pleural effusion.",
          "is there a pneumothorax?", "which side is the effusion on?", "yes", "no", "left"] * 3
LONG_QUESTION = " ".join(["is there any sign of a small left pleural effusion or of a pneumothorax"] * 3)  # 42 words
IMAGE = np.zeros((32, 32), np.float32)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_report_tokenizer(CORPUS, tmp_path_factory.mktemp("tok"), vocab_size=60)


@pytest.fixture(scope="module")
def model(tokenizer):
    config = tiny_config(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return MedVLMForConditionalGeneration(config).eval()  # 64 text positions


def processor_for(tokenizer, model, max_length=None):
    processor = MedVLMProcessor(tokenizer, ImageTransform(32), max_length=max_length or model.max_text_positions())
    return processor.limit_max_length(model.max_text_positions())


@pytest.fixture(autouse=True)
def warnings_not_yet_given():
    """Each kind of cut is reported once per process; every test here starts before the first."""
    processing._WARNED.clear()


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "medvlm.processing"]


def test_a_42_word_question_gets_an_answer_and_a_warning(tokenizer, model, caplog):
    assert len(LONG_QUESTION.split()) == 42
    processor = processor_for(tokenizer, model)
    assert len(tokenizer(LONG_QUESTION)["input_ids"]) > model.max_text_positions()  # an IndexError before
    with caplog.at_level(logging.WARNING, logger="medvlm.processing"):
        answers = answer_questions(model, processor, [IMAGE, IMAGE], [LONG_QUESTION, "is there a pneumothorax?"])
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert warnings_of(caplog) == ["1 of 2 questions are longer than the 48 prompt tokens the model has room for "
                                   "(max_length=64, 16 kept for the answer) and were cut (said once per process)"]


def test_max_length_beyond_the_positions_is_lowered_to_them(tokenizer, model, caplog):
    with caplog.at_level(logging.WARNING, logger="medvlm.processing"):
        processor = processor_for(tokenizer, model, max_length=128)
    assert processor.max_length == model.max_text_positions() == 64
    assert "max_length=128 is more than the text tower's 64 positions" in warnings_of(caplog)[0]
    assert processor.limit_max_length(None).max_length == 64  # no limit known: unchanged


def test_long_reports_are_cut_with_one_counting_warning(tokenizer, model, caplog):
    processor = processor_for(tokenizer, model)
    reports = [" ".join(CORPUS[:3] * 12), "heart size is normal.", " ".join(CORPUS[:3] * 8)]
    with caplog.at_level(logging.WARNING, logger="medvlm.processing"):
        batch = processor(images=[IMAGE] * 3, text=reports)
    assert batch["input_ids"].shape[1] == 64
    assert warnings_of(caplog) == ["2 of 3 texts are longer than max_length=64 tokens and were cut (said once per process)"]
    with torch.no_grad():
        out = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels", "pixel_values")})
    assert torch.isfinite(out.loss)


def test_short_texts_pass_without_a_warning(tokenizer, model, caplog):
    processor = processor_for(tokenizer, model)
    with caplog.at_level(logging.WARNING, logger="medvlm.processing"):
        texts = processor.texts(["heart size is normal.", "no"])
        prompts = processor.prompts(["is there a pneumothorax?"])
    assert not warnings_of(caplog)
    assert texts["input_ids"].shape[1] < 64 and prompts["input_ids"][0, -1] == tokenizer.sep_token_id


def test_a_long_question_is_cut_before_its_answer(tokenizer, model, caplog):
    processor = processor_for(tokenizer, model)
    with caplog.at_level(logging.WARNING, logger="medvlm.processing"):
        batch = processor.texts(["left", "yes"], prompts=[LONG_QUESTION, "which side is the effusion on?"])
    assert batch["input_ids"].shape[1] == 64
    assert warnings_of(caplog) == ["1 of 2 question + answer pairs are longer than max_length=64 tokens and were cut "
                                   "(said once per process)"]
    answer = tokenizer("left", add_special_tokens=False)["input_ids"]
    kept = batch["labels"][0][batch["labels"][0] != IGNORE_INDEX].tolist()
    assert kept == answer + [tokenizer.eos_token_id]  # the loss still sees the whole answer


def test_an_answer_longer_than_max_length_is_cut_too(tokenizer, model):
    processor = processor_for(tokenizer, model)
    batch = processor.texts([" ".join(CORPUS[:3] * 12)], prompts=["is there a pneumothorax?"])
    assert batch["input_ids"].shape[1] == 64 and (batch["labels"] != IGNORE_INDEX).any()


def test_generation_longer_than_the_positions_stops_at_them(model, caplog):
    pixels = torch.zeros(1, 1, 32, 32)
    with caplog.at_level(logging.WARNING):
        sequences = model.generate(pixel_values=pixels, max_new_tokens=100, min_new_tokens=64)
    positions = model.max_text_positions()
    assert sequences.shape[1] == 1 + positions  # every token fed back had a position; the last is never fed
    assert any("max_new_tokens=100" in r.getMessage() for r in caplog.records)


def test_report_generation_is_quiet_about_attention_masks(model, monkeypatch):
    """Starting from BOS alone, generate gets an all-ones mask (same tokens as passing it), and the
    text tower, which gets no mask exactly when none is needed, does not warn about pad ids (the
    filler fed to finished sequences)."""
    pixels = torch.rand(2, 1, 32, 32)
    bos = torch.full((2, 1), model.config.bos_token_id)
    implicit = model.generate(pixel_values=pixels, max_new_tokens=6, num_beams=2)
    explicit = model.generate(pixel_values=pixels, input_ids=bos, attention_mask=torch.ones_like(bos),
                              max_new_tokens=6, num_beams=2)
    assert torch.equal(implicit, explicit)
    import transformers.modeling_utils

    said = []
    monkeypatch.setattr(transformers.modeling_utils.logger, "warning_once", lambda *a, **k: said.append(a))
    with_pad = torch.tensor([[model.config.bos_token_id, 5, model.config.pad_token_id]])
    model.model.text(with_pad, None, None, None)
    assert said == []
