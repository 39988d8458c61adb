"""medvlm `rouge_l` metric for Hugging Face `evaluate`: ROUGE-L of generated reports, from
`medvlm.metrics.nlg.compute_rouge_l` (loading: see `medvlm.metrics.evaluate_modules`)."""

from medvlm.metrics.evaluate_modules import ReportMetric
from medvlm.metrics.nlg import compute_rouge_l


class MedvlmRougeL(ReportMetric):
    DESCRIPTION = "ROUGE-L (F, beta 1.2) of generated reports, pycocoevalcap."
    RETURNS = "rouge_l: float"
    score = staticmethod(compute_rouge_l)
