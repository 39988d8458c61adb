"""Vision towers for pretrained image encoders: timm (CNN, ViT), transformers (Dinov2, Dinov2 with
registers, SigLIP, CLIP; vision-only and full image-text checkpoints) and open_clip with a timm
trunk. Each tiny random model is saved in its real on-disk format, recognised from its files,
rebuilt from the spec alone, loaded, and compared with the model it came from."""

import json
import re
import sys

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.models._hub import save_for_hf
from torch import nn

from medvlm.data.images import ImageTransform
from medvlm.errors import UserError
from medvlm.explain.gradcam import grad_cam
from medvlm.explain.targets import default_layer
from medvlm.modeling.vision import TimmVisionTower, VisionTower, build_vision_tower
from medvlm.modeling.vision_sources import (IMAGENET_MEAN, IMAGENET_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
                                            native_image_size, vision_spec_from_checkpoint)

transformers = pytest.importorskip("transformers")
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=64,
            max_position_embeddings=16)


def pixels(size: int, channels: int = 3, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(size))


def tower_spec(found: dict, img_size: int, path) -> dict:
    """A `model.vision` dict as a config would hold it, filled from the checkpoint."""
    found = dict(found)
    found.pop("native_image_size")
    spec = {"kind": None, "model_name": "vit_tiny_patch16_224", "img_size": img_size, "in_chans": 1,
            "timm_kwargs": {}, "token_reduction": None, "pool_tokens": False, "pretrained_path": str(path),
            "config": None, "mean": None, "std": None}
    spec.update(found)
    return json.loads(json.dumps(spec))  # as it comes back from a saved config


def loaded_tower(path, img_size: int, **expect) -> nn.Module:
    found = vision_spec_from_checkpoint(path)
    for key, value in expect.items():
        assert found[key] == value, key
    tower = build_vision_tower(tower_spec(found, img_size, path))
    tower.load_pretrained(path)
    return tower.eval()


def assert_surface(tower: nn.Module, img_size: int, unused: set[str] = frozenset()):
    """The interface the models rely on: shapes, a gradient into every used parameter, LoRA
    targets that exist, a Grad-CAM layer that exists. -> (tokens, pooled) of the forward."""
    x = pixels(img_size, tower.in_chans)
    tokens, pooled = tower(x)
    rows, cols = tower.token_grid(img_size)
    assert tokens.shape == (2, rows * cols, tower.token_features)
    assert pooled.shape == (2, tower.num_features)
    (tokens.sum() + pooled.sum()).backward()
    no_grad = {n for n, p in tower.backbone.named_parameters() if p.grad is None}
    assert no_grad == set(unused)
    lora = re.compile(f"{re.escape(tower.block_prefix)}\\..*\\.({'|'.join(tower.lora_targets)})")  # as peft is given it
    targets = [m for n, m in tower.named_modules() if lora.fullmatch(n)]
    assert targets and all(isinstance(m, (nn.Linear, nn.Conv2d)) for m in targets)
    layer = tower.get_submodule(tower.default_cam_layer())
    assert isinstance(layer, nn.Module)
    tower.zero_grad()
    return tokens.detach(), pooled.detach()


def assert_checkpointing(tower: nn.Module, img_size: int) -> None:
    """Activation checkpointing gives the same gradients as without."""
    x = pixels(img_size, tower.in_chans)
    tower.train()

    def grads():
        tower.zero_grad()
        tokens, pooled = tower(x)
        (tokens.square().sum() + pooled.sum()).backward()
        return {n: p.grad.clone() for n, p in tower.named_parameters() if p.grad is not None}

    def switched_on():  # HF layers' `gradient_checkpointing`, timm models' `grad_checkpointing`
        return any(getattr(m, "gradient_checkpointing", False) is True
                   or getattr(m, "grad_checkpointing", False) is True for m in tower.modules())

    plain = grads()
    tower.set_grad_checkpointing(True)
    assert switched_on()
    checkpointed = grads()
    tower.set_grad_checkpointing(False)
    assert not switched_on()
    tower.eval()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)


def assert_same_weights(module: nn.Module, reference: dict[str, torch.Tensor]) -> None:
    own = module.state_dict()
    assert own.keys() == reference.keys()
    for key, value in own.items():
        assert torch.equal(value, reference[key]), key


# --------------------------------------------------------------------------- timm


def save_timm(tmp_path, name: str, **kwargs):
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    save_for_hf(model, str(tmp_path / name), safe_serialization=True)  # timm's hub layout
    model.reset_classifier(0)
    return model, tmp_path / name


