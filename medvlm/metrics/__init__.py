"""Evaluation metrics: pure functions over strings and label arrays (no model, no torch).

- `nlg`: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (pycocoevalcap) and the shipped `evaluate` modules
- `chexpert`: rule-based CheXpert labeler and clinical efficacy
- `bootstrap`: bootstrap confidence intervals for all of them
"""
