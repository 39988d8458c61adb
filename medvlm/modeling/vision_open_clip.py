"""Vision tower from an open_clip checkpoint whose visual tower is a timm trunk (BiomedCLIP:
`vit_base_patch16_224` under a linear projection), used through the same surface as the timm
tower (see `vision.py`).

Why not the timm tower with the trunk's name: the pooled embedding of such a checkpoint is
open_clip's (`visual(x)` = the trunk's own pooling, then `visual.head`, the projection into the
image-text space it was trained in); the weights live under `visual.` in open_clip's file.

open_clip builds the visual tower from `model_cfg` (open_clip_config.json) without a download;
it is imported only when this kind is used, and its absence is a UserError saying what to install.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from .vision import (CAM_MAX_STRIDE, check_tower_in_chans, copy_state_strictly, expand_channels, parse_pool_tokens,
                     pool_token_grid, read_state_dict, timm_block_prefix, timm_cam_module, timm_lora_targets)
from .vision_sources import KEY, OPEN_CLIP_WEIGHTS


def import_open_clip():
    """open_clip, or a UserError saying how to get it."""
    try:
        import open_clip
    except ImportError:
        raise UserError("model.vision.kind='open_clip' needs the open_clip package: "
                        "pip install open_clip_torch") from None
    return open_clip


def first_conv_channels(trunk: nn.Module) -> int:
    """Input channels of a timm model (its `pretrained_cfg["first_conv"]`; 3 when unnamed)."""
    name = trunk.pretrained_cfg.get("first_conv")
    if isinstance(name, str):
        try:
            return int(trunk.get_submodule(name).in_channels)
        except AttributeError:
            pass
    return 3


class OpenClipVisionTower(nn.Module):
    """open_clip's `TimmModel` (`.trunk`: the timm model, `.head`: pooling/projection) as a
    medvlm vision tower.

    forward: pixels (B, in_chans, S, S) -> patch tokens (B, N, trunk width) from
    `trunk.forward_features` without the trunk's prefix tokens (a CNN trunk's last map,
    flattened), and the pooled embedding (B, embed_dim) exactly as open_clip's `visual(x)` (trunk
    pooling + head), or a pool of the patch tokens with `pool_tokens` (the head then goes unused).
    `img_size` other than the trunk's: a ViT trunk's position embeddings are resampled to the
    new grid (timm's `set_input_size`), here and when the checkpoint is loaded.
    """

    def __init__(self, config: dict | None, img_size: int, in_chans: int = 3, pool_tokens: bool | str = False,
                 model_name: str | None = None):
        super().__init__()
        vision_cfg = dict(config.get("vision_cfg") or {}) if isinstance(config, dict) else {}
        trunk_name = vision_cfg.get("timm_model_name")
        if not trunk_name or "embed_dim" not in config:
            raise UserError("model.vision.config: kind 'open_clip' needs open_clip's model_cfg (embed_dim and a "
                            "vision_cfg with timm_model_name: only timm-trunk visual towers are supported)")
        if model_name and model_name != trunk_name:
            raise UserError(f"model.vision.model_name={model_name!r}: the open_clip config's trunk is "
                            f"{trunk_name!r} (model.vision.config.vision_cfg.timm_model_name)")
        import_open_clip()
        from open_clip.model import _build_vision_tower

        vision_cfg["timm_model_pretrained"] = False  # never download: weights come from load_pretrained
        try:
            self.backbone = _build_vision_tower(int(config["embed_dim"]), vision_cfg,
                                                quick_gelu=bool(config.get("quick_gelu", False)))
        except (TypeError, RuntimeError) as error:
            raise UserError(f"model.vision.config: open_clip cannot build this visual tower ({error})") from None
        trunk = self.trunk
        self.image_size = int(img_size)
        self.is_vit = hasattr(trunk, "patch_embed") and isinstance(getattr(trunk, "blocks", None),
                                                                   (nn.Sequential, nn.ModuleList))
        if self.is_vit and tuple(trunk.patch_embed.img_size) != (self.image_size,) * 2:
            self.backbone.set_input_size(self.image_size)  # resamples pos_embed to the new grid
        self.encoder_chans = first_conv_channels(trunk)
        self.in_chans = check_tower_in_chans(int(in_chans), self.encoder_chans, f"open_clip {trunk_name}")
        self.num_prefix_tokens = int(getattr(trunk, "num_prefix_tokens", 0))
        self.token_features = int(trunk.num_features)
        self.pool_tokens = parse_pool_tokens(pool_tokens)
        projects = bool(getattr(trunk, "num_classes", 0)) or len(self.backbone.head) > 0
        self.num_features = (self.token_features if self.pool_tokens or not projects
                             else int(config["embed_dim"]))  # width of visual(x)
        self.block_prefix = timm_block_prefix(trunk, "backbone.trunk")
        self.lora_targets = timm_lora_targets(trunk)

    @property
    def trunk(self) -> nn.Module:
        return self.backbone.trunk

    def token_grid(self, img_size: int) -> tuple[int, int]:
        """(rows, columns) of the patch tokens for a square `img_size` input."""
        if self.is_vit:
            return tuple(self.trunk.patch_embed.grid_size)
        side = math.ceil(img_size / self.trunk.feature_info[-1]["reduction"])
        return side, side

    def default_cam_layer(self, max_stride: int | None = CAM_MAX_STRIDE) -> str:
        """Grad-CAM's default layer relative to the tower: a ViT trunk's last pre-attention norm
        (B, prefix + N, C), where, unlike after the last block, every patch token still reaches the
        pooled class token; a CNN trunk's last stage with stride <= max_stride."""
        last = self.trunk.blocks[-1] if self.is_vit else None
        if last is not None and isinstance(getattr(last, "norm1", None), nn.Module):
            return f"backbone.trunk.blocks.{len(self.trunk.blocks) - 1}.norm1"
        return f"backbone.trunk.{timm_cam_module(self.trunk, max_stride)}"

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's activation checkpointing of the trunk's blocks."""
        self.backbone.set_grad_checkpointing(enable)

    def load_pretrained(self, path: str | Path) -> None:
        """The `visual.` weights of a local open_clip checkpoint (folder or weight file), loaded
        with every key matching; the trunk's position embeddings are resampled when the tower
        runs at another image size."""
        state = read_state_dict(path, KEY, OPEN_CLIP_WEIGHTS)
        if state and all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
            state = {k[len("module."):]: v for k, v in state.items()}
        visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
        if not visual:
            raise UserError(f"{KEY}={str(path)!r}: no `visual.` weights: not an open_clip model's state dict")
        own = self.backbone.state_dict()
        key = "trunk.pos_embed"
        if key in visual and key in own and visual[key].shape != own[key].shape:
            from timm.layers import resample_abs_pos_embed

            prefix = 0 if getattr(self.trunk, "no_embed_class", False) else self.num_prefix_tokens
            visual[key] = resample_abs_pos_embed(visual[key], new_size=list(self.trunk.patch_embed.grid_size),
                                                 num_prefix_tokens=prefix)
        copy_state_strictly(self.backbone, visual, path)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """pixels (B, C, H, W) -> patch tokens (B, N, trunk width), pooled (B, num_features)."""
        pixel_values = expand_channels(pixel_values, self.encoder_chans)  # (B, 3, H, W)
        features = self.trunk.forward_features(pixel_values)
        if features.ndim == 4 and getattr(self.trunk, "output_fmt", "NCHW") == "NHWC":  # e.g. Swin (B, h, w, C)
            tokens = features.flatten(1, 2)  # (B, h*w, C)
        elif features.ndim == 4:  # CNN map (B, C, h, w)
            tokens = features.flatten(2).transpose(1, 2)  # (B, h*w, C)
        else:  # (B, prefix + N, C)
            tokens = features[:, self.num_prefix_tokens:]  # (B, N, C)
        if self.pool_tokens:
            return tokens, pool_token_grid(tokens, self.pool_tokens)
        # open_clip's TimmModel.forward is head(trunk(x)) and timm's trunk(x) is
        # forward_head(forward_features(x)): the same, without running the trunk twice
        return tokens, self.backbone.head(self.trunk.forward_head(features))  # (B, num_features)
