"""The labeler on IU-style phrasings (issue 21), and the benchmark's fixed fit / validation split."""

import csv
import json
import math
import sys
from pathlib import Path

import pytest

from medvlm.metrics.chexpert import label_report
from medvlm.observations import CHEXPERT_OBSERVATIONS as OBS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import labeler_vs_iu_problems as bench  # noqa: E402

DEV_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "iu_xray_reports_dev" / "indiana_reports.csv"
SD, PE, LO = "Support Devices", "Pleural Effusion", "Lung Opacity"


def labels_of(text: str) -> dict:
    """Observation -> label for the observations the labeler filled in, No Finding left out."""
    found = {name: value for name, value in zip(OBS, label_report(text)) if not math.isnan(value)}
    found.pop("No Finding", None)
    return found


@pytest.mark.parametrize("text, expected", [
    # devices named by a part, a de-identified word before "tip", external leads
    ("Right chest XXXX tip in the low SVC.", {SD: 1.0}),
    ("Frontal and lateral views of the chest with overlying external cardiac monitor leads.", {SD: 1.0}),
    ("Left chest wall cardiac XXXX generator with leads in the right atrium and ventricle.", {SD: 1.0}),
    ("Tracheostomy tip approximately 5 cm above the carina.", {SD: 1.0}),
    ("Prosthetic right humeral head.", {SD: 1.0}),
    ("Intact sternotomy wires and CABG markers.", {SD: 1.0}),
    ("Fractured sternal wire.", {SD: 1.0}),  # a broken device is not a fracture
    ("Vague density in the right mid lung, related to the scapular tip.", {LO: 1.0}),
    # densities are opacities, also nodular or calcified ones
    ("There is a 7 mm nodular density at the left lung base.", {LO: 1.0}),
    ("Calcific density in the right lung apex, compatible with calcified granuloma.", {LO: 1.0}),
    ("Expansile lesion of the right posterior 9th rib.", {}),
    # high-confidence hedges state the finding
    ("Probable small left pleural effusion.", {PE: 1.0}),
    ("Mild bibasilar airspace disease, probably atelectasis.", {LO: 1.0, "Atelectasis": 1.0}),
    ("No pneumothorax, probable small left effusion.", {"Pneumothorax": 0.0, PE: 1.0}),
    ("Right lower lobe infiltrate, suggestive of pneumonia.", {LO: 1.0, "Pneumonia": 1.0}),
    ("There are no airspace opacities to suggest pneumonia.", {LO: 0.0, "Pneumonia": 0.0}),
    ("Findings may be suggestive of pneumonia.", {"Pneumonia": -1.0}),
    ("Atelectasis, less likely pneumonia.", {"Atelectasis": 1.0, "Pneumonia": -1.0}),
    ("Pneumonia is not likely.", {"Pneumonia": -1.0}),
    ("Age-indeterminate fracture of the left 7th rib.", {"Fracture": 1.0}),
    # low-confidence hedges stay uncertain
    ("Question small right pleural effusion.", {PE: -1.0}),
    ("Small bilateral pleural effusions suspected.", {PE: -1.0}),
    ("A pneumonia superimposed on emphysema would be a consideration.", {"Pneumonia": -1.0}),
    ("Right upper lobe airspace consolidation, correlate clinically for pneumonia.",
     {"Consolidation": 1.0, "Pneumonia": -1.0}),
    ("Abnormal interstitial pattern, differential diagnosis including chronic interstitial lung disease, "
     "infectious or inflammatory process, atypical pulmonary edema.",
     {LO: 1.0, "Pneumonia": -1.0, "Edema": -1.0}),
    # negations after the mention, and long negated lists
    ("Pulmonary vascular engorgement appears within limits of normal.", {"Edema": 0.0}),
    ("The heart and mediastinum are within normal limits.", {"Cardiomegaly": 0.0, "Enlarged Cardiomediastinum": 0.0}),
    ("Please note that fractures may not be demonstrated.", {"Fracture": 0.0}),
    ("Without evidence of focal consolidation, suspicious pulmonary opacity, large pleural effusion, or "
     "pneumothorax.", {"Consolidation": 0.0, LO: 0.0, PE: 0.0, "Pneumothorax": 0.0}),
    ("There has been clearing of the left base airspace opacities.", {LO: 0.0}),
    ("Findings are compatible with a history of pneumonia.", {"Pneumonia": 0.0}),
    # heart and vessels
    ("Heart size moderately enlarged, stable mediastinal contours.", {"Cardiomegaly": 1.0}),
    ("The cardiomediastinal silhouette is enlarged.", {"Enlarged Cardiomediastinum": 1.0, "Cardiomegaly": 1.0}),
    ("Prominence of the central pulmonary vasculature.", {"Edema": 1.0}),
    ("Cardiomegaly and pulmonary venous hypertension.", {"Cardiomegaly": 1.0, "Edema": 1.0}),
])
def test_iu_phrasings(text, expected):
    assert labels_of(text) == expected