def test_timm_cnn(tmp_path):
    model, path = save_timm(tmp_path, "test_resnet")
    tower = loaded_tower(path, 64, kind="timm", model_name="test_resnet", in_chans=3, mean=[0.5] * 3,
                         native_image_size=160)
    assert isinstance(tower, TimmVisionTower) and VisionTower is TimmVisionTower
    assert_same_weights(tower.backbone, model.state_dict())
    tokens, pooled = assert_surface(tower, 64)
    assert tower.token_grid(64) == (2, 2)
    with torch.no_grad():
        torch.testing.assert_close(pooled, model(pixels(64)))
    assert tower.default_cam_layer() == "backbone.layer3"  # the last stride-16 stage, as before
    assert_checkpointing(tower, 64)


def test_timm_vit(tmp_path):
    model, path = save_timm(tmp_path, "vit_tiny_patch16_224", img_size=32, embed_dim=32, depth=2, num_heads=2)
    tower = loaded_tower(path, 32, kind="timm", native_image_size=32,
                         timm_kwargs={"embed_dim": 32, "depth": 2, "num_heads": 2, "global_pool": "token"})
    assert_same_weights(tower.backbone, model.state_dict())
    tokens, pooled = assert_surface(tower, 32)
    with torch.no_grad():
        torch.testing.assert_close(pooled, model(pixels(32)))
        torch.testing.assert_close(tokens, model.forward_features(pixels(32))[:, 1:])
    assert (tower.block_prefix, tower.lora_targets) == ("backbone.blocks", ("qkv", "proj", "fc1", "fc2"))
    assert tower.default_cam_layer() == "backbone.blocks.1"
    assert_checkpointing(tower, 32)


def test_bare_state_dict_needs_model_name(tmp_path):
    model = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    save_file(model.state_dict(), tmp_path / "weights.safetensors")
    with pytest.raises(UserError, match="model.vision.model_name"):
        vision_spec_from_checkpoint(tmp_path / "weights.safetensors")
    found = vision_spec_from_checkpoint(tmp_path / "weights.safetensors", model_name="test_resnet")
    assert found == {"kind": "timm", "model_name": "test_resnet", "native_image_size": None}
    assert native_image_size(tmp_path / "weights.safetensors") is None


# --------------------------------------------------------------------------- transformers


def _dinov2():
    return transformers.Dinov2Model(transformers.Dinov2Config(**TINY, mlp_ratio=2))


def _dinov2_registers():
    return transformers.Dinov2WithRegistersModel(
        transformers.Dinov2WithRegistersConfig(**TINY, mlp_ratio=2, num_register_tokens=2))


def _siglip():
    return transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**TINY, intermediate_size=64))


def _clip():
    return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**TINY, intermediate_size=64))


def _full_siglip():
    return transformers.SiglipModel(transformers.SiglipConfig(
        text_config=TEXT, vision_config=dict(TINY, intermediate_size=64)))


def _full_clip():
    return transformers.CLIPModel(transformers.CLIPConfig(
        text_config=TEXT, vision_config=dict(TINY, intermediate_size=64), projection_dim=16))


# name: (build, vision config's model_type, prefix tokens, default mean/std, parameters the forward never uses)
HF_CASES = {
    "dinov2": (_dinov2, "dinov2", 1, (IMAGENET_MEAN, IMAGENET_STD), {"embeddings.mask_token"}),
    "dinov2_registers": (_dinov2_registers, "dinov2_with_registers", 3, (IMAGENET_MEAN, IMAGENET_STD),
                         {"embeddings.mask_token"}),
    "siglip": (_siglip, "siglip_vision_model", 0, ([0.5] * 3, [0.5] * 3), set()),
    "clip": (_clip, "clip_vision_model", 1, (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD), set()),
    "full_siglip": (_full_siglip, "siglip_vision_model", 0, ([0.5] * 3, [0.5] * 3), set()),
    "full_clip": (_full_clip, "clip_vision_model", 1, (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD), set()),
}


def save_hf(tmp_path, case: str):
    torch.manual_seed(0)
    model = HF_CASES[case][0]().eval()
    model.save_pretrained(tmp_path / case)
    return (model.vision_model if case.startswith("full") else model), tmp_path / case


