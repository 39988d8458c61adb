"""medvlm `nlg` metric for Hugging Face `evaluate`: all NLG metrics of generated reports
(BLEU-1..4, METEOR, ROUGE-L, CIDEr-D).

Load it offline from the installed package, never from the Hub:

    import evaluate
    from medvlm.metrics.nlg import evaluate_module_path
    metric = evaluate.load(evaluate_module_path("nlg"))
    metric.compute(predictions=generated_reports, references=reference_reports)

The numbers are those of `medvlm.metrics.nlg.compute_nlg` (this file only wraps it): reports are
lower-cased, stripped of punctuation and whitespace-tokenised before scoring.
"""

import datasets
import evaluate

from medvlm.metrics.nlg import compute_nlg

_DESCRIPTION = "All NLG metrics of generated reports: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D."
_CITATION = "pycocoevalcap: Chen et al., Microsoft COCO Captions: Data Collection and Evaluation Server, 2015."
_KWARGS_DESCRIPTION = """
Args:
    predictions: generated reports, one string per study.
    references: reference reports, one string per study.
    include_meteor: run METEOR (Java); default True.
Returns:
    bleu_1..bleu_4, meteor, rouge_l, cider: floats or None (see medvlm.metrics.nlg.compute_nlg)
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MedvlmNlg(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                         "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, include_meteor=True):
        return compute_nlg(list(references), list(predictions), include_meteor=include_meteor)
