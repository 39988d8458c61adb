"""Vision towers from transformers image encoders: Dinov2 (RAD-DINO), Dinov2 with registers,
SigLIP (MedSigLIP) and CLIP vision models, used through the same surface as the timm tower
(see `vision.py`).

Why a separate tower rather than timm: these checkpoints are published in transformers' format
(config.json + safetensors with transformers' key names, which `from_pretrained` also converts
from older layouts), and each family defines its own prefix tokens and pooled embedding:

    family                 prefix tokens            pooled embedding
    dinov2                 1 CLS                    pooler_output: the layer-normed CLS
    dinov2_with_registers  1 CLS + registers        pooler_output: the layer-normed CLS
    siglip_vision_model    none                     pooler_output: the attention-pooling head
                                                    (mean of the tokens without a head)
    clip_vision_model      1 CLS                    pooler_output: the post-layernormed CLS

The tower is built from the *vision* config alone (a dict with its `model_type`); a full SigLIP
or CLIP checkpoint (text tower too) contributes its `vision_model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig

from ..errors import UserError
from .vision import check_tower_in_chans, copy_state_strictly, expand_channels, parse_pool_tokens, pool_token_grid

KEY = "model.vision.pretrained_path"


@dataclass(frozen=True)
class Family:
    """What differs between the supported encoder families (module names as transformers has them)."""

    blocks: str  # the repeated layers, relative to the backbone
    cam_norm: str  # a layer's pre-attention norm: its output is every token, class token included
    lora_targets: tuple[str, ...]  # attention and MLP linear layers of one block
    interpolate_kwarg: bool  # forward takes interpolate_pos_encoding (Dinov2 always interpolates)
    class_token: bool


_DINO_LORA = ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2", "gate_proj", "up_proj", "down_proj")
_SIGLIP_CLIP_LORA = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
FAMILIES = {
    "dinov2": Family("encoder.layer", "norm1", _DINO_LORA, False, True),
    "dinov2_with_registers": Family("encoder.layer", "norm1", _DINO_LORA, False, True),
    "siglip_vision_model": Family("encoder.layers", "layer_norm1", _SIGLIP_CLIP_LORA, True, False),
    "clip_vision_model": Family("encoder.layers", "layer_norm1", _SIGLIP_CLIP_LORA, True, True),
}
# full image-text checkpoints: the vision config inside them, and the model's vision part
FULL_MODEL_TYPES = {"siglip": "siglip_vision_model", "clip": "clip_vision_model"}
SUPPORTED_MODEL_TYPES = (*FAMILIES, *FULL_MODEL_TYPES)
# config.json keys about the file, not the architecture
_NOT_ARCHITECTURE = ("transformers_version", "architectures", "_name_or_path", "dtype", "torch_dtype", "auto_map")


def unsupported_model_type(model_type, where: str) -> UserError:
    return UserError(f"{where}: model_type {model_type!r} is not a supported vision encoder; supported: "
                     f"{', '.join(SUPPORTED_MODEL_TYPES)}")


def vision_config(config: PreTrainedConfig) -> PreTrainedConfig:
    """The vision config of a full SigLIP/CLIP config, or the config itself."""
    return config.vision_config if config.model_type in FULL_MODEL_TYPES else config


def vision_config_dict(config: PreTrainedConfig) -> dict:
    """A (vision) config as the JSON dict `model.vision.config` holds: its model_type and the
    values that differ from the defaults."""
    config = vision_config(config)
    diff = {k: v for k, v in config.to_diff_dict().items() if k not in _NOT_ARCHITECTURE}
    return {**diff, "model_type": config.model_type}


def config_from_dict(config: dict | None) -> PreTrainedConfig:
    """`model.vision.config` -> the transformers vision config it describes."""
    if not isinstance(config, dict) or "model_type" not in config:
        raise UserError("model.vision.config: kind 'transformers' needs the encoder's config as a dict with its "
                        "model_type (vision_spec_from_checkpoint reads it from the checkpoint)")
    values = dict(config)
    model_type = values.pop("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise unsupported_model_type(model_type, "model.vision.config")
    try:
        return vision_config(AutoConfig.for_model(model_type, **values))
    except (ValueError, TypeError) as error:
        raise UserError(f"model.vision.config: not a valid {model_type} config ({error})") from None


class TransformersVisionTower(nn.Module):
    """A transformers vision model as a medvlm vision tower.

    forward: pixels (B, in_chans, S, S) -> patch tokens (B, (S/p)^2, hidden) from the last hidden
    state without the family's prefix tokens, and the family's own pooled embedding (B, hidden),
    or a pool of the patch tokens with `pool_tokens` ("mean"/"max"; the encoder's pooling head,
    if any, then goes unused). A 1-channel input to an RGB encoder is repeated to 3 channels.
    """

    def __init__(self, config: dict | None, img_size: int, in_chans: int = 3, pool_tokens: bool | str = False):
        super().__init__()
        hf_config = config_from_dict(config)
        self.family = FAMILIES[hf_config.model_type]
        self.backbone = AutoModel.from_config(hf_config)  # random weights; load_pretrained fills them
        self.encoder_chans = int(hf_config.num_channels)
        self.in_chans = check_tower_in_chans(int(in_chans), self.encoder_chans, hf_config.model_type)
        self.image_size = int(img_size)
        self.config_image_size = int(hf_config.image_size)  # the size its position embeddings are for
        patch = hf_config.patch_size
        self.patch_size = int(patch if isinstance(patch, int) else patch[0])
        self.token_features = int(hf_config.hidden_size)
        self.num_features = self.token_features
        self.num_prefix_tokens = int(self.family.class_token) + int(getattr(hf_config, "num_register_tokens", 0) or 0)
        self.num_layers = int(hf_config.num_hidden_layers)
        self.pool_tokens = parse_pool_tokens(pool_tokens)
        self.block_prefix = f"backbone.{self.family.blocks}"
        self.lora_targets = self.family.lora_targets

    def token_grid(self, img_size: int) -> tuple[int, int]:
        """(rows, columns) of the patch tokens for a square `img_size` input."""
        side = int(img_size) // self.patch_size
        return side, side

    def default_cam_layer(self, max_stride: int | None = None) -> str:
        """Grad-CAM's default layer relative to the tower: the last block's pre-attention norm,
        (B, prefix + N, C). Not the last block's output: the pooled CLS is read from there after a
        per-token norm, so the patch tokens there get no gradient from the pooled score; before
        the last attention every token does. (`max_stride`: for CNNs; a ViT has one stride.)"""
        return f"{self.block_prefix}.{self.num_layers - 1}.{self.family.cam_norm}"

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """transformers' activation checkpointing of the encoder layers (while training)."""
        enable_fn = getattr(self.backbone, "activation_checkpointing_enable", None)
        if enable_fn is None:  # transformers < 5.x names
            enable_fn = self.backbone.gradient_checkpointing_enable
        disable_fn = getattr(self.backbone, "activation_checkpointing_disable", None)
        if disable_fn is None:
            disable_fn = self.backbone.gradient_checkpointing_disable
        enable_fn() if enable else disable_fn()

    def load_pretrained(self, path: str | Path) -> None:
        """Weights from a local transformers checkpoint folder (`save_pretrained` layout; the vision
        part of a full SigLIP/CLIP checkpoint), copied into the backbone with every key matching:
        anything missing or extra is a UserError naming `model.vision.pretrained_path`."""
        path = Path(path)
        if path.is_file() and path.name == "config.json":
            path = path.parent
        if not (path / "config.json").is_file():
            raise UserError(f"{KEY}={str(path)!r}: not a transformers checkpoint folder (no config.json there)")
        try:
            loaded, info = AutoModel.from_pretrained(str(path), local_files_only=True, output_loading_info=True)
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            raise UserError(f"{KEY}={str(path)!r}: transformers could not load it ({error})") from None
        full = loaded.config.model_type in FULL_MODEL_TYPES
        source = loaded.vision_model if full else loaded
        if type(source) is not type(self.backbone):
            raise UserError(f"{KEY}={str(path)!r}: holds a {type(source).__name__}, but model.vision.config "
                            f"describes a {type(self.backbone).__name__}")
        prefix = "vision_model." if full else ""
        not_in_file = [k for k in [*info.get("missing_keys", ()), *info.get("mismatched_keys", ())]
                       if isinstance(k, str) and k.startswith(prefix)]
        if not_in_file:  # from_pretrained left these randomly initialised
            raise UserError(f"{KEY}={str(path)!r}: the checkpoint lacks {len(not_in_file)} weight(s) of the "
                            f"encoder, e.g. {sorted(not_in_file)[:3]}")
        copy_state_strictly(self.backbone, source.state_dict(), path)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels (B, C, H, W) -> patch tokens (B, N, hidden) and the pooled embedding (B, hidden)."""
        pixel_values = expand_channels(pixel_values, self.encoder_chans)  # (B, 3, H, W)
        kwargs = {}
        if self.family.interpolate_kwarg and tuple(pixel_values.shape[-2:]) != (self.config_image_size,) * 2:
            kwargs["interpolate_pos_encoding"] = True  # resample the position embeddings to this grid
        out = self.backbone(pixel_values=pixel_values, **kwargs)
        tokens = out.last_hidden_state[:, self.num_prefix_tokens:]  # (B, N, hidden)
        if self.pool_tokens:
            return tokens, pool_token_grid(tokens, self.pool_tokens)
        if out.pooler_output is None:  # SigLIP without its attention-pooling head
            return tokens, tokens.mean(dim=1)
        return tokens, out.pooler_output  # (B, hidden)

