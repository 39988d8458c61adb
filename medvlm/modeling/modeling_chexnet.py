"""CheXNet (Rajpurkar et al., 2017): DenseNet-121 with one sigmoid output per observation,
trained with class-weighted binary cross-entropy.

The backbone is our `VisionTower` (any timm model; DenseNet-121 by default, 1-channel input),
so weights load from a local file the same way as the VLM's vision tower.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.utils import ModelOutput
from torch import nn

from .configuration_chexnet import CheXNetConfig
from .vision import VisionTower, init_layer_weights


def class_weighted_bce(logits: torch.Tensor, targets: torch.Tensor,
                       positive_fraction: torch.Tensor | None = None) -> torch.Tensor:
    """The CheXNet loss: -w+ y log p - w- (1 - y) log(1 - p), averaged over labelled entries.

    logits, targets: (B, L); targets in {0, 1}, NaN where an entry carries no label (ignored).
    positive_fraction: (L,) share f of positives in the training set, giving w+ = 1 - f (the
    negatives' share) and w- = f, so rare positives weigh as much as common negatives.
    None: w+ = w- = 1.
    """
    known = ~torch.isnan(targets)  # (B, L)
    y = torch.where(known, targets, torch.zeros_like(targets))
    if positive_fraction is None:
        weights = torch.ones_like(y)
    else:
        f = positive_fraction.to(logits.dtype)[None, :]  # (1, L)
        weights = y * (1 - f) + (1 - y) * f  # (B, L)
    per_entry = F.binary_cross_entropy_with_logits(logits.float(), y.float(), reduction="none")  # (B, L)
    return (per_entry * weights * known).sum() / known.sum().clamp(min=1)


@dataclass
class CheXNetOutput(ModelOutput):
    """
    loss: class-weighted BCE (present when `labels` are given).
    logits: (B, L) one score per label; sigmoid gives the probability.
    image_embeds: (B, C) pooled backbone features (before dropout and the classifier).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None


class CheXNetPreTrainedModel(PreTrainedModel):
    config_class = CheXNetConfig
    config: CheXNetConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups: matrices and kernels decay; biases and norms do not."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]

    def _init_weights(self, module: nn.Module) -> None:
        init_layer_weights(module, self.config.initializer_range)


class CheXNetForImageClassification(CheXNetPreTrainedModel):
    """pixels (B, C, S, S) -> one logit per label."""

    def __init__(self, config: CheXNetConfig):
        super().__init__(config)
        v = config.vision
        self.vision = VisionTower(v["model_name"], v["img_size"], v["in_chans"], v.get("timm_kwargs"))
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(self.vision.num_features, len(config.label_names))
        self.post_init()

    vision_backbone_name = "vision.backbone"  # `get_submodule` name of the timm backbone (Grad-CAM layers)

    def vision_tower(self) -> VisionTower:
        """The vision tower: `.backbone` is its timm model, `.num_prefix_tokens` its class tokens."""
        return self.vision

    def load_pretrained_backbone(self) -> None:
        """Backbone weights from `vision.pretrained_path` (a local file or directory; no download)."""
        if self.config.vision.get("pretrained_path"):
            self.vision.load_pretrained(self.config.vision["pretrained_path"])

    def forward(self, pixel_values: torch.FloatTensor, labels: torch.FloatTensor | None = None,
                **kwargs) -> CheXNetOutput:
        """labels: (B, L) in {0, 1}, NaN = no label for that entry."""
        _, pooled = self.vision(pixel_values)  # (B, C)
        logits = self.classifier(self.dropout(pooled))  # (B, L)
        loss = None
        if labels is not None:
            fraction = self.config.positive_fraction  # a config value, not a buffer: nothing to load
            fraction = None if fraction is None else torch.tensor(fraction, device=logits.device)
            loss = class_weighted_bce(logits, labels, fraction)
        return CheXNetOutput(loss=loss, logits=logits, image_embeds=pooled)
