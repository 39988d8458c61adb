import json

import numpy as np
import pytest
import torch

from medvlm.data.images import ImageTransform
from medvlm.modeling.losses import IGNORE_INDEX
from medvlm.processing import Collator, MedVLMProcessor, RecordDataset, text_key
from medvlm.tokenization import SPM_FILE, load_tokenizer, train_report_tokenizer

REPORTS = [
    "FINDINGS: No pleural effusion or pneumothorax. The heart size is normal. IMPRESSION: No acute process.",
    "FINDINGS: Small left pleural effusion. Moderate cardiomegaly. IMPRESSION: Left effusion, cardiomegaly.",
    "FINDINGS: Right upper lobe opacity. No pneumothorax. IMPRESSION: Right upper lobe pneumonia.",
] * 20


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_report_tokenizer(REPORTS, tmp_path_factory.mktemp("tok"), vocab_size=120)


def test_tokenizer_round_trip_and_special_tokens(tokenizer, tmp_path):
    ids = tokenizer("Small left pleural effusion.")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "small left pleural effusion."
    tokenizer.save_pretrained(tmp_path)
    reloaded = load_tokenizer(tmp_path)
    assert reloaded("Small left pleural effusion.")["input_ids"] == ids
    assert reloaded.pad_token_id == 0


def test_tokenizer_refuses_empty_corpus(tmp_path):
    with pytest.raises(ValueError, match="no non-empty report text"):
        train_report_tokenizer(["", "  "], tmp_path)


def test_processor_masks_pads_and_prompts(tokenizer, tmp_path):
    processor = MedVLMProcessor(tokenizer, ImageTransform(32), max_length=64)
    batch = processor.texts(["yes", "a small left effusion"], prompts=["is there an effusion?", "what is seen?"])
    ids, labels = batch["input_ids"], batch["labels"]
    sep = tokenizer.sep_token_id
    for row in range(2):
        cut = ids[row].tolist().index(sep)
        assert (labels[row, : cut + 1] == IGNORE_INDEX).all()  # prompt and <sep>: no loss
        real = batch["attention_mask"][row].bool()
        assert (labels[row, cut + 1:][real[cut + 1:]] != IGNORE_INDEX).all()  # answer tokens and </s> count
    assert (labels[batch["attention_mask"] == 0] == IGNORE_INDEX).all()

    processor.save_pretrained(tmp_path)
    assert (tmp_path / SPM_FILE).is_file()
    again = MedVLMProcessor.from_pretrained(tmp_path)
    assert again.image_size == 32 and again.max_length == 64
    assert torch.equal(again.texts(["yes"])["input_ids"], processor.texts(["yes"])["input_ids"])


def test_collator_builds_a_training_batch(tokenizer):
    processor = MedVLMProcessor(tokenizer, ImageTransform(32), max_length=64)
    records = [{"image": np.full((40, 50), i * 40, np.uint8), "text": REPORTS[i % 2]} for i in range(4)]
    dataset = RecordDataset(records, processor)
    batch = Collator(processor)([dataset[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 1, 32, 32)
    assert batch["text_keys"][0] == batch["text_keys"][2] != batch["text_keys"][1]
    assert text_key("No effusion.") == text_key("  no   EFFUSION. ")


def test_unreadable_image_is_skipped_only_when_asked(tokenizer, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"")
    processor = MedVLMProcessor(tokenizer, ImageTransform(32))
    records = [{"image": str(bad), "text": "x"}]
    with pytest.raises(ValueError, match="broken.png"):
        RecordDataset(records, processor)[0]
    skipping = RecordDataset(records, processor, on_error="skip")
    assert skipping[0] is None and skipping.skipped == 1
    assert Collator(processor)([None]) == {}


def test_processor_is_an_hf_processor_and_reads_the_format_before_it(tokenizer, tmp_path):
    from transformers import ProcessorMixin

    processor = MedVLMProcessor(tokenizer, ImageTransform(32, resize_mode="crop"), max_length=64)
    assert isinstance(processor, ProcessorMixin)
    image = np.linspace(0, 1, 40 * 50, dtype=np.float32).reshape(40, 50)
    batch = processor(images=[image], text=["small left effusion"])
    assert batch["pixel_values"].shape == (1, 1, 32, 32)
    assert torch.equal(batch["input_ids"], processor.texts(["small left effusion"])["input_ids"])
    assert torch.equal(processor.images([image]), processor.image_transform(image)[None])
    # a directory written before the processor was a ProcessorMixin: {"image_transform", "max_length"}
    old = tmp_path / "old"
    old.mkdir()
    (old / "processor_config.json").write_text(json.dumps(
        {"image_transform": {**ImageTransform(32, resize_mode="crop").to_dict(), "augment": False, "seed": None},
         "max_length": 64}))
    tokenizer.save_pretrained(old)
    again = MedVLMProcessor.from_pretrained(old)
    assert again.image_transform.resize_mode == "crop" and again.max_length == 64
    assert torch.equal(again.images([image]), processor.images([image]))
    augmented = processor.with_augmentation(True)
    assert augmented.image_transform.augment and not processor.image_transform.augment
    augmented.save_pretrained(tmp_path / "new")  # augmentation is a training switch: never saved
    assert not MedVLMProcessor.from_pretrained(tmp_path / "new").image_transform.augment


def test_image_only_processor_saves_and_loads_without_a_tokenizer(tmp_path):
    from transformers import AutoImageProcessor

    processor = MedVLMProcessor(None, ImageTransform(32, in_chans=3))
    processor.save_pretrained(tmp_path)
    assert not (tmp_path / "tokenizer_config.json").exists()
    again = MedVLMProcessor.from_pretrained(tmp_path)
    assert again.tokenizer is None and again.image_transform.in_chans == 3
    image_processor = AutoImageProcessor.from_pretrained(tmp_path)
    image = np.full((20, 30), 0.25, np.float32)
    assert torch.equal(image_processor(image)["pixel_values"], processor.images([image]))


def test_missing_processor_file_is_a_user_error(tmp_path):
    from medvlm.errors import UserError

    with pytest.raises(UserError, match="no processor_config.json"):
        MedVLMProcessor.from_pretrained(tmp_path)
