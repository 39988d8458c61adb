"""medvlm `clinical_efficacy` metric for Hugging Face `evaluate`: CheXpert-label agreement
between generated and reference reports. Both sides are labelled with
`medvlm.metrics.chexpert.label_reports` and scored with `medvlm.metrics.chexpert.clinical_efficacy`
(see its docstring for the conventions; loading: see `medvlm.metrics.evaluate_modules`)."""

from medvlm.metrics.chexpert import clinical_efficacy, label_reports
from medvlm.metrics.evaluate_modules import ReportMetric


class MedvlmClinicalEfficacy(ReportMetric):
    DESCRIPTION = "Clinical efficacy (CheXpert-label precision, recall, F1) of generated reports."
    CITATION = "Irvin et al., CheXpert, AAAI 2019 (observation set and labeling scheme)."
    OPTIONS = 'uncertain: how an uncertain label counts: "negative" (default), "positive" or "ignore".'
    RETURNS = ("ce_precision, ce_recall, ce_micro_f1, ce_macro_precision, ce_macro_recall, ce_macro_f1 and\n"
               "per observation ce_f1.<name>, ce_precision.<name>, ce_recall.<name>.")

    @staticmethod
    def score(references, predictions, uncertain="negative"):
        return clinical_efficacy(label_reports(references), label_reports(predictions), uncertain=uncertain)
