"""medvlm `rouge_l` metric for Hugging Face `evaluate`: ROUGE-L (F, beta 1.2) of generated reports, pycocoevalcap.

Load it offline from the installed package, never from the Hub:

    import evaluate
    from medvlm.metrics.nlg import evaluate_module_path
    metric = evaluate.load(evaluate_module_path("rouge_l"))
    metric.compute(predictions=generated_reports, references=reference_reports)

The numbers are those of `medvlm.metrics.nlg.compute_rouge_l` (this file only wraps it): reports are
lower-cased, stripped of punctuation and whitespace-tokenised before scoring.
"""

import datasets
import evaluate

from medvlm.metrics.nlg import compute_rouge_l

_DESCRIPTION = "ROUGE-L (F, beta 1.2) of generated reports, pycocoevalcap."
_CITATION = "pycocoevalcap: Chen et al., Microsoft COCO Captions: Data Collection and Evaluation Server, 2015."
_KWARGS_DESCRIPTION = """
Args:
    predictions: generated reports, one string per study.
    references: reference reports, one string per study.
Returns:
    rouge_l: float
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MedvlmRougeL(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                         "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        return compute_rouge_l(list(references), list(predictions))
