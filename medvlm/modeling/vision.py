"""timm adapter: pixels -> patch tokens and a pooled image embedding."""

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


def read_state_dict(path: str | Path, key: str = "model.vision.pretrained_path") -> dict[str, torch.Tensor]:
    """Weights from a .safetensors file, a torch file (tensors only), or a directory holding one;
    a missing file is a UserError naming the config `key` that gave the path."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in WEIGHT_FILE_NAMES if (path / name).is_file()]
        if not found:
            raise UserError(f"{key}={str(path)!r}: no weight file in that directory (looked for "
                            f"{', '.join(WEIGHT_FILE_NAMES)})")
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


class VisionTower(nn.Module):
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

    POOLINGS = ("mean", "max")

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
        if pool_tokens is True:
            pool_tokens = "mean"
        if pool_tokens not in (False, None, *self.POOLINGS):
            raise UserError(f"model.vision.pool_tokens={pool_tokens!r}: expected false, true, 'mean' or 'max'")
        self.pool_tokens = pool_tokens or None  # None: the backbone's own pooling
        if pool_tokens:
            self.num_features = self.token_features
            if self.token_stage is not None:  # the stages after the token stage would go unused
                self.backbone.prune_intermediate_layers([self.token_stage], prune_head=True)

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
        if self.pool_tokens == "max":
            return tokens, tokens.amax(dim=1)  # (B, C): each channel's strongest token
        if self.pool_tokens == "mean":
            return tokens, tokens.mean(dim=1)
        return tokens, self.backbone.forward_head(features, pre_logits=True)
