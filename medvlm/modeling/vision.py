"""Vision towers: pixels -> patch tokens and a pooled image embedding.

`TimmVisionTower` (alias `VisionTower`) adapts any timm model; `build_vision_tower` picks the
tower a config's `vision` dict names by its `kind`: None or "timm" (this module),
"transformers" (`vision_transformers`: Dinov2 / RAD-DINO, SigLIP / MedSigLIP, CLIP) or
"open_clip" (`vision_open_clip`: a timm trunk under an open_clip head, e.g. BiomedCLIP).

Every tower has the same surface, which the models, LoRA and Grad-CAM rely on:
`backbone` (the encoder), `in_chans`, `num_features` (pooled width), `token_features` (token
width), `num_prefix_tokens` (class/register tokens in the Grad-CAM layer's output),
`block_prefix` and `lora_targets` (where LoRA goes), `token_grid(img_size)`,
`load_pretrained(path)`, `set_grad_checkpointing(enable)`, `default_cam_layer()` and
`forward(pixels) -> (tokens (B, N, token_features), pooled (B, num_features))`.
"""

import math
from pathlib import Path

import torch
import timm
from safetensors.torch import load_file
from timm.models import adapt_input_conv
from torch import nn
from transformers import initialization as init  # skips weights from_pretrained loaded

from ..errors import UserError

