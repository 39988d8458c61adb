"""Evaluation (and training glue) per task, each in its own module:

- `report_generation`: generate reports, NLG + clinical efficacy with intervals, beside baselines
- `embeddings`: image and text embeddings (retrieval, zero-shot, the nearest-neighbour baseline)
- `vqa`: answer questions with the VLM; closed/open accuracy, open token F1, majority baselines
- `retrieval`: image <-> report Recall@K from the contrastive embeddings
- `zero_shot`: positive/negative prompts per observation -> AUROC
- `classification`: CheXNet targets, batches and AUROC evaluation
- `localization`: explanation maps scored against the synthetic finding masks

Model code never imports these; they take a model and a processor and return flat metric dicts
or a `medvlm.results.TaskResult` (metrics and artefacts); `evaluate.evaluate_checkpoint` runs
those that apply and `medvlm.results.write_results` writes them, once.
"""
