"""The 14 CheXpert observations, in the order the CheXpert labeler writes them.

Label vectors everywhere in medvlm use this order: 1 positive, 0 negative, -1 uncertain,
NaN not mentioned.
"""

CHEXPERT_OBSERVATIONS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Lung Opacity",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
