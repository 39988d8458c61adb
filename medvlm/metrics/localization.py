"""How well a saliency map (attention, Grad-CAM) points at the evidence: pointing game and IoU.

Both compare a map (H, W) with a boolean mask (H, W) of where the finding was drawn, at the same
resolution (upsample the map first).

- Pointing game (Zhang et al., 2016): a hit when the map's maximum lies inside the mask dilated
  by `tolerance` pixels (default 2 at 128 px, i.e. ~1.5% of the image side; maps from a coarse
  feature grid cannot place a peak more precisely). Ties for the maximum: the first in raster
  order, so a constant map is not rewarded.
- IoU: the map is cut at its top-k pixels with k = the mask's area (the map is asked to mark
  as much as the mask covers, so no threshold is tuned), then IoU with the mask.
"""

from __future__ import annotations

import numpy as np


def dilate(mask, pixels: int) -> np.ndarray:
    """Binary dilation with a (2p+1)-square structuring element (numpy only)."""
    mask = np.asarray(mask, dtype=bool)
    if pixels <= 0:
        return mask.copy()
    padded = np.pad(mask, pixels)
    out = np.zeros_like(mask)
    H, W = mask.shape
    for dy in range(2 * pixels + 1):
        for dx in range(2 * pixels + 1):
            out |= padded[dy:dy + H, dx:dx + W]
    return out


def pointing_hit(heatmap, mask, tolerance: int = 2) -> bool:
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if heatmap.shape != np.shape(mask):
        raise ValueError(f"heatmap {heatmap.shape} and mask {np.shape(mask)} differ in shape")
    y, x = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    return bool(dilate(mask, tolerance)[y, x])


def top_area_iou(heatmap, mask) -> float:
    """IoU of the mask with the map's top-k pixels, k = mask area (ties broken by raster order)."""
    heatmap = np.asarray(heatmap, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    k = int(mask.sum())
    if k == 0:
        return float("nan")
    top = np.zeros(heatmap.size, dtype=bool)
    top[np.argsort(-heatmap.ravel(), kind="stable")[:k]] = True
    top = top.reshape(heatmap.shape)
    return float((top & mask).sum() / (top | mask).sum())


def random_pointing_rate(mask, tolerance: int = 2) -> float:
    """Expected pointing-game hit rate of a uniformly random point: the dilated mask's area share."""
    return float(dilate(mask, tolerance).mean())


def localization_scores(heatmaps, masks, tolerance: int = 2, prefix: str = "explain") -> dict:
    """Mean pointing-game accuracy and top-area IoU over (map, mask) pairs, plus the chance
    level of the pointing game (`baselines.random.<prefix>_pointing_game`)."""
    pairs = list(zip(heatmaps, masks))
    if not pairs:
        return {f"{prefix}_pointing_game": None, f"{prefix}_iou": None, f"{prefix}_num_maps": 0}
    hits = [pointing_hit(h, m, tolerance) for h, m in pairs]
    ious = [top_area_iou(h, m) for h, m in pairs]
    return {
        f"{prefix}_pointing_game": float(np.mean(hits)),
        f"{prefix}_iou": float(np.nanmean(ious)),
        f"{prefix}_num_maps": len(pairs),
        f"baselines.random.{prefix}_pointing_game": float(np.mean([random_pointing_rate(m, tolerance)
                                                                   for _, m in pairs])),
    }
