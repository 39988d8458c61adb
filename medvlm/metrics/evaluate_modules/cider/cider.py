"""medvlm `cider` metric for Hugging Face `evaluate`: CIDEr-D of generated reports, from
`medvlm.metrics.nlg.compute_cider` (loading: see `medvlm.metrics.evaluate_modules`)."""

from medvlm.metrics.evaluate_modules import ReportMetric
from medvlm.metrics.nlg import compute_cider


class MedvlmCider(ReportMetric):
    DESCRIPTION = "CIDEr-D of generated reports, pycocoevalcap (document frequencies from the references given)."
    RETURNS = "cider: float, or None when every reference is empty"
    score = staticmethod(compute_cider)
