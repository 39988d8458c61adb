"""Evaluation metrics: pure functions over strings and label arrays (no model, no torch).

- `nlg`: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (pycocoevalcap)
- `evaluate_modules`: those metrics and clinical efficacy as Hugging Face `evaluate` modules
- `chexpert`: the rule-based CheXpert labeler (`chexpert.labeler`), clinical efficacy
  (`chexpert.efficacy`) and the `medvlm label` command (`chexpert.command`)
- `bootstrap`: bootstrap confidence intervals for all of them
- `vqa`, `retrieval`, `classification`, `localization`: the other tasks' scores
- `field_scorers`: F1-CheXbert and RadGraph-F1, learnt scorers from optional packages; the one
  module that runs models (theirs, loaded only when eval.field_scorers asks for them)

Nothing here imports from `medvlm.data` or `medvlm.modeling`.
"""
