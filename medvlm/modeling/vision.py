"""timm adapter: pixels -> patch tokens and a pooled image embedding."""

from pathlib import Path

import torch
import timm
from safetensors.torch import load_file
from timm.models import adapt_input_conv
from torch import nn

WEIGHT_FILE_NAMES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from a .safetensors file, a torch file (tensors only), or a directory holding one."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in WEIGHT_FILE_NAMES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"{path}: no weight file (looked for {', '.join(WEIGHT_FILE_NAMES)})")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weight file not found")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # common wrappers of training checkpoints
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


class VisionTower(nn.Module):
    """Any timm backbone, used through its own feature API (`forward_features`, `forward_head`)."""

    def __init__(self, model_name: str, img_size: int, in_chans: int, timm_kwargs: dict | None = None):
        super().__init__()
        kwargs = dict(num_classes=0, in_chans=in_chans, **(timm_kwargs or {}))
        try:
            self.backbone = timm.create_model(model_name, pretrained=False, img_size=img_size, **kwargs)
        except TypeError:
            # CNNs (DenseNet, ResNet, ...) take any input size and reject the argument.
            self.backbone = timm.create_model(model_name, pretrained=False, **kwargs)
        self.in_chans = in_chans
        self.num_features = self.backbone.num_features
        self.num_prefix_tokens = getattr(self.backbone, "num_prefix_tokens", 0)

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
            raise ValueError(f"{path}: no tensor matches the {type(self.backbone).__name__} backbone")
        self.backbone.load_state_dict(state, strict=False)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone.forward_features(pixel_values)
        if features.ndim == 4:  # CNN feature map (B, C, h, w)
            tokens = features.flatten(2).transpose(1, 2)  # (B, h*w, C)
        else:  # transformer tokens (B, prefix + N, C)
            tokens = features[:, self.num_prefix_tokens :]  # (B, N, C)
        pooled = self.backbone.forward_head(features, pre_logits=True)  # (B, C)
        return tokens, pooled
