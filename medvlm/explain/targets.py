"""What Grad-CAM explains, per model: the default layer and the score of each image.

- CheXNet: the logit of one label per image.
- MedVLM: the image-text similarity cos(image, text) for a text embedding per image; given the
  difference of a positive and a negative prompt embedding, the score is the zero-shot
  classification score cos(image, positive) - cos(image, negative).

Default layer (the tower's `default_cam_layer`): for a timm backbone the last stage whose stride
is at most `MAX_STRIDE` (16). The stride-32 stage of a CNN is 4 x 4 at 128 px, too coarse to put
a peak on a nodule or a tube, and right before global pooling its Grad-CAM weights every position
alike. For a transformers or open_clip ViT, the last block's pre-attention norm. `layer=` picks
any other.
"""

from __future__ import annotations

import torch

from .gradcam import grad_cam


def is_classifier(model) -> bool:
    return getattr(model.config, "model_type", None) == "chexnet"


MAX_STRIDE = 16


def default_layer(model, max_stride: int | None = MAX_STRIDE) -> str:
    """The vision tower's own Grad-CAM layer as a `get_submodule` name of the model: for a timm
    tower the last backbone stage with stride <= max_stride (None: the last stage), for a
    transformers or open_clip ViT its last block's pre-attention norm (see each tower's
    `default_cam_layer`). The tower sits where `vision_backbone_name` minus its last part says
    ("model.vision" for MedVLM, "vision" for CheXNet)."""
    tower_name = model.vision_backbone_name.rsplit(".", 1)[0]
    return f"{tower_name}.{model.vision_tower().default_cam_layer(max_stride)}"


def classifier_cams(model, pixels: torch.Tensor, label_indices: torch.Tensor, layer: str | None = None,
                    elementwise: bool = False) -> torch.Tensor:
    """(B, S, S) Grad-CAM of logit[b, label_indices[b]] for pixels (B, C, S, S); `elementwise`:
    HiResCAM (see `grad_cam`)."""
    rows = torch.arange(len(pixels), device=pixels.device)
    label_indices = label_indices.to(pixels.device)
    return grad_cam(model, layer or default_layer(model),
                    lambda: model(pixel_values=pixels).logits[rows, label_indices],
                    size=tuple(pixels.shape[-2:]), num_prefix_tokens=model.vision_tower().num_prefix_tokens,
                    elementwise=elementwise)


def similarity_cams(model, pixels: torch.Tensor, text_embeds: torch.Tensor, layer: str | None = None,
                    elementwise: bool = False) -> torch.Tensor:
    """(B, S, S) Grad-CAM of image_embed[b] . text_embeds[b] for pixels (B, C, S, S), text_embeds
    (B, E): a normalised text embedding (similarity) or positive - negative (zero-shot score)."""
    text_embeds = text_embeds.to(pixels.device)
    return grad_cam(model, layer or default_layer(model),
                    lambda: (model.get_image_features(pixels) * text_embeds).sum(-1),
                    size=tuple(pixels.shape[-2:]), num_prefix_tokens=model.vision_tower().num_prefix_tokens,
                    elementwise=elementwise)