def test_monitor_leads_do_not_block_no_finding():
    labels = dict(zip(OBS, label_report("Overlying EKG leads. Heart size normal. Lungs clear.")))
    assert labels["No Finding"] == 1.0 and labels[SD] == 1.0


# ------------------------------------------------------------------ the benchmark's split

def test_split_rule_is_fixed():
    # sha256(uid) % 5 == 0 -> validation: pinned, so that the split cannot drift
    assert [bench.split_of(str(uid)) for uid in range(1, 15)] == \
        ["validation"] + ["fit"] * 12 + ["validation"]
    assert all(bench.split_of("1") == "validation" for _ in range(3))


def test_dev_split_is_deterministic_and_disjoint():
    if not DEV_CSV.exists():
        pytest.skip("../shared/data is absent")
    first, second = bench.read_parts(str(DEV_CSV), split=True), bench.read_parts(str(DEV_CSV), split=True)
    uids = {part: [r["uid"] for r in rows] for part, rows in first.items()}
    assert uids == {part: [r["uid"] for r in rows] for part, rows in second.items()}
    fit, validation = set(uids["fit"]), set(uids["validation"])
    assert not fit & validation
    with open(DEV_CSV, encoding="utf-8", newline="") as f:
        assert fit | validation == {r["uid"] for r in csv.DictReader(f)}
    assert (len(fit), len(validation)) == (2580, 681)  # ~20% validation, as the docstring says


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["uid", "MeSH", "Problems", "findings", "impression"])
        writer.writeheader()
        writer.writerows(rows)


def test_benchmark_prints_both_parts_and_modes_and_misses_of_fit_only(tmp_path, capsys):
    rows = [  # uid 1 is validation, 2 and 3 fit; each row has one miss
        {"uid": "1", "MeSH": "normal", "Problems": "normal", "findings": "Small left effusion.", "impression": ""},
        {"uid": "2", "MeSH": "normal", "Problems": "normal", "findings": "Possible pneumonia.", "impression": ""},
        {"uid": "3", "MeSH": "Cardiomegaly/mild", "Problems": "Cardiomegaly", "findings": "Heart size normal.",
         "impression": ""},
    ]
    _write_csv(tmp_path / "reports.csv", rows)
    assert bench.main(["--csv", str(tmp_path / "reports.csv"), "--misses"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert set(result["parts"]) == {"fit", "validation"} and result["parts"]["fit"]["reports"] == 2
    assert set(result["summary"]["fit"]) == {"micro_f1_uncertain_negative", "micro_f1_uncertain_positive"}
    assert "Cardiomegaly" in result["parts"]["validation"]["uncertain_negative"]["per_observation"]
    assert "uid 2" in err and "uid 3" in err and "uid 1 " not in err
    assert bench.main(["--csv", str(tmp_path / "reports.csv"), "--no-split"]) == 0
    assert set(json.loads(capsys.readouterr().out)["parts"]) == {"all"}