@pytest.mark.parametrize("case", list(HF_CASES))
def test_transformers_tower(tmp_path, case):
    _, model_type, prefix, (mean, std), unused = HF_CASES[case]
    reference, path = save_hf(tmp_path, case)
    tower = loaded_tower(path, 32, kind="transformers", in_chans=3, mean=mean, std=std, native_image_size=32)
    assert tower.backbone.config.model_type == model_type and type(tower.backbone) is type(reference)
    assert tower.num_prefix_tokens == prefix
    assert_same_weights(tower.backbone, reference.state_dict())
    tokens, pooled = assert_surface(tower, 32, unused)
    assert tower.token_grid(32) == (4, 4)
    with torch.no_grad():
        out = reference(pixel_values=pixels(32))
    torch.testing.assert_close(pooled, out.pooler_output)
    torch.testing.assert_close(tokens, out.last_hidden_state[:, prefix:])
    assert_checkpointing(tower, 32)


@pytest.mark.parametrize("case", ["dinov2", "siglip", "clip"])
def test_transformers_other_image_size(tmp_path, case):
    """Position embeddings are interpolated to another grid (SigLIP/CLIP need the flag)."""
    _, path = save_hf(tmp_path, case)
    tower = loaded_tower(path, 48)
    assert tower.token_grid(48) == (6, 6)
    tokens, pooled = tower(pixels(48))
    assert tokens.shape == (2, 36, 32) and pooled.shape == (2, 32) and torch.isfinite(tokens).all()


def test_transformers_grayscale_and_pool_tokens(tmp_path):
    """A 1-channel input reaches an RGB encoder as 3 equal channels; pool_tokens pools the tokens."""
    _, path = save_hf(tmp_path, "dinov2")
    spec = tower_spec(vision_spec_from_checkpoint(path), 32, path)
    gray = build_vision_tower({**spec, "in_chans": 1, "pool_tokens": "max"}).eval()
    gray.load_pretrained(path)
    x = pixels(32, 1)
    tokens, pooled = gray(x)
    rgb_tokens, _ = loaded_tower(path, 32)(x.expand(-1, 3, -1, -1))
    torch.testing.assert_close(tokens, rgb_tokens)
    torch.testing.assert_close(pooled, tokens.amax(dim=1))
    with pytest.raises(UserError, match="model.vision.in_chans"):
        build_vision_tower({**spec, "in_chans": 2})


def test_transformers_preprocessor_config_gives_normalisation(tmp_path):
    _, path = save_hf(tmp_path, "dinov2")
    (path / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "BitImageProcessor", "image_mean": [0.53, 0.53, 0.53], "image_std": [0.25] * 3,
        "size": {"shortest_edge": 64}, "crop_size": {"height": 56, "width": 56}, "do_center_crop": True}))
    found = vision_spec_from_checkpoint(path)
    assert (found["mean"], found["std"], found["native_image_size"]) == ([0.53] * 3, [0.25] * 3, 56)
    assert native_image_size(path) == 56


def test_transformers_checkpoint_errors(tmp_path):
    transformers.ViTModel(transformers.ViTConfig(**TINY, intermediate_size=64)).save_pretrained(tmp_path / "vit")
    with pytest.raises(UserError, match="'vit'.*dinov2"):
        vision_spec_from_checkpoint(tmp_path / "vit")
    _, dino = save_hf(tmp_path, "dinov2")
    _, clip = save_hf(tmp_path, "clip")
    tower = build_vision_tower(tower_spec(vision_spec_from_checkpoint(dino), 32, dino))
    with pytest.raises(UserError, match="model.vision.pretrained_path.*CLIPVisionModel"):
        tower.load_pretrained(clip)  # another family than the config describes
    state = load_file(dino / "model.safetensors")
    dropped = next(k for k in state if k.endswith("norm1.weight"))
    save_file({k: v for k, v in state.items() if k != dropped}, dino / "model.safetensors")
    with pytest.raises(UserError, match="model.vision.pretrained_path.*lacks"):
        tower.load_pretrained(dino)
    with pytest.raises(UserError, match="model.vision.config"):
        build_vision_tower({"kind": "transformers", "img_size": 32, "config": {"model_type": "bert"}})


# --------------------------------------------------------------------------- open_clip

OPEN_CLIP_CFG = {"embed_dim": 16,
                 "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "",
                                "timm_proj": "linear", "image_size": 160},
                 "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}


