"""medvlm `meteor` metric for Hugging Face `evaluate`: METEOR 1.5 of generated reports
(pycocoevalcap's jar; needs Java, else None).

Load it offline from the installed package, never from the Hub:

    import evaluate
    from medvlm.metrics.nlg import evaluate_module_path
    metric = evaluate.load(evaluate_module_path("meteor"))
    metric.compute(predictions=generated_reports, references=reference_reports)

The numbers are those of `medvlm.metrics.nlg.compute_meteor` (this file only wraps it): reports are
lower-cased, stripped of punctuation and whitespace-tokenised before scoring.
"""

import datasets
import evaluate

from medvlm.metrics.nlg import compute_meteor

_DESCRIPTION = "METEOR 1.5 of generated reports (pycocoevalcap's jar; needs Java)."
_CITATION = "pycocoevalcap: Chen et al., Microsoft COCO Captions: Data Collection and Evaluation Server, 2015."
_KWARGS_DESCRIPTION = """
Args:
    predictions: generated reports, one string per study.
    references: reference reports, one string per study.
Returns:
    meteor: float, or None when Java is missing or METEOR fails
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MedvlmMeteor(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                         "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        return compute_meteor(list(references), list(predictions))
