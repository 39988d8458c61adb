"""medvlm `clinical_efficacy` metric for Hugging Face `evaluate`: CheXpert-label agreement
between generated and reference reports, using medvlm's rule-based labeler.

    import evaluate
    from medvlm.metrics.nlg import evaluate_module_path
    metric = evaluate.load(evaluate_module_path("clinical_efficacy"))
    metric.compute(predictions=generated_reports, references=reference_reports, uncertain="negative")

Both sides are labelled with `medvlm.metrics.chexpert.label_reports` and scored with
`medvlm.metrics.chexpert.clinical_efficacy` (see its docstring for the conventions).
"""

import datasets
import evaluate

from medvlm.metrics.chexpert import clinical_efficacy, label_reports

_DESCRIPTION = "Clinical efficacy (CheXpert-label precision, recall, F1) of generated reports."
_CITATION = "Irvin et al., CheXpert, AAAI 2019 (observation set and labeling scheme)."
_KWARGS_DESCRIPTION = """
Args:
    predictions: generated reports, one string per study.
    references: reference reports, one string per study.
    uncertain: how an uncertain label counts: "negative" (default), "positive" or "ignore".
Returns:
    ce_precision, ce_recall, ce_micro_f1, ce_macro_precision, ce_macro_recall, ce_macro_f1 and
    per observation ce_f1.<name>, ce_precision.<name>, ce_recall.<name>.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MedvlmClinicalEfficacy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, uncertain="negative"):
        return clinical_efficacy(label_reports(references), label_reports(predictions), uncertain=uncertain)
