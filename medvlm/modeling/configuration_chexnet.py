"""CheXNetConfig: a timm image backbone (DenseNet-121 by default) and a multi-label head.

    vision = {"model_name": "densenet121", "img_size": 224, "in_chans": 1, "timm_kwargs": {...},
              "pretrained_path": None}

`label_names` fixes the order of the head's outputs; `positive_fraction` (one value per label,
the share of positives in the training set) sets the class weights of the loss as in the
CheXNet paper (see `class_weighted_bce`).
"""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

DEFAULT_VISION = {
    "model_name": "densenet121",
    "img_size": 224,
    "in_chans": 1,
    "timm_kwargs": {},
    "pretrained_path": None,
}
# The 14 CheXpert observations (kept here too: model code imports nothing outside modeling/).
CHEXPERT_LABELS = [
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Lung Opacity", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
]


@strict
class CheXNetConfig(PreTrainedConfig):
    r"""
    vision (`dict`): timm model name and arguments (see module docstring).
    label_names (`list[str]`): names of the outputs, in order (default: the 14 CheXpert observations).
    positive_fraction (`list[float]`, *optional*): training-set share of positives per label; None
        gives every label and class the weight 1 (plain binary cross-entropy).
    dropout (`float`): dropout before the classifier.
    """

    model_type = "chexnet"
    # keys a run config's model section may not set, and where they come from instead
    derived_fields = {"label_names": "they are the dataset's labels",
                      "positive_fraction": "it is measured on the training split"}
    vision_keys = tuple(DEFAULT_VISION)
    # what a run config may set each field to (read by medvlm.config; see MedVLMConfig.setting_ranges)
    setting_ranges = {"dropout": {"min": 0, "lt": 1}, "initializer_range": {"gt": 0}, "vision.in_chans": {"min": 1}}

    vision: dict | None = None
    label_names: list | None = None
    positive_fraction: list | None = None
    dropout: float = 0.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        self.vision = {**DEFAULT_VISION, **(self.vision or {})}
        self.label_names = list(self.label_names or CHEXPERT_LABELS)
        if self.positive_fraction is not None and len(self.positive_fraction) != len(self.label_names):
            raise ValueError(f"positive_fraction has {len(self.positive_fraction)} values for "
                             f"{len(self.label_names)} labels")
        kwargs["id2label"] = dict(enumerate(self.label_names))
        kwargs["label2id"] = {name: i for i, name in enumerate(self.label_names)}
        super().__post_init__(**kwargs)
