"""medvlm `cider` metric for Hugging Face `evaluate`: CIDEr-D of generated reports
(pycocoevalcap; document frequencies from the references given).

Load it offline from the installed package, never from the Hub:

    import evaluate
    from medvlm.metrics.nlg import evaluate_module_path
    metric = evaluate.load(evaluate_module_path("cider"))
    metric.compute(predictions=generated_reports, references=reference_reports)

The numbers are those of `medvlm.metrics.nlg.compute_cider` (this file only wraps it): reports are
lower-cased, stripped of punctuation and whitespace-tokenised before scoring.
"""

import datasets
import evaluate

from medvlm.metrics.nlg import compute_cider

_DESCRIPTION = "CIDEr-D of generated reports, pycocoevalcap (document frequencies from the references given)."
_CITATION = "pycocoevalcap: Chen et al., Microsoft COCO Captions: Data Collection and Evaluation Server, 2015."
_KWARGS_DESCRIPTION = """
Args:
    predictions: generated reports, one string per study.
    references: reference reports, one string per study.
Returns:
    cider: float, or None when every reference is empty
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MedvlmCider(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                         "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        return compute_cider(list(references), list(predictions))
