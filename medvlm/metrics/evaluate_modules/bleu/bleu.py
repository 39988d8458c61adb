"""medvlm `bleu` metric for Hugging Face `evaluate`: BLEU-1..4 of generated reports
(pycocoevalcap corpus BLEU, 'closest' reference length).

Load it offline from the installed package, never from the Hub:

    import evaluate
    from medvlm.metrics.nlg import evaluate_module_path
    metric = evaluate.load(evaluate_module_path("bleu"))
    metric.compute(predictions=generated_reports, references=reference_reports)

The numbers are those of `medvlm.metrics.nlg.compute_bleu` (this file only wraps it): reports are
lower-cased, stripped of punctuation and whitespace-tokenised before scoring.
"""

import datasets
import evaluate

from medvlm.metrics.nlg import compute_bleu

_DESCRIPTION = "BLEU-1..4 of generated reports (pycocoevalcap corpus BLEU, 'closest' reference length)."
_CITATION = "pycocoevalcap: Chen et al., Microsoft COCO Captions: Data Collection and Evaluation Server, 2015."
_KWARGS_DESCRIPTION = """
Args:
    predictions: generated reports, one string per study.
    references: reference reports, one string per study.
Returns:
    bleu_1, bleu_2, bleu_3, bleu_4: floats
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MedvlmBleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                         "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        return compute_bleu(list(references), list(predictions))