def save_open_clip(tmp_path, weights: str = "open_clip_model.safetensors"):
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    model = open_clip.CLIP(**OPEN_CLIP_CFG).eval()  # BiomedCLIP's layout: a timm ViT, token pool, linear head
    path = tmp_path / "open_clip"
    path.mkdir()
    (path / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": OPEN_CLIP_CFG, "preprocess_cfg": {"mean": OPENAI_CLIP_MEAN, "std": OPENAI_CLIP_STD}}))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if weights.endswith(".safetensors"):
        save_file(state, path / weights)
    else:
        torch.save(state, path / weights)
    return model, path


def test_open_clip_tower(tmp_path):
    model, path = save_open_clip(tmp_path)
    tower = loaded_tower(path, 160, kind="open_clip", model_name="test_vit", config=OPEN_CLIP_CFG, in_chans=3,
                         mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, native_image_size=160)
    assert_same_weights(tower.backbone, model.visual.state_dict())
    tokens, pooled = assert_surface(tower, 160)
    assert tower.token_grid(160) == (10, 10) and tower.num_features == 16
    with torch.no_grad():
        torch.testing.assert_close(pooled, model.encode_image(pixels(160)))
        torch.testing.assert_close(tokens, model.visual.trunk.forward_features(pixels(160))[:, 1:])
    last = len(model.visual.trunk.blocks) - 1
    assert tower.block_prefix == "backbone.trunk.blocks"
    assert tower.default_cam_layer() == f"backbone.trunk.blocks.{last}.norm1"
    assert_checkpointing(tower, 160)


def test_open_clip_other_image_size_and_bin(tmp_path):
    """At another size the trunk's position embeddings are resampled from the checkpoint's."""
    from timm.layers import resample_abs_pos_embed

    model, path = save_open_clip(tmp_path, "open_clip_pytorch_model.bin")
    tower = loaded_tower(path, 64)
    expected = resample_abs_pos_embed(model.visual.trunk.pos_embed.detach(), new_size=[4, 4], num_prefix_tokens=1)
    torch.testing.assert_close(tower.backbone.trunk.pos_embed.detach(), expected)
    assert_surface(tower, 64)


def test_open_clip_missing_package_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip now raises ImportError
    spec = {"kind": "open_clip", "img_size": 160, "in_chans": 3, "config": OPEN_CLIP_CFG}
    with pytest.raises(UserError, match="pip install open_clip_torch"):
        build_vision_tower(spec)


# --------------------------------------------------------------------------- Grad-CAM, transform


class _Holder(nn.Module):
    """What default_layer and grad_cam see of a MedVLM model: the tower at model.vision."""

    vision_backbone_name = "model.vision.backbone"

    def __init__(self, tower):
        super().__init__()
        self.model = nn.Module()
        self.model.vision = tower

    def vision_tower(self):
        return self.model.vision


def test_default_cam_layer_gives_patch_maps(tmp_path):
    _, path = save_hf(tmp_path, "dinov2_registers")
    holder = _Holder(loaded_tower(path, 32))
    layer = default_layer(holder)
    assert layer == "model.vision.backbone.encoder.layer.1.norm1"
    x = pixels(32)
    maps = grad_cam(holder, layer, lambda: holder.model.vision(x)[1].sum(-1), size=(32, 32),
                    num_prefix_tokens=holder.vision_tower().num_prefix_tokens)
    assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all() and maps.amax() > 0
    timm_holder = _Holder(VisionTower("test_resnet", 64, 1))
    assert default_layer(timm_holder) == "model.vision.backbone.layer3"  # as before: the stride-16 stage
    assert default_layer(timm_holder, max_stride=None) == "model.vision.backbone.layer4"


def test_image_transform_per_channel():
    image = np.random.default_rng(0).random((20, 16)).astype(np.float32)
    plain = ImageTransform(12, in_chans=1, mean=0.0, std=1.0)(image)[0]  # the resized image in [0, 1]
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    t = ImageTransform(12, in_chans=3, mean=mean, std=std)
    x = t(image)
    assert x.shape == (3, 12, 12)
    for c in range(3):
        torch.testing.assert_close(x[c], (plain - mean[c]) / std[c])
    d = t.to_dict()
    assert d["mean"] == mean and d["std"] == std and isinstance(d["mean"], list)
    assert torch.equal(ImageTransform(**json.loads(json.dumps(d)))(image), x)
    scalar = ImageTransform(12, in_chans=3, mean=0.5, std=0.25)
    assert isinstance(scalar.to_dict()["mean"], float)
    assert torch.equal(scalar(image), ((plain - 0.5) / 0.25).expand(3, 12, 12))
    with pytest.raises(UserError, match="mean"):
        ImageTransform(12, in_chans=3, mean=[0.5, 0.5])
    with pytest.raises(UserError, match="std"):
        ImageTransform(12, in_chans=3, std=[0.2, 0.0, 0.2])
    with pytest.raises(UserError, match="std"):
        ImageTransform(12, in_chans=1, std=[0.2, 0.2, 0.2])
