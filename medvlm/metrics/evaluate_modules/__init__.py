"""medvlm's metrics as Hugging Face `evaluate` modules: bleu, meteor, rouge_l, cider, nlg,
clinical_efficacy, one folder each (`<name>/<name>.py`). Load them offline from the installed
package, never from the Hub:

    import evaluate
    from medvlm.metrics.nlg import evaluate_module_path
    metric = evaluate.load(evaluate_module_path("bleu"))
    metric.compute(predictions=generated_reports, references=reference_reports)

Each module only wraps a function of `medvlm.metrics` (`nlg.compute_bleu`, ...,
`chexpert.clinical_efficacy`), so the numbers are that function's: for the NLG metrics, reports
are lower-cased, stripped of punctuation and whitespace-tokenised before scoring.

`evaluate.load` copies a module's script into its cache and imports it on its own, so the
scripts import this package by its absolute name, never relatively.
"""

import abc
import textwrap

import datasets
import evaluate

COCO_CITATION = "pycocoevalcap: Chen et al., Microsoft COCO Captions: Data Collection and Evaluation Server, 2015."

_ARGS = """
Args:
    predictions: generated reports, one string per study.
    references: reference reports, one string per study.
"""


class ReportMetric(evaluate.Metric, metaclass=abc.ABCMeta):
    """An `evaluate` metric over generated and reference reports (one string each per study).

    A module subclasses it with DESCRIPTION, RETURNS (the "Returns:" lines), optionally
    CITATION and OPTIONS (more "Args:" lines, for keyword arguments of `compute`), and `score`,
    the function that computes the numbers. It is abstract, so `evaluate.load` passes it over
    and finds the module's own subclass.
    """

    DESCRIPTION: str
    RETURNS: str
    CITATION: str = COCO_CITATION
    OPTIONS: str = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        options = textwrap.indent(cls.OPTIONS + "\n", "    ") if cls.OPTIONS else ""
        cls.INPUTS_DESCRIPTION = f"{_ARGS}{options}Returns:\n{textwrap.indent(cls.RETURNS, '    ')}\n"
        evaluate.utils.file_utils.add_start_docstrings(cls.DESCRIPTION, cls.INPUTS_DESCRIPTION)(cls)

    def _info(self):
        return evaluate.MetricInfo(
            description=self.DESCRIPTION,
            citation=self.CITATION,
            inputs_description=self.INPUTS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, **options):
        return self.score(list(references), list(predictions), **options)

    @staticmethod
    @abc.abstractmethod
    def score(references: list[str], predictions: list[str], **options) -> dict:
        """The metric's numbers: the medvlm function the module wraps."""
