"""medvlm `meteor` metric for Hugging Face `evaluate`: METEOR 1.5 of generated reports, from
`medvlm.metrics.nlg.compute_meteor` (loading: see `medvlm.metrics.evaluate_modules`)."""

from medvlm.metrics.evaluate_modules import ReportMetric
from medvlm.metrics.nlg import compute_meteor


class MedvlmMeteor(ReportMetric):
    DESCRIPTION = "METEOR 1.5 of generated reports (pycocoevalcap's jar; needs Java)."
    RETURNS = "meteor: float, or None when Java is missing or METEOR fails"
    score = staticmethod(compute_meteor)
