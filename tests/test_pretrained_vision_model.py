"""A whole medvlm model on each pretrained vision kind, built the way `train.py` builds it from a
folder in the checkpoint's real format: a training step reaches every new parameter, cached and
uncached greedy decoding agree, save/load and LoRA merge/reload give identical outputs, and the
processor takes the encoder's channels and normalisation. Tiny random weights."""

import copy

import pytest
import torch

from medvlm.config import load_config
from medvlm.finetuning import add_lora, exportable
from medvlm.modeling import MedVLMForConditionalGeneration
from medvlm.runs import build_model, build_processor
from test_vision_towers import save_hf, save_open_clip, save_timm
from tiny import as_studies

TEXT = "model.text={model_type: gpt2, n_embd: 32, n_layer: 1, n_head: 2}"
KINDS = {  # name: (writer, image size)
    # zero_init_last=False: timm zeroes each residual block's last norm, which would make any change
    # to the block (LoRA) invisible in a random-weight model
    "timm_cnn": (lambda tmp: save_timm(tmp, "test_resnet", zero_init_last=False)[1], 64),
    "timm_vit": (lambda tmp: save_timm(tmp, "vit_tiny_patch16_224", img_size=32, embed_dim=32, depth=2,
                                       num_heads=2)[1], 32),
    "dinov2": (lambda tmp: save_hf(tmp, "dinov2")[1], 32),
    "dinov2_registers": (lambda tmp: save_hf(tmp, "dinov2_registers")[1], 32),
    "siglip": (lambda tmp: save_hf(tmp, "siglip")[1], 32),
    "clip": (lambda tmp: save_hf(tmp, "full_clip")[1], 32),
    "open_clip": (lambda tmp: save_open_clip(tmp)[1], 160),
}
CORPUS = ["heart size is normal .", "there is a small left pleural effusion .", "no acute process ."] * 4


@pytest.fixture(scope="module", params=list(KINDS))
def built(request, tmp_path_factory):
    writer, size = KINDS[request.param]
    folder = writer(tmp_path_factory.mktemp(request.param))
    cfg = load_config(None, [f"model.vision={{pretrained_path: {folder}}}", TEXT, f"data.image_size={size}",
                             "model.fusion_layers=1", "model.fusion_heads=2", "model.embed_dim=16",
                             "data.max_length=32", "data.tokenizer_vocab_size=40",
                             f"train.output_dir={tmp_path_factory.mktemp('run')}"])
    processor = build_processor(cfg, [{"text": t} for t in CORPUS])
    torch.manual_seed(0)
    return request.param, processor, build_model(cfg, processor), size


def inputs(processor, size):
    enc = processor.texts(CORPUS[:2])
    images = torch.rand(2, size, size, generator=torch.Generator().manual_seed(2)).numpy()  # grayscale radiographs
    enc["pixel_values"] = processor.images(list(images))
    return enc


def test_the_processor_follows_the_encoder(built):
    name, processor, model, size = built
    transform = processor.image_transform
    assert transform.in_chans == model.vision_tower().in_chans == 3 or name.startswith("timm")
    pixels = inputs(processor, size)["pixel_values"]
    assert pixels.shape == (2, transform.in_chans, size, size)
    if isinstance(transform.mean, list):  # per-channel normalisation of one grey image
        grey = (pixels[:, 0] * transform.std[0]) + transform.mean[0]
        for c in range(1, transform.in_chans):
            torch.testing.assert_close(pixels[:, c] * transform.std[c] + transform.mean[c], grey)


def test_a_training_step_reaches_every_new_parameter(built):
    name, processor, model, size = built
    model.train()
    out = model(**as_studies(inputs(processor, size)))  # studies: view and prior embeddings too
    out.loss.backward()
    new = [(n, p) for n, p in model.named_parameters() if not n.startswith("model.vision.backbone.")]
    missing = [n for n, p in new if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    assert any(p.grad is not None for n, p in model.named_parameters() if n.startswith("model.vision.backbone."))
    torch.optim.AdamW(model.parameters(), lr=1e-3).step()
    model.zero_grad()


def test_cached_and_uncached_greedy_generation_agree(built):
    _, processor, model, size = built
    model.eval()
    pixels = inputs(processor, size)["pixel_values"]
    settings = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert torch.equal(model.generate(pixel_values=pixels, use_cache=True, **settings),
                       model.generate(pixel_values=pixels, use_cache=False, **settings))


def test_save_load_and_lora_merge_reload_are_identical(built, tmp_path):
    name, processor, model, size = built
    model.eval()
    batch = inputs(processor, size)
    model.save_pretrained(tmp_path / "m")
    again = MedVLMForConditionalGeneration.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        assert torch.equal(model(**batch, return_logits=True).logits, again(**batch, return_logits=True).logits)
    lora = add_lora(copy.deepcopy(model), {"r": 4, "alpha": 8, "towers": ["vision"]})
    assert any(n.endswith("lora_A") for n, _ in lora.named_modules()), f"{name}: no LoRA target in the vision tower"
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.05)
        adapted = lora(**batch, return_logits=True).logits
    exportable(lora).save_pretrained(tmp_path / "merged")
    reloaded = MedVLMForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        merged = reloaded(**batch, return_logits=True).logits
        adapted_image = lora.get_image_features(batch["pixel_values"])
        changed_image = reloaded.get_image_features(batch["pixel_values"])
        original_image = model.get_image_features(batch["pixel_values"])
    torch.testing.assert_close(merged, adapted, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(changed_image, adapted_image, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(original_image, changed_image, atol=1e-3)  # the adapters did change the tower
