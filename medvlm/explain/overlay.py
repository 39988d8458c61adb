"""Maps drawn over the radiograph, written as PNG (matplotlib's Agg canvas; no pyplot state)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def display_image(pixels: torch.Tensor, mean=0.5, std=0.5) -> np.ndarray:
    """Model input (C, S, S), normalised -> (S, S) in [0, 1] for display (first channel; `mean`
    and `std` a number or one per channel, as `ImageTransform` holds them)."""
    mean = mean[0] if isinstance(mean, (list, tuple)) else mean
    std = std[0] if isinstance(std, (list, tuple)) else std
    return (pixels[0].float() * std + mean).clamp(0, 1).cpu().numpy()


def upsample(heatmap, size: tuple[int, int]) -> np.ndarray:
    """(h, w) map -> (H, W) by bilinear interpolation, min-max scaled to [0, 1]."""
    tensor = torch.as_tensor(np.asarray(heatmap, dtype=np.float32))[None, None]
    out = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
    low, high = out.min(), out.max()
    return (out - low) / (high - low) if high > low else np.zeros_like(out)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _draw(ax, image: np.ndarray, heatmap, title: str | None, alpha: float) -> None:
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    ax.imshow(upsample(heatmap, image.shape), cmap="jet", alpha=alpha, vmin=0, vmax=1)
    if title:
        ax.set_title(title, fontsize=9)
    ax.axis("off")


def save_overlay(image: np.ndarray, heatmap, path, title: str | None = None, alpha: float = 0.45) -> Path:
    """One panel: the (H, W) image in grey with the map (any grid size) in colour over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure = _figure(3.2, 3.4)
    _draw(figure.add_subplot(1, 1, 1), image, heatmap, title, alpha)
    figure.savefig(path, format="png", bbox_inches="tight")
    return path


def save_word_overlays(image: np.ndarray, words: list[tuple[str, object]], path, title: str | None = None,
                       columns: int = 6, alpha: float = 0.45) -> Path:
    """A grid of panels, one per (word, map), after a first panel with the plain image."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    panels = len(words) + 1
    rows = math.ceil(panels / columns)
    figure = _figure(2.0 * min(columns, panels), 2.15 * rows + (0.3 if title else 0))
    ax = figure.add_subplot(rows, min(columns, panels), 1)
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    ax.set_title("image", fontsize=9)
    ax.axis("off")
    for k, (word, heatmap) in enumerate(words, start=2):
        _draw(figure.add_subplot(rows, min(columns, panels), k), image, np.asarray(heatmap), word, alpha)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.savefig(path, format="png", bbox_inches="tight")
    return path
