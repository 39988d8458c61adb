"""Interval changes from report text, the change accuracy score and its bootstrap intervals."""

import math

import numpy as np
import pytest

from medvlm.metrics.bootstrap import bootstrap_intervals
from medvlm.metrics.chexpert import CHANGE_KINDS, change_accuracy, change_counts, change_labels, label_report

EFF, CM, PTX, OPACITY = "Pleural Effusion", "Cardiomegaly", "Pneumothorax", "Lung Opacity"

# the synthetic reports' phrasings, exactly
SYNTHETIC = [
    ("New left pleural effusion.", {EFF: "new"}),
    ("There is a new right lower lobe opacity.", {OPACITY: "new"}),
    ("Interval increase in the left pleural effusion.", {EFF: "worse"}),
    ("Worsening pulmonary edema.", {"Edema": "worse"}),
    ("Interval decrease in the right pneumothorax.", {PTX: "better"}),
    ("Improving left basilar atelectasis.", {"Atelectasis": "better"}),
    ("Unchanged cardiomegaly.", {CM: "unchanged"}),
    ("Stable mild cardiomegaly.", {CM: "unchanged"}),
    ("Interval resolution of the previously seen right pneumothorax.", {PTX: "resolved"}),
    ("The previously seen left pleural effusion has resolved.", {EFF: "resolved"}),
]

REAL_PHRASINGS = [
    ("The left pleural effusion is unchanged.", {EFF: "unchanged"}),
    ("No change in the left effusion.", {EFF: "unchanged"}),
    ("No significant interval change in the appearance of the bibasilar opacities.", {OPACITY: "unchanged"}),
    ("Left effusion is not significantly changed.", {EFF: "unchanged"}),
    ("Persistent right lower lobe consolidation.", {"Consolidation": "unchanged"}),
    ("Again seen is a small left effusion.", {EFF: "unchanged"}),
    ("The left effusion is again seen.", {EFF: "unchanged"}),
    ("There are biapical opacities, stable from the prior study.", {OPACITY: "unchanged"}),
    ("There is mild cardiomegaly, similar to prior exams.", {CM: "unchanged"}),
    ("Similar appearance of the left effusion.", {EFF: "unchanged"}),
    ("Left effusion and cardiomegaly, unchanged from prior.", {EFF: "unchanged", CM: "unchanged"}),
    ("Unchanged cardiomegaly, effusion and atelectasis.", {CM: "unchanged", EFF: "unchanged",
                                                           "Atelectasis": "unchanged"}),
    ("The effusion has increased in size.", {EFF: "worse"}),
    ("Small left pleural effusion, increased compared to prior chest radiograph.", {EFF: "worse"}),
    ("Slightly larger left effusion.", {EFF: "worse"}),
    ("Enlarging right upper lobe mass.", {"Lung Lesion": "worse"}),
    ("Progression of the left lower lobe consolidation.", {"Consolidation": "worse"}),
    ("Interval increased bilateral interstitial opacities.", {OPACITY: "worse"}),
    ("Left effusion is smaller.", {EFF: "better"}),
    ("Decreased pulmonary edema.", {"Edema": "better"}),
    ("Bibasilar air space opacities have significantly improved.", {OPACITY: "better"}),
    ("Interval improvement in left base consolidation.", {"Consolidation": "better"}),
    ("Partial resolution of the right upper lobe pneumonia.", {"Pneumonia": "better"}),
    ("Near complete resolution of right sided pleural effusion.", {EFF: "better"}),
    ("Left effusion, new since the prior.", {EFF: "new"}),
    ("Newly developed right effusion.", {EFF: "new"}),
    ("In the interval, consolidation has developed in the left upper lobe.", {"Consolidation": "new"}),
    ("Interval development of bibasilar opacities.", {OPACITY: "new"}),
    ("Interval placement of a right PICC line.", {"Support Devices": "new"}),
    ("The right pneumothorax is no longer seen.", {PTX: "resolved"}),
    ("There is no longer a left effusion.", {EFF: "resolved"}),
    ("Left lower lobe opacity has cleared.", {OPACITY: "resolved"}),
    ("The previously seen nodule is not seen.", {"Lung Lesion": "resolved"}),
    ("Interval removal of the endotracheal tube.", {"Support Devices": "resolved"}),
    ("Cardiac silhouette remains moderately enlarged.", {CM: "unchanged"}),
    ("The heart is again enlarged.", {CM: "unchanged"}),
    ("Consolidation, atelectasis, and blunting in the left lower lobe have cleared in the interval.",
     {"Consolidation": "resolved", "Atelectasis": "resolved"}),
    ("Left midlung opacity noted, not visualized on prior.", {OPACITY: "new"}),
    ("Findings suggest no progression of the retrohilar nodule.", {"Lung Lesion": "unchanged"}),
]

