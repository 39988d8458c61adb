"""A saved model directory loads through transformers' Auto classes after `import medvlm`:
no trust_remote_code, no network, the same outputs."""

import socket

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageTextToText, AutoProcessor

import medvlm  # noqa: F401  (registers the medvlm classes with the Auto classes)
from medvlm.data.images import ImageTransform
from medvlm.modeling import MedVLMForConditionalGeneration, MedVLMModel
from medvlm.processing import MedVLMImageProcessor, MedVLMProcessor
from medvlm.tokenization import train_report_tokenizer
from tiny import VOCAB, tiny_config

REPORTS = ["No pleural effusion. The heart size is normal.", "Small left pleural effusion.",
           "Right upper lobe opacity. No pneumothorax."] * 10


def test_model_and_processor_load_through_the_auto_classes(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("loading a local directory must not reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    tokenizer = train_report_tokenizer(REPORTS, tmp_path / "tokenizer", vocab_size=VOCAB)
    processor = MedVLMProcessor(tokenizer, ImageTransform(32), max_length=32)
    torch.manual_seed(0)
    model = MedVLMForConditionalGeneration(tiny_config(vocab_size=len(tokenizer))).eval()
    out = tmp_path / "model"
    model.save_pretrained(out)
    processor.save_pretrained(out)

    auto_processor = AutoProcessor.from_pretrained(out)
    assert isinstance(auto_processor, MedVLMProcessor)
    assert isinstance(AutoImageProcessor.from_pretrained(out), MedVLMImageProcessor)
    images = [np.random.default_rng(i).random((40, 36)).astype(np.float32) for i in range(2)]
    batch, auto_batch = processor(images=images, text=REPORTS[:2]), auto_processor(images=images, text=REPORTS[:2])
    assert batch.keys() == auto_batch.keys()
    for key in batch:
        assert torch.equal(batch[key], auto_batch[key]), key

    base = AutoModel.from_pretrained(out).eval()
    assert isinstance(base, MedVLMModel)
    generator = AutoModelForImageTextToText.from_pretrained(out).eval()
    assert isinstance(generator, MedVLMForConditionalGeneration)
    pixels, ids, mask = auto_batch["pixel_values"], auto_batch["input_ids"], auto_batch["attention_mask"]
    with torch.no_grad():
        assert torch.equal(base.get_image_features(pixels), model.get_image_features(pixels))
        assert torch.equal(base.get_text_features(ids, mask), model.get_text_features(ids, mask))
        assert torch.equal(generator(ids, pixels, mask).logits, model(ids, pixels, mask).logits)
    kwargs = dict(max_new_tokens=6, do_sample=False)
    assert processor.decode(model.generate(pixels, **kwargs)) == auto_processor.decode(
        generator.generate(pixels, **kwargs))
