"""`medvlm eval` per kind of checkpoint: which evaluations apply, and one results directory.

- CheXNet: AUROC per label and mean; on synthetic data also Grad-CAM (and HiResCAM) pointing
  game / IoU.
- VQA data (records with questions): closed/open accuracy and open F1 beside majority baselines.
- Report model: report generation (medvlm.evaluation), plus retrieval R@K, zero-shot AUROC and,
  on synthetic data, localisation of cross-attention over each finding's phrase (raw,
  `explain_*`; gradient-weighted, `explain_attngrad_*`; raw over the naming words alone,
  `explain_keyword_*`) and of Grad-CAM / HiResCAM of the zero-shot score (`explain_gradcam_*`,
  `explain_hirescam_*`).
"""

from __future__ import annotations

from pathlib import Path

from ..config import RunConfig

EXPLAIN_STUDIES = 100  # synthetic test studies with findings scored for localisation

SHOWN = {
    "chexnet": ["auroc_mean", "explain_pointing_game", "explain_iou", "explain_hirescam_pointing_game"],
    "vqa": ["vqa_closed_acc", "vqa_open_acc", "vqa_overall_acc", "vqa_open_f1",
            "baselines.majority.vqa_overall_acc", "baselines.question_majority.vqa_overall_acc"],
    "report": ["bleu_1", "bleu_4", "meteor", "rouge_l", "cider", "ce_micro_f1", "ce_macro_f1", "i2t_r5", "t2i_r5",
               "zs_auroc_mean", "explain_pointing_game", "explain_attngrad_pointing_game",
               "explain_gradcam_pointing_game", "explain_hirescam_pointing_game"],
}


def task_of(model, test_records, train_records=()) -> str:
    if getattr(model.config, "model_type", None) == "chexnet":
        return "chexnet"
    sample = list(test_records[:1]) + list(train_records[:1])
    return "vqa" if any(r.get("question") for r in sample) else "report"


def _explain_studies(cfg: RunConfig, processor) -> list[dict]:
    if cfg.data.dataset != "synthetic" or cfg.data.cache_dir:
        return []
    from .localization import synthetic_test_studies

    return synthetic_test_studies(cfg.data.options, cfg.eval.split, processor.image_size, EXPLAIN_STUDIES)


def evaluate_checkpoint(model, processor, cfg: RunConfig, test_records, train_records,
                        out_dir: Path | None) -> tuple[dict, list[str]]:
    """Run the evaluations that apply; write metrics.json / results.md to `out_dir`.
    Returns (metrics, the headline keys to print)."""
    e = cfg.eval
    task = task_of(model, test_records, train_records)
    if e.max_samples:
        test_records = test_records[: e.max_samples]
    if task == "chexnet":
        from .classification import evaluate_classifier
        from .localization import classifier_gradcam_localization

        metrics = evaluate_classifier(model, processor, test_records, e.batch_size, e.uncertain, out_dir)
        studies = _explain_studies(cfg, processor)
        if studies:
            metrics.update(classifier_gradcam_localization(model, processor, studies))
            metrics.update(classifier_gradcam_localization(model, processor, studies, elementwise=True,
                                                           prefix="explain_hirescam"))
        title = "medvlm CheXNet classification"
    elif task == "vqa":
        from .vqa import evaluate_vqa

        metrics = evaluate_vqa(model, processor, test_records, train_records, e.batch_size, None, out_dir)
        title = "medvlm VQA"
    else:
        from ..evaluation import evaluate_model
        from .localization import attention_localization, vlm_gradcam_localization
        from .retrieval import evaluate_retrieval
        from .zero_shot import evaluate_zero_shot

        metrics = evaluate_model(model, processor, test_records, train_records, e, out_dir)
        metrics.update(evaluate_retrieval(model, processor, test_records, e.batch_size))
        metrics.update(evaluate_zero_shot(model, processor, test_records, e.batch_size, uncertain=e.uncertain))
        studies = _explain_studies(cfg, processor)
        if studies:
            metrics.update(attention_localization(model, processor, studies))
            metrics.update(attention_localization(model, processor, studies, rows="keyword",
                                                  prefix="explain_keyword"))
            metrics.update(attention_localization(model, processor, studies, weighting="gradient",
                                                  prefix="explain_attngrad"))
            metrics.update(vlm_gradcam_localization(model, processor, studies))
            metrics.update(vlm_gradcam_localization(model, processor, studies, elementwise=True,
                                                    prefix="explain_hirescam"))
        title = "medvlm report generation"
    if out_dir is not None:
        from ..results import write_results

        write_results(metrics, out_dir, title=title)  # everything in one metrics.json / results.md
    return metrics, SHOWN[task]