WEIGHT_FILE_NAMES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def read_state_dict(path: str | Path, key: str = "model.vision.pretrained_path",
                    names: tuple[str, ...] = WEIGHT_FILE_NAMES) -> dict[str, torch.Tensor]:
    """Weights from a .safetensors file, a torch file (tensors only), or a directory holding one
    of `names`; a missing file is a UserError naming the config `key` that gave the path."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in names if (path / name).is_file()]
        if not found:
            raise UserError(f"{key}={str(path)!r}: no weight file in that directory (looked for "
                            f"{', '.join(names)})")
        path = found[0]
    if not path.is_file():
        raise UserError(f"{key}={str(path)!r}: weight file not found")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # common wrappers of training checkpoints
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def init_layer_weights(module: nn.Module, std: float) -> bool:
    """The initialisation both models give their own layers and a timm backbone: normal linear
    weights, He-normal convolutions, unit norms, zero biases. True when `module` was one of those."""
    if isinstance(module, nn.Linear):
        init.normal_(module.weight, std=std)
    elif isinstance(module, nn.Conv2d):
        init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d, nn.GroupNorm)):
        if module.weight is not None:
            init.ones_(module.weight)
    else:
        return False
    if getattr(module, "bias", None) is not None:
        init.zeros_(module.bias)
    return True


def create_backbone(model_name: str, img_size: int, in_chans: int, timm_kwargs: dict | None) -> nn.Module:
    """A timm model without its classifier and without a download; an unknown name or argument
    is a UserError naming the config key."""
    kwargs = dict(num_classes=0, in_chans=in_chans, **(timm_kwargs or {}))
    try:
        try:
            return timm.create_model(model_name, pretrained=False, img_size=img_size, **kwargs)
        except TypeError:
            # CNNs (DenseNet, ResNet, ...) take any input size and reject the argument.
            return timm.create_model(model_name, pretrained=False, **kwargs)
    except RuntimeError as error:
        if "Unknown model" not in str(error):
            raise
        raise UserError(f"model.vision.model_name={model_name!r}: not a timm model name "
                        "(timm.list_models() lists them)") from None
    except TypeError as error:
        raise UserError(f"model.vision.timm_kwargs={timm_kwargs or {}}: {model_name} rejects them ({error})") from None


TOWER_KINDS = ("timm", "transformers", "open_clip")
TOKEN_POOLINGS = ("mean", "max")
# timm ViT blocks: attention (fused qkv, output proj) and MLP linear layers
TIMM_LORA_TARGETS = ("qkv", "proj", "fc1", "fc2")
# timm CNN blocks: the dense convolutions of ResNet / DenseNet blocks, EfficientNet's pointwise
# ones and ConvNeXt's MLP (depthwise convolutions are left alone)
TIMM_CNN_LORA_TARGETS = ("conv1", "conv2", "conv3", "conv_pw", "fc1", "fc2")
# Grad-CAM's default CNN layer: the last stage with at most this stride (see explain/targets.py)
CAM_MAX_STRIDE = 16


def parse_pool_tokens(pool_tokens: bool | str | None) -> str | None:
    """`pool_tokens` as "mean", "max" or None (the encoder's own pooling); anything else is a
    UserError naming the key."""
    if pool_tokens is True:
        pool_tokens = "mean"
    if pool_tokens not in (False, None, *TOKEN_POOLINGS):
        raise UserError(f"model.vision.pool_tokens={pool_tokens!r}: expected false, true, 'mean' or 'max'")
    return pool_tokens or None


def pool_token_grid(tokens: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, N, C) tokens -> (B, C): their mean, or each channel's strongest token ("max")."""
    return tokens.amax(dim=1) if pooling == "max" else tokens.mean(dim=1)


def expand_channels(pixel_values: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, 1, H, W) -> (B, channels, H, W) for an RGB encoder given grayscale; anything else as
    it is. The channels are then identical: per-channel normalisation (the encoder's own
    mean/std) is `ImageTransform`'s job (in_chans=3 and list mean/std), done before this."""
    if pixel_values.shape[1] == 1 and channels != 1:
        return pixel_values.expand(-1, channels, -1, -1)
    return pixel_values


def check_tower_in_chans(in_chans: int, encoder_chans: int, family: str) -> int:
    """The channel count a non-timm tower takes: its encoder's own, or 1 (expanded in forward)."""
    if in_chans not in (1, encoder_chans):
        raise UserError(f"model.vision.in_chans={in_chans}: a {family} encoder takes {encoder_chans} channels "
                        f"(or 1, repeated to {encoder_chans})")
    return int(in_chans)


def copy_state_strictly(module: nn.Module, state: dict[str, torch.Tensor], path: str | Path,
                        key: str = "model.vision.pretrained_path") -> None:
    """load_state_dict with every key present and of the right shape, else a UserError naming
    the file and a few of the offending keys (a partial load would train on random weights)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        parts = [f"{name} {keys[:3]}" for name, keys in
                 (("missing", missing), ("unexpected", unexpected), ("of another shape", mismatched)) if keys]
        raise UserError(f"{key}={str(path)!r}: its weights do not fit the {type(module).__name__} the config "
                        f"describes: {'; '.join(parts)}")
    module.load_state_dict(state, strict=True)


def timm_block_prefix(backbone: nn.Module, prefix: str) -> str:
    """`named_modules` prefix of a timm model's repeated blocks (for LoRA): a ViT's `blocks`, a
    staged CNN's `stages` / `layers`, else the whole model (`prefix`: the model's own name)."""
    for name in ("blocks", "stages", "layers"):
        if isinstance(getattr(backbone, name, None), nn.Module):
            return f"{prefix}.{name}"
    return prefix


def timm_lora_targets(backbone: nn.Module) -> tuple[str, ...]:
    """Module-name suffixes LoRA wraps in a timm model's blocks: a transformer's attention and MLP
    linear layers, a CNN's block convolutions."""
    if getattr(backbone, "num_prefix_tokens", 0) or hasattr(backbone, "patch_embed"):
        return TIMM_LORA_TARGETS
    return TIMM_CNN_LORA_TARGETS


def timm_cam_module(backbone: nn.Module, max_stride: int | None = CAM_MAX_STRIDE) -> str:
    """`get_submodule` name, inside a timm model, of its last feature stage with stride <=
    max_stride (None: the last stage). A stride-32 CNN map is 4 x 4 at 128 px, too coarse to
    put a peak on a nodule or a tube."""
    stages = backbone.feature_info
    fine = [stage for stage in stages if max_stride is None or stage["reduction"] <= max_stride]
    return (fine or stages)[-1]["module"]