TRICKY = [
    ("No pleural effusion.", {}),  # negated, no change cue
    ("No new effusion.", {}),  # a negated "new"
    ("No evidence of new consolidation or pneumothorax.", {}),
    ("Stable appearance of the chest without pneumothorax.", {}),
    ("Increasing opacity, possibly pneumonia.", {OPACITY: "worse"}),  # the hedge stops the cue
    ("Stable cardiomegaly and increasing left effusion.", {CM: "unchanged", EFF: "worse"}),
    ("Stable mild cardiomegaly and increased lung vascularity.", {CM: "unchanged"}),
    ("Increased opacity in the right upper lobe.", {}),  # a density, not a change
    ("Bilateral pleural effusions, right larger than left.", {}),
    ("Interstitial thickening bilaterally, more prominent in the bases.", {}),
    ("Nodule is better seen on the lateral view.", {}),
    ("Atelectasis, less likely pneumonia.", {}),
    ("Stable normal heart size.", {}),  # a normal heart: no cardiomegaly to change
    ("The heart size is increased.", {}),  # a size, not a change
    ("Mild cardiomegaly, stable mediastinal contours.", {}),  # "stable" describes the contours
    ("Mild interstitial prominence, worse in the right lung base.", {}),
    ("The left chest pacemaker is unchanged, with fractured lead.", {"Support Devices": "unchanged"}),
    ("Unchanged left effusion. New right effusion.", {EFF: "new"}),  # new > unchanged
    ("No acute cardiopulmonary process.", {}),
    ("", {}),
]


@pytest.mark.parametrize("text, expected", SYNTHETIC + REAL_PHRASINGS + TRICKY)
def test_change_labels(text, expected):
    assert change_labels(text) == expected


def test_change_labels_leave_the_14_labels_alone():
    before = [label_report(text) for text, _ in SYNTHETIC + TRICKY]
    for text, _ in SYNTHETIC + TRICKY:
        change_labels(text)
    after = [label_report(text) for text, _ in SYNTHETIC + TRICKY]
    assert np.array_equal(np.array(before), np.array(after), equal_nan=True)
    assert label_report("No change in the left effusion.")[10] == 1.0  # still a positive effusion


REFS = ["Unchanged cardiomegaly. New left pleural effusion.", "Interval increase in the left pleural effusion.",
        "The previously seen right pneumothorax has resolved.", "No acute cardiopulmonary process."]


def test_change_accuracy_counts_reference_pairs():
    hyps = ["Stable cardiomegaly. Small left pleural effusion.", "Worsening left effusion.",
            "Unchanged right pneumothorax.", "New right lower lobe opacity."]
    scores = change_accuracy(REFS, hyps)
    assert scores["change_count"] == 4
    assert scores["change_accuracy"] == pytest.approx(2 / 4)
    assert scores["change_accuracy.unchanged"] == 1.0 and scores["change_accuracy.worse"] == 1.0
    assert scores["change_accuracy.new"] == 0.0 and scores["change_accuracy.resolved"] == 0.0
    assert math.isnan(scores["change_accuracy.better"])  # no reference states an improvement
    assert change_accuracy(REFS, REFS)["change_accuracy"] == 1.0
    assert change_accuracy(REFS, [""] * 4)["change_accuracy"] == 0.0
    assert math.isnan(change_accuracy(["No effusion."], ["No effusion."])["change_accuracy"])


def test_change_counts_shape_and_mismatch():
    counts = change_counts([change_labels(t) for t in REFS], [{}] * 4)
    assert counts.shape == (4, len(CHANGE_KINDS), 2) and counts[..., 0].sum() == 4 and counts[..., 1].sum() == 0
    with pytest.raises(ValueError, match="4 references but 3 hypotheses"):
        change_counts([{}] * 4, [{}] * 3)


def test_change_accuracy_intervals():
    refs = REFS * 10
    hyps = ["Stable cardiomegaly.", "Worsening left effusion.", "", "Normal chest."] * 10
    ci = bootstrap_intervals(refs, hyps, n_resamples=50, seed=3)
    point = change_accuracy(refs, hyps)
    low, high = ci["change_accuracy"]
    assert low <= point["change_accuracy"] <= high and 0.0 <= low <= high <= 1.0
    assert ci["change_accuracy.unchanged"] == [1.0, 1.0] and ci["change_accuracy.new"] == [0.0, 0.0]
    assert "change_accuracy.better" not in ci  # never in the references: no interval
    assert "change_count" not in ci
    perfect = bootstrap_intervals(refs, refs, n_resamples=20)
    assert perfect["change_accuracy"] == [1.0, 1.0]
