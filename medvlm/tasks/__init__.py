"""Evaluation (and training glue) per task, each in its own module:

- `vqa`: answer questions with the VLM; closed/open accuracy, open token F1, majority baselines
- `retrieval`: image <-> report Recall@K from the contrastive embeddings
- `zero_shot`: positive/negative prompts per observation -> AUROC
- `classification`: CheXNet targets, batches and AUROC evaluation
- `localization`: explanation maps scored against the synthetic finding masks

Model code never imports these; they take a model and a processor and return flat metric dicts
(the `medvlm.results.write_results` format).
"""