def build_vision_tower(spec: dict) -> nn.Module:
    """The vision tower a config's `vision` dict describes, with random weights and without
    reading a file (a saved model rebuilds from its config alone); weights come afterwards from
    `tower.load_pretrained(spec["pretrained_path"])`.

    kind None / "timm": `TimmVisionTower` from model_name, img_size, in_chans, timm_kwargs,
    token_reduction, pool_tokens. "transformers": `spec["config"]` is the HF (vision) config as a
    dict with its `model_type`. "open_clip": `spec["config"]` is open_clip's `model_cfg`.
    """
    kind = spec.get("kind") or "timm"
    if kind not in TOWER_KINDS:
        raise UserError(f"model.vision.kind={kind!r}: expected null or one of {list(TOWER_KINDS)}")
    if kind == "timm":
        return TimmVisionTower(spec["model_name"], spec["img_size"], spec.get("in_chans", 1), spec.get("timm_kwargs"),
                               spec.get("token_reduction"), spec.get("pool_tokens", False))
    if spec.get("token_reduction") is not None:
        raise UserError(f"model.vision.token_reduction={spec['token_reduction']}: only for timm CNNs; "
                        f"leave it unset for kind {kind!r}")
    if kind == "transformers":  # imported here: each kind's module only when it is used
        from .vision_transformers import TransformersVisionTower
        return TransformersVisionTower(spec.get("config"), spec["img_size"], spec.get("in_chans", 3),
                                       spec.get("pool_tokens", False))
    from .vision_open_clip import OpenClipVisionTower
    return OpenClipVisionTower(spec.get("config"), spec["img_size"], spec.get("in_chans", 3),
                               spec.get("pool_tokens", False), spec.get("model_name"))


