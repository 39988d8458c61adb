"""What Grad-CAM explains, per model: the default layer and the score of each image.

- CheXNet: the logit of one label per image; layer = the backbone's last feature stage.
- MedVLM: the image-text similarity cos(image embedding, text embedding) for a given text
  embedding per image; layer = the vision tower's last feature stage.
"""

from __future__ import annotations

import torch

from .gradcam import grad_cam


def is_classifier(model) -> bool:
    return getattr(model.config, "model_type", None) == "chexnet"


def vision_tower(model):
    return model.vision if is_classifier(model) else model.model.vision


def default_layer(model) -> str:
    """The last feature stage of the vision backbone, as a `get_submodule` name."""
    prefix = "vision.backbone." if is_classifier(model) else "model.vision.backbone."
    return prefix + vision_tower(model).backbone.feature_info[-1]["module"]


def classifier_cams(model, pixels: torch.Tensor, label_indices: torch.Tensor, layer: str | None = None) -> torch.Tensor:
    """(B, S, S) Grad-CAM of logit[b, label_indices[b]] for pixels (B, C, S, S)."""
    rows = torch.arange(len(pixels), device=pixels.device)
    label_indices = label_indices.to(pixels.device)
    return grad_cam(model, layer or default_layer(model),
                    lambda: model(pixel_values=pixels).logits[rows, label_indices],
                    size=tuple(pixels.shape[-2:]), num_prefix_tokens=vision_tower(model).num_prefix_tokens)


def similarity_cams(model, pixels: torch.Tensor, text_embeds: torch.Tensor, layer: str | None = None) -> torch.Tensor:
    """(B, S, S) Grad-CAM of cos(image b, text_embeds[b]) for pixels (B, C, S, S), text_embeds (B, E)."""
    text_embeds = text_embeds.to(pixels.device)
    return grad_cam(model, layer or default_layer(model),
                    lambda: (model.model.get_image_features(pixels) * text_embeds).sum(-1),
                    size=tuple(pixels.shape[-2:]), num_prefix_tokens=vision_tower(model).num_prefix_tokens)
