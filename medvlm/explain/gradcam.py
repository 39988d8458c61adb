"""Grad-CAM (Selvaraju et al., 2017) through hooks on a layer named by string.

The map of a score s at a layer with activations A (channels c, positions p) is
ReLU(sum_c alpha_c A_c) with alpha_c = mean_p ds/dA_c: positions whose features push the score
*up* are high. Maps are min-max normalised per image to [0, 1] without changing direction
(high stays high), and upsampled to the input size.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError


def _spatial(activations: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Layer output -> (B, C, h, w): CNN maps as they are, transformer tokens (B, prefix + N, C)
    without prefix tokens on a square grid."""
    if activations.ndim == 4:
        return activations
    if activations.ndim != 3:
        raise UserError(f"Grad-CAM needs a layer whose output is (B, C, h, w) or (B, N, C), got {tuple(activations.shape)}")
    tokens = activations[:, num_prefix_tokens:]  # (B, N, C)
    side = math.isqrt(tokens.shape[1])
    if side * side != tokens.shape[1]:
        raise UserError(f"Grad-CAM layer output: {tokens.shape[1]} tokens do not form a square grid")
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)  # (B, C, h, w)


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max scaling of (B, H, W) to [0, 1]; a constant map becomes all zeros."""
    low = maps.flatten(1).min(dim=1).values[:, None, None]
    high = maps.flatten(1).max(dim=1).values[:, None, None]
    return (maps - low) / (high - low).clamp(min=1e-12)


def grad_cam(model: nn.Module, layer: str, forward: Callable[[], torch.Tensor], size: tuple[int, int] | None = None,
             num_prefix_tokens: int = 0, elementwise: bool = False) -> torch.Tensor:
    """Grad-CAM maps (B, H, W) in [0, 1] of the scores that `forward()` returns, shape (B,).

    layer: a submodule name as `model.get_submodule` takes it (e.g. "vision.backbone.features.norm5").
    forward: runs the model on the batch and returns one score per image (a logit, a similarity).
    size: (H, W) to upsample to (bilinear); default the layer's own grid.
    The model runs in eval mode (batch norm, dropout) and gets its train/eval mode back afterwards;
    parameter gradients are left untouched.
    """
    try:
        module = model.get_submodule(layer)
    except AttributeError:
        raise UserError(f"layer {layer!r}: no such submodule of the {type(model).__name__} "
                        "(names as `model.named_modules()` gives them)") from None
    captured = {}
    def keep(module, args, output):
        if not output.requires_grad:  # a frozen backbone: start the graph here
            output = output.detach().requires_grad_(True)
        captured["output"] = output
        return output.clone()  # later in-place ops (e.g. ReLU(inplace=True)) must not alter what we keep

    handle = module.register_forward_hook(keep)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            scores = forward()
            if scores.ndim != 1:
                raise ValueError(f"forward() must return one score per image (B,), got {tuple(scores.shape)}")
            activations = captured["output"]
            (gradients,) = torch.autograd.grad(scores.sum(), activations)
    finally:
        handle.remove()
        model.train(was_training)
    activations = _spatial(activations.detach(), num_prefix_tokens)  # (B, C, h, w)
    gradients = _spatial(gradients, num_prefix_tokens)  # (B, C, h, w)
    if elementwise:  # HiResCAM (Draelos & Carin, 2020): each position weighted by its own gradient
        maps = F.relu((gradients * activations).sum(dim=1))  # (B, h, w)
    else:
        weights = gradients.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1) alpha_c
        maps = F.relu((weights * activations).sum(dim=1))  # (B, h, w)
    if size is not None:
        maps = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return normalize_maps(maps.float())
