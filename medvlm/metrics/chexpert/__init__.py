"""CheXpert observations from report text, and clinical efficacy (CE) scores.

- `labeler`: the rule-based labeler (phrase lists, negation and uncertainty cues, aggregation);
  `label_report`, `label_reports`, `extract_mentions`
- `efficacy`: CE precision / recall / F1 between the labels of generated and reference reports
- `changes`: interval changes per observation ("new", "worse", "better", "unchanged", "resolved")
  from the labeler's clauses and mentions, `change_labels`, and their score, `change_accuracy`
- `command`: the `medvlm label` command (labels and the output CSV; the input is read by
  `medvlm.data.tables.read_reports`, handed in by the command line)

Everything other code imports is re-exported here: ``from medvlm.metrics.chexpert import X``.
"""

from .changes import (
    CHANGE_CUES, CHANGE_KINDS, change_accuracy, change_accuracy_from_counts, change_counts, change_labels,
)
from .command import label_main, write_labels_csv
from .efficacy import clinical_efficacy, efficacy_from_counts, label_counts, label_generated_reports
from .labeler import (
    CARDIOMEGALY, CUES, ECM, EXCLUSIONS, MENTIONS, NEGATIVE, NO_FINDING, OBS_INDEX, POSITIVE, SIZE_SUBJECTS,
    SUPPORT_DEVICES, UNCERTAIN, Span, extract_mentions, label_report, label_reports, split_clauses,
)

__all__ = [
    "CHANGE_CUES", "CHANGE_KINDS", "change_accuracy", "change_accuracy_from_counts", "change_counts", "change_labels",
    "CARDIOMEGALY", "CUES", "ECM", "EXCLUSIONS", "MENTIONS", "NEGATIVE", "NO_FINDING", "OBS_INDEX", "POSITIVE",
    "SIZE_SUBJECTS", "SUPPORT_DEVICES", "UNCERTAIN", "Span", "clinical_efficacy", "efficacy_from_counts",
    "extract_mentions", "label_counts", "label_generated_reports", "label_main", "label_report", "label_reports",
    "split_clauses", "write_labels_csv",
]
