"""medvlm `nlg` metric for Hugging Face `evaluate`: BLEU-1..4, METEOR, ROUGE-L and CIDEr-D of
generated reports, from `medvlm.metrics.nlg.compute_nlg` (loading: see
`medvlm.metrics.evaluate_modules`)."""

from medvlm.metrics.evaluate_modules import ReportMetric
from medvlm.metrics.nlg import compute_nlg


class MedvlmNlg(ReportMetric):
    DESCRIPTION = "All NLG metrics of generated reports: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D."
    OPTIONS = "include_meteor: run METEOR (Java); default True."
    RETURNS = "bleu_1..bleu_4, meteor, rouge_l, cider: floats or None (see medvlm.metrics.nlg.compute_nlg)"
    score = staticmethod(compute_nlg)
