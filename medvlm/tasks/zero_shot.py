"""Zero-shot classification with the contrastive embeddings: each observation gets positive
and negative prompts; an image's score is cos(image, positive) - cos(image, negative), where
each side is the normalised mean of its prompts' embeddings (CLIP-style prompt ensembling).
The difference ranks images exactly as the two-way softmax over the prompts would.

Prompts are phrased the way reports state findings, since the text tower only ever saw reports;
`PROMPT_TEMPLATE` wraps them in the report layout of the training text.
"""

from __future__ import annotations

import numpy as np

from ..metrics.classification import auroc_per_label, binarize_labels
from ..observations import CHEXPERT_OBSERVATIONS
from .embeddings import image_embeddings, text_embeddings

ABNORMAL = ["There is a moderate left pleural effusion.", "Moderate cardiomegaly.", "Moderate pulmonary edema.",
            "There is a patchy opacity in the right lower lobe.", "There is a moderate right pneumothorax."]
DEFAULT_PROMPTS: dict[str, tuple[list[str], list[str]]] = {
    "No Finding": (["No acute cardiopulmonary process.", "Normal chest radiograph.",
                    "The lungs are clear. No pleural effusion or pneumothorax. Heart size is normal."], ABNORMAL),
    "Enlarged Cardiomediastinum": (["The cardiomediastinal silhouette is enlarged."],
                                   ["The cardiomediastinal silhouette is within normal limits."]),
    "Cardiomegaly": (["Mild cardiomegaly.", "Moderate cardiomegaly.", "The cardiac silhouette is moderately enlarged.",
                      "The heart size is severely enlarged."], ["Heart size is normal.", "No cardiomegaly."]),
    "Lung Lesion": (["There is a 15 mm nodule in the right upper lung.", "A 12 mm pulmonary nodule is seen in the "
                     "left lower lung."], ["The lungs are clear.", "No pulmonary nodule."]),
    "Lung Opacity": (["There is a patchy opacity in the right lower lobe.", "Patchy airspace opacity is seen in the "
                      "left upper lobe.", "Focal consolidation in the right middle lobe with dense opacity."],
                     ["The lungs are clear.", "No focal consolidation."]),
    "Edema": (["Mild pulmonary edema.", "There is moderate pulmonary edema with perihilar predominance."],
              ["No pulmonary edema."]),
    "Consolidation": (["Focal consolidation in the left upper lobe with dense opacity.",
                       "There is dense opacity with consolidation in the right lower lobe."],
                      ["No focal consolidation.", "The lungs are clear."]),
    "Pneumonia": (["Findings are consistent with pneumonia."], ["No evidence of pneumonia."]),
    "Atelectasis": (["Subsegmental atelectasis at the left lung base.", "There is right basilar atelectasis."],
                    ["The lungs are clear.", "No atelectasis."]),
    "Pneumothorax": (["There is a small left pneumothorax.",
                      "Moderate right pneumothorax with a visible pleural line."],
                     ["No pneumothorax.", "No evidence of pneumothorax."]),
    "Pleural Effusion": (["There is a small left pleural effusion.", "A moderate right pleural effusion is present.",
                          "There are large bilateral pleural effusions."],
                         ["No pleural effusion.", "There is no pleural effusion."]),
    "Pleural Other": (["Pleural thickening."], ["No pleural thickening."]),
    "Fracture": (["Acute rib fracture."], ["No acute osseous abnormality."]),
    "Support Devices": (["Endotracheal tube tip is above the carina.",
                         "A right central venous catheter ends in the superior vena cava.",
                         "A left-sided pacemaker is present with leads in expected position.",
                         "Support devices in standard position."], ["No support devices."]),
}
PROMPT_TEMPLATE = "FINDINGS: {0} IMPRESSION: {0}"


def prompt_embeddings(model, processor, prompts: dict[str, tuple[list[str], list[str]]],
                      template: str = PROMPT_TEMPLATE, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """-> positive (L, E) and negative (L, E) class embeddings, in the order of `prompts`."""
    sides = []
    for side in (0, 1):
        rows = []
        for observation, pair in prompts.items():
            embeds = text_embeddings(model, processor, [template.format(p) for p in pair[side]], batch_size)
            mean = embeds.mean(axis=0)
            rows.append(mean / max(np.linalg.norm(mean), 1e-12))
        sides.append(np.stack(rows))
    return sides[0], sides[1]


def zero_shot_scores(image_embeds: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """(N, L) scores: cos(image, positive_l) - cos(image, negative_l)."""
    return image_embeds @ positive.T - image_embeds @ negative.T


def evaluate_zero_shot(model, processor, records, batch_size: int = 64, image_embeds: np.ndarray | None = None,
                       prompts: dict | None = None, template: str = PROMPT_TEMPLATE,
                       uncertain: str = "negative") -> dict:
    """`zs_auroc.<Observation>` and `zs_auroc_mean` over the records that have labels.

    Labels: not mentioned (NaN) counts as negative (the study has no such finding), uncertain
    follows `uncertain`; an observation with a single class on the split is skipped (None, and
    listed in `zs_auroc_skipped`). The chance level is 0.5 (`baselines.random.zs_auroc_mean`).
    """
    prompts = prompts or DEFAULT_PROMPTS
    labelled = [i for i, r in enumerate(records) if r.get("labels") is not None]
    if not labelled:
        return {}
    if image_embeds is None:
        image_embeds = image_embeddings(model, processor, [records[i] for i in labelled], batch_size)
    else:
        image_embeds = image_embeds[labelled]
    names = [o for o in CHEXPERT_OBSERVATIONS if o in prompts]
    positive, negative = prompt_embeddings(model, processor, {o: prompts[o] for o in names}, template, batch_size)
    targets = binarize_labels([records[i]["labels"] for i in labelled], uncertain)
    targets = targets[:, [CHEXPERT_OBSERVATIONS.index(o) for o in names]]
    out = auroc_per_label(zero_shot_scores(image_embeds, positive, negative), targets, names, prefix="zs_auroc")
    out["baselines.random.zs_auroc_mean"] = 0.5
    return out
