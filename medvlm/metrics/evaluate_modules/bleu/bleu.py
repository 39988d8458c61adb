"""medvlm `bleu` metric for Hugging Face `evaluate`: BLEU-1..4 of generated reports, from
`medvlm.metrics.nlg.compute_bleu` (loading: see `medvlm.metrics.evaluate_modules`)."""

from medvlm.metrics.evaluate_modules import ReportMetric
from medvlm.metrics.nlg import compute_bleu


class MedvlmBleu(ReportMetric):
    DESCRIPTION = "BLEU-1..4 of generated reports (pycocoevalcap corpus BLEU, 'closest' reference length)."
    RETURNS = "bleu_1, bleu_2, bleu_3, bleu_4: floats"
    score = staticmethod(compute_bleu)
