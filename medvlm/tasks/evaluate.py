"""`medvlm eval` per kind of checkpoint: which evaluations apply, and one results directory.

- CheXNet: AUROC per label and mean; on synthetic data also Grad-CAM (and HiResCAM) pointing
  game / IoU.
- VQA data (records with questions): closed accuracy (generated, and by candidate likelihood), open
  exact match, token recall and token F1, beside majority and blank-image baselines.
- Report model: report generation (`report_generation`), plus retrieval R@K, zero-shot AUROC and,
  on synthetic data, localisation of cross-attention over each finding's phrase (raw,
  `explain_*`; gradient-weighted, `explain_attngrad_*`; raw over the naming words alone,
  `explain_keyword_*`) and of Grad-CAM / HiResCAM of the zero-shot score (`explain_gradcam_*`,
  `explain_hirescam_*`).
"""

from __future__ import annotations

from pathlib import Path

from ..batch import BadItems
from ..config import RunConfig
from ..results import TaskResult, write_results
from .embeddings import readable_records

EXPLAIN_STUDIES = 100  # synthetic test studies with findings scored for localisation

TITLES = {"chexnet": "medvlm CheXNet classification", "vqa": "medvlm VQA", "report": "medvlm report generation"}
SHOWN = {
    "chexnet": ["auroc_mean", "explain_pointing_game", "explain_iou", "explain_hirescam_pointing_game"],
    "vqa": ["vqa_closed_acc", "vqa_closed_acc_likelihood", "vqa_open_acc", "vqa_open_recall", "vqa_open_f1",
            "vqa_overall_acc", "baselines.majority.vqa_overall_acc", "baselines.question_majority.vqa_closed_acc",
            "baselines.question_majority.vqa_open_acc", "baselines.question_majority.vqa_overall_acc",
            "baselines.blank_image.vqa_closed_acc_likelihood", "baselines.blank_image.vqa_open_acc"],
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
                        out_dir: Path | None, bad: BadItems | None = None) -> tuple[dict, list[str]]:
    """Run the evaluations that apply and write their outputs once (`results.write_results`).
    Records whose image cannot be read are left out, named in `bad` and counted in the metrics
    (`skipped`, `skipped.<reason>`). Returns (metrics, the headline keys to print)."""
    task = task_of(model, test_records, train_records)
    if cfg.eval.max_samples:
        test_records = test_records[: cfg.eval.max_samples]
    bad = bad or BadItems("eval")
    test_records = readable_records(processor, test_records, bad)
    train_records = readable_records(processor, train_records, bad) if task != "chexnet" else train_records
    run = {"chexnet": _classifier_tasks, "vqa": _vqa_tasks, "report": _report_tasks}[task]
    result = run(model, processor, cfg, test_records, train_records)
    result.metrics.update(bad.as_metrics())
    if out_dir is not None:
        write_results(result.metrics, out_dir, title=TITLES[task], artefacts=result.artefacts)
    return result.metrics, SHOWN[task]


def _classifier_tasks(model, processor, cfg: RunConfig, test_records, train_records) -> TaskResult:
    from .classification import evaluate_classifier
    from .localization import classifier_gradcam_localization

    result = evaluate_classifier(model, processor, test_records, cfg.eval.batch_size, cfg.eval.uncertain)
    studies = _explain_studies(cfg, processor)
    if studies:
        result.metrics.update(classifier_gradcam_localization(model, processor, studies))
        result.metrics.update(classifier_gradcam_localization(model, processor, studies, elementwise=True,
                                                              prefix="explain_hirescam"))
    return result


def _vqa_tasks(model, processor, cfg: RunConfig, test_records, train_records) -> TaskResult:
    from .vqa import evaluate_vqa

    return evaluate_vqa(model, processor, test_records, train_records, cfg.eval.batch_size)


def _report_tasks(model, processor, cfg: RunConfig, test_records, train_records) -> TaskResult:
    from .embeddings import image_embeddings
    from .localization import attention_localization, vlm_gradcam_localization
    from .report_generation import evaluate_report_generation
    from .retrieval import evaluate_retrieval
    from .zero_shot import evaluate_zero_shot

    e = cfg.eval
    test_embeds = image_embeddings(model, processor, test_records, e.batch_size)  # shared by three tasks
    result = evaluate_report_generation(model, processor, test_records, train_records, e, test_embeds)
    metrics = result.metrics
    metrics.update(evaluate_retrieval(model, processor, test_records, e.batch_size, image_embeds=test_embeds))
    metrics.update(evaluate_zero_shot(model, processor, test_records, e.batch_size, image_embeds=test_embeds,
                                      uncertain=e.uncertain))
    studies = _explain_studies(cfg, processor)
    if studies:
        metrics.update(attention_localization(model, processor, studies))
        metrics.update(attention_localization(model, processor, studies, rows="keyword", prefix="explain_keyword"))
        metrics.update(attention_localization(model, processor, studies, weighting="gradient",
                                              prefix="explain_attngrad"))
        metrics.update(vlm_gradcam_localization(model, processor, studies))
        metrics.update(vlm_gradcam_localization(model, processor, studies, elementwise=True,
                                                prefix="explain_hirescam"))
    return result