class TimmVisionTower(nn.Module):
    """Any timm backbone, used through its own feature API (`forward_features`, `forward_head`,
    and `forward_intermediates` for CNN tokens taken before the last stage).

    token_reduction: for CNNs, take the patch tokens from the deepest stage whose stride is at
    most this (e.g. 16: an 8x8 grid at 128 px instead of the last stage's 4x4), so that each
    token still covers its own part of the image; the pooled embedding still comes from the
    last stage unless `pool_tokens`. None: tokens from the last stage.

    pool_tokens: the pooled embedding is made from the patch tokens instead of by the backbone's
    own pooling of its last stage (a CNN then stops at the token stage): "mean" (or true) averages
    them, "max" takes each channel's largest token. Either way the image-text score is a linear
    read-out of a pool of the very tokens cross-attention reads, so Grad-CAM of that score at the
    token stage is class activation mapping (Zhou et al., 2016) exactly; with "max" each channel
    answers for the place where it fires most, as in max-pooled weakly supervised localisation."""

    POOLINGS = TOKEN_POOLINGS

    def __init__(self, model_name: str, img_size: int, in_chans: int, timm_kwargs: dict | None = None,
                 token_reduction: int | None = None, pool_tokens: bool | str = False):
        super().__init__()
        self.backbone = create_backbone(model_name, img_size, in_chans, timm_kwargs)
        self.in_chans = in_chans
        self.num_features = self.backbone.num_features  # width of the pooled embedding
        self.num_prefix_tokens = getattr(self.backbone, "num_prefix_tokens", 0)
        self.token_stage = self._token_stage(model_name, token_reduction)  # None: the last stage
        self.token_features = (self.backbone.feature_info[self.token_stage]["num_chs"]
                               if self.token_stage is not None else self.num_features)  # width of a token
        self.pool_tokens = parse_pool_tokens(pool_tokens)  # None: the backbone's own pooling
        if self.pool_tokens:
            self.num_features = self.token_features
            if self.token_stage is not None:  # the stages after the token stage would go unused
                self.backbone.prune_intermediate_layers([self.token_stage], prune_head=True)

    @property
    def block_prefix(self) -> str:
        """`named_modules` prefix (relative to the tower) of the repeated blocks LoRA goes into:
        a ViT's `backbone.blocks`, a staged CNN's `stages` / `layers`, else the whole backbone."""
        return timm_block_prefix(self.backbone, "backbone")

    @property
    def lora_targets(self) -> tuple[str, ...]:
        """Module-name suffixes LoRA wraps under `block_prefix` (ViT: qkv, proj, fc1, fc2)."""
        return timm_lora_targets(self.backbone)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's own activation checkpointing of its blocks (a no-op for models without it)."""
        if hasattr(self.backbone, "set_grad_checkpointing"):
            self.backbone.set_grad_checkpointing(enable)

    def default_cam_layer(self, max_stride: int | None = CAM_MAX_STRIDE) -> str:
        """Grad-CAM's default layer relative to the tower: the last backbone stage with stride <=
        max_stride (a ViT's last block)."""
        return f"backbone.{timm_cam_module(self.backbone, max_stride)}"

    def token_grid(self, img_size: int) -> tuple[int, int]:
        """(rows, columns) of the patch tokens for a square `img_size` input."""
        if self.num_prefix_tokens or hasattr(self.backbone, "patch_embed"):
            return tuple(self.backbone.patch_embed.grid_size)
        stage = self.token_stage if self.token_stage is not None else -1
        side = math.ceil(img_size / self.backbone.feature_info[stage]["reduction"])
        return side, side

    def _token_stage(self, model_name: str, token_reduction: int | None) -> int | None:
        if token_reduction is None:
            return None
        info = getattr(self.backbone, "feature_info", None)
        if not info or self.num_prefix_tokens or not hasattr(self.backbone, "forward_intermediates"):
            raise UserError(f"model.vision.token_reduction needs a CNN with stages; {model_name} has none "
                             "(leave it unset for transformers)")
        stages = [i for i, stage in enumerate(info) if stage["reduction"] <= token_reduction]
        if not stages:
            raise UserError(f"model.vision.token_reduction={token_reduction}: {model_name}'s smallest stride is "
                             f"{info[0]['reduction']}")
        return None if stages[-1] == len(info) - 1 else stages[-1]

    def load_pretrained(self, path: str | Path) -> None:
        """Load backbone weights from a local file or directory (no download).

        The first convolution is adapted when the file was trained with another channel count
        (e.g. RGB ImageNet weights for 1-channel radiographs); classifier weights are dropped.
        """
        state = read_state_dict(path)
        own = self.backbone.state_dict()
        first_conv = self.backbone.pretrained_cfg.get("first_conv")
        if first_conv and f"{first_conv}.weight" in state:
            key = f"{first_conv}.weight"
            if state[key].shape[1] != self.in_chans:
                state[key] = adapt_input_conv(self.in_chans, state[key])
        state = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        missing = [k for k in own if k not in state]
        if len(missing) == len(own):
            raise UserError(f"model.vision.pretrained_path={str(path)!r}: no tensor matches the "
                            f"{type(self.backbone).__name__} backbone")
        self.backbone.load_state_dict(state, strict=False)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> patch tokens (B, N, C) and the pooled embedding (B, num_features)."""
        if self.token_stage is not None:
            if self.pool_tokens:  # the later stages are pruned: stop at the token stage
                (token_map,) = self.backbone.forward_intermediates(
                    pixel_values, indices=[self.token_stage], intermediates_only=True, stop_early=True)
            else:
                features, (token_map,) = self.backbone.forward_intermediates(
                    pixel_values, indices=[self.token_stage], intermediates_only=False)
            tokens = token_map.flatten(2).transpose(1, 2)  # (B, h*w, C_stage)
        else:
            features = self.backbone.forward_features(pixel_values)
            if features.ndim == 4:  # CNN feature map (B, C, h, w)
                tokens = features.flatten(2).transpose(1, 2)  # (B, h*w, C)
            else:  # transformer tokens (B, prefix + N, C)
                tokens = features[:, self.num_prefix_tokens :]  # (B, N, C)
        if self.pool_tokens:  # (B, C): the mean, or each channel's strongest token ("max")
            return tokens, pool_token_grid(tokens, self.pool_tokens)
        return tokens, self.backbone.forward_head(features, pre_logits=True)


VisionTower = TimmVisionTower  # the name the models import (and check with isinstance)
