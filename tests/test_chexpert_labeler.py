"""The rule-based CheXpert labeler on hand-written sentences, its file I/O, and clinical efficacy."""

import csv
import json
import math

import numpy as np
import pytest

from medvlm.cli import label_main  # `medvlm label`: data.tables reads the file, metrics label it
from medvlm.data.tables import read_reports
from medvlm.errors import UserError
from medvlm.metrics.chexpert import clinical_efficacy, label_report, label_reports, write_labels_csv
from medvlm.observations import CHEXPERT_OBSERVATIONS as OBS

NAN = float("nan")


def labels_of(text: str) -> dict:
    """Observation -> label for the observations the labeler filled in."""
    return {name: value for name, value in zip(OBS, label_report(text)) if not math.isnan(value)}


@pytest.mark.parametrize("text, expected", [
    # plain mentions
    ("There is a left pleural effusion.", {"Pleural Effusion": 1.0}),
    ("Moderate cardiomegaly.", {"Cardiomegaly": 1.0}),
    ("Right lower lobe consolidation.", {"Consolidation": 1.0}),
    ("Right upper lobe nodule.", {"Lung Lesion": 1.0}),
    ("Patchy bibasilar opacities.", {"Lung Opacity": 1.0}),
    ("Mild pulmonary vascular congestion.", {"Edema": 1.0}),
    ("Small right apical pneumothorax.", {"Pneumothorax": 1.0}),
    ("Healed left rib fractures.", {"Fracture": 1.0}),
    ("Biapical pleural thickening.", {"Pleural Other": 1.0}),
    ("The mediastinum is widened.", {"Enlarged Cardiomediastinum": 1.0}),
    ("The cardiac silhouette is enlarged.", {"Cardiomegaly": 1.0}),
    # negation
    ("No pleural effusion.", {"Pleural Effusion": 0.0}),
    ("Without evidence of pneumothorax.", {"Pneumothorax": 0.0}),
    ("Negative for pneumonia.", {"Pneumonia": 0.0}),
    ("The lungs are free of focal consolidation.", {"Consolidation": 0.0}),
    ("The lungs are clear of focal airspace disease.", {"Lung Opacity": 0.0}),
    ("The previously seen pneumothorax has resolved.", {"Pneumothorax": 0.0}),
    ("Pneumothorax is not seen.", {"Pneumothorax": 0.0}),
    ("The heart is not enlarged.", {"Cardiomegaly": 0.0}),
    ("No findings to suggest pneumonia.", {"Pneumonia": 0.0}),
    # uncertainty
    ("Left basilar opacity may represent atelectasis.", {"Lung Opacity": 1.0, "Atelectasis": -1.0}),
    ("Cannot exclude pneumonia.", {"Pneumonia": -1.0}),
    ("Pneumonia cannot be excluded.", {"Pneumonia": -1.0}),
    ("Possible small left effusion.", {"Pleural Effusion": -1.0}),
    ("Atelectasis versus pneumonia at the left base.", {"Atelectasis": -1.0, "Pneumonia": -1.0}),
    ("Findings are concerning for pneumonia.", {"Pneumonia": -1.0}),
    ("Pneumonia?", {"Pneumonia": -1.0}),
    # double negation
    ("Pneumonia is not excluded.", {"Pneumonia": -1.0}),
    ("Infection cannot be ruled out.", {"Pneumonia": -1.0}),
    ("No change in the left effusion.", {"Pleural Effusion": 1.0}),
    ("No significant interval change in bibasilar atelectasis.", {"Atelectasis": 1.0}),
    # negated lists
    ("No effusion, consolidation or pneumothorax.",
     {"Pleural Effusion": 0.0, "Consolidation": 0.0, "Pneumothorax": 0.0}),
    ("No focal airspace consolidation, pleural effusion, or pneumothorax is seen.",
     {"Consolidation": 0.0, "Pleural Effusion": 0.0, "Pneumothorax": 0.0}),
    # limited scope
    ("No effusion but there is a new right lower lobe opacity.", {"Pleural Effusion": 0.0, "Lung Opacity": 1.0}),
    ("No pneumothorax, possible small left effusion.", {"Pneumothorax": 0.0, "Pleural Effusion": -1.0}),
    ("No pneumothorax and stable small left effusion.", {"Pneumothorax": 0.0, "Pleural Effusion": 1.0}),
    ("Cardiomegaly without pulmonary edema.", {"Cardiomegaly": 1.0, "Edema": 0.0}),
    ("No pleural effusion. Right lower lobe pneumonia.", {"Pleural Effusion": 0.0, "Pneumonia": 1.0}),
    # laterality words do not change labels
    ("Left pleural effusion.", {"Pleural Effusion": 1.0}),
    ("Bilateral effusions.", {"Pleural Effusion": 1.0}),
    ("No right-sided pneumothorax.", {"Pneumothorax": 0.0}),
    # look-alikes are not findings
    ("Small pericardial effusion.", {}),
    ("Lytic lesion in the humerus.", {}),
    # heart and mediastinum size
    ("The cardiomediastinal silhouette is within normal limits.",
     {"Enlarged Cardiomediastinum": 0.0, "Cardiomegaly": 0.0}),
    ("Heart size and pulmonary vascularity appear within normal limits.", {"Cardiomegaly": 0.0}),
    ("Normal heart size. Mildly enlarged cardiac silhouette.", {"Cardiomegaly": 1.0}),
    ("Heart size is borderline.", {"Cardiomegaly": -1.0}),
])
def test_sentences(text, expected):
    found = labels_of(text)
    found.pop("No Finding", None)
    assert found == expected


def test_positive_beats_uncertain_beats_negative_across_mentions():
    assert labels_of("Old healed rib fractures. No acute fracture.")["Fracture"] == 1.0
    assert labels_of("No effusion on the right. Possible small left effusion.")["Pleural Effusion"] == -1.0


@pytest.mark.parametrize("text", [
    "The heart size and pulmonary vascularity appear within normal limits. The lungs are free of focal "
    "airspace disease. No pleural effusion or pneumothorax is seen.",
    "Heart size normal. Lungs clear. No acute cardiopulmonary process.",
    "No acute cardiopulmonary abnormality.",
    "",
])
def test_normal_reports_are_no_finding(text):
    assert label_report(text)[0] == 1.0


def test_support_devices_do_not_block_no_finding():
    labels = labels_of("Heart size normal. Lungs clear. Endotracheal tube terminates 4 cm above the carina.")
    assert labels["No Finding"] == 1.0 and labels["Support Devices"] == 1.0


@pytest.mark.parametrize("text", ["Small left effusion.", "Possible pneumonia.", "Mild cardiomegaly."])
def test_a_positive_or_uncertain_finding_blanks_no_finding(text):
    assert math.isnan(label_report(text)[0])


def test_label_reports_shape_and_order():
    labels = label_reports(["Cardiomegaly.", "No pneumothorax."])
    assert labels.shape == (2, 14) and labels.dtype == float
    assert labels[0, OBS.index("Cardiomegaly")] == 1.0
    assert labels[1, OBS.index("Pneumothorax")] == 0.0 and labels[1, 0] == 1.0
    assert label_reports([]).shape == (0, 14)


# ------------------------------------------------------------------ files

REPORTS = ["Mild cardiomegaly. No effusion.", "Possible pneumonia, with a comma, and \"quotes\".", "Normal chest."]


def _read_output(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def _check_output(path):
    header, rows = _read_output(path)
    assert header == ["Reports", *OBS]
    assert [r[0] for r in rows] == REPORTS
    first = dict(zip(header, rows[0]))
    assert first["Cardiomegaly"] == "1.0" and first["Pleural Effusion"] == "0.0" and first["Edema"] == ""
    assert dict(zip(header, rows[1]))["Pneumonia"] == "-1.0"
    assert dict(zip(header, rows[2]))["No Finding"] == "1.0"


def label_file(source, out_csv):
    """What `medvlm label` does with a file: read it (data.tables), label, write the CSV."""
    reports = read_reports(source)
    labels = label_reports(reports)
    write_labels_csv(reports, labels, out_csv)
    return labels


def test_label_file_txt(tmp_path):
    source = tmp_path / "reports.txt"
    source.write_text("\n".join(REPORTS) + "\n\n")
    labels = label_file(source, tmp_path / "out.csv")
    assert labels.shape == (3, 14)
    _check_output(tmp_path / "out.csv")


def test_label_file_jsonl(tmp_path):
    source = tmp_path / "reports.jsonl"
    source.write_text("\n".join(json.dumps({"id": i, ("report" if i else "text"): r}) for i, r in enumerate(REPORTS)))
    label_file(source, tmp_path / "out.csv")
    _check_output(tmp_path / "out.csv")


@pytest.mark.parametrize("column", ["Reports", "report", "text"])
def test_label_file_csv(tmp_path, column):
    source = tmp_path / "reports.csv"
    with open(source, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", column])
        writer.writerows([i, r] for i, r in enumerate(REPORTS))
    label_file(source, tmp_path / "out.csv")
    _check_output(tmp_path / "out.csv")
    # our own output is valid input again (round trip through the Reports column)
    assert read_reports(tmp_path / "out.csv") == REPORTS


def test_csv_without_report_column_names_the_columns(tmp_path):
    source = tmp_path / "bad.csv"
    source.write_text("id,findings\n1,No effusion.\n")
    with pytest.raises(UserError, match=r"bad\.csv: no report column.*found: id, findings"):
        label_file(source, tmp_path / "out.csv")


@pytest.mark.parametrize("line, expected", [
    ('{"id": 1}', r"bad\.jsonl, line 2: no 'report' or 'text' field \(fields: id\)"),
    ("{not json", r"bad\.jsonl, line 2: not valid JSON"),
    ('"a report"', r"bad\.jsonl, line 2: expected a JSON object .* got a string \('a report'\)"),
])
def test_bad_jsonl_line_names_file_and_line(tmp_path, line, expected):
    source = tmp_path / "bad.jsonl"
    source.write_text('{"report": "No effusion."}\n' + line + "\n")
    with pytest.raises(UserError, match=expected):
        read_reports(source)


def test_unreadable_reports_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"missing\.txt: file not found"):
        read_reports(tmp_path / "missing.txt")
    with pytest.raises(UserError, match=r"reports\.txt, line 1: not UTF-8"):
        (tmp_path / "reports.txt").write_bytes(b"No effusion \xff\xfe.\n")
        read_reports(tmp_path / "reports.txt")


def test_label_main(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        label_main(["--help"])
    assert exit_info.value.code == 0 and "CheXpert" in capsys.readouterr().out
    source = tmp_path / "reports.txt"
    source.write_text("\n".join(REPORTS))
    assert label_main([str(source), "--out", str(tmp_path / "labels.csv")]) == 0
    _check_output(tmp_path / "labels.csv")
    assert json.loads(capsys.readouterr().out)["reports"] == 3
    assert label_main([str(source)]) == 0
    assert (tmp_path / "reports_labeled.csv").exists()


# ------------------------------------------------------------------ clinical efficacy

def _vector(**labels):
    vector = [NAN] * 14
    for name, value in labels.items():
        vector[OBS.index(name.replace("_", " "))] = value
    return vector


REF = np.array([_vector(Cardiomegaly=1, Pleural_Effusion=1),
                _vector(Cardiomegaly=1, Pleural_Effusion=-1),
                _vector(No_Finding=1)])
GEN = np.array([_vector(Cardiomegaly=1, Pleural_Effusion=0),
                _vector(Cardiomegaly=-1, Pleural_Effusion=1),
                _vector(No_Finding=1, Edema=1)])


def test_clinical_efficacy_uncertain_negative():
    ce = clinical_efficacy(REF, GEN, uncertain="negative")
    # Cardiomegaly tp1 fn1; Effusion fp1 fn1; No Finding tp1; Edema fp1 -> micro tp2 fp2 fn2
    assert ce["ce_precision"] == pytest.approx(0.5) and ce["ce_recall"] == pytest.approx(0.5)
    assert ce["ce_micro_f1"] == pytest.approx(0.5)
    assert ce["ce_f1.Cardiomegaly"] == pytest.approx(2 / 3)
    assert ce["ce_precision.Cardiomegaly"] == 1.0 and ce["ce_recall.Cardiomegaly"] == 0.5
    assert ce["ce_f1.Pleural Effusion"] == 0.0 and ce["ce_f1.No Finding"] == 1.0 and ce["ce_f1.Edema"] == 0.0
    # macro over the 4 observations with any positive on either side
    assert ce["ce_macro_precision"] == pytest.approx((1 + 0 + 1 + 0) / 4)
    assert ce["ce_macro_recall"] == pytest.approx((0.5 + 0 + 1 + 0) / 4)
    assert ce["ce_macro_f1"] == pytest.approx((2 / 3 + 0 + 1 + 0) / 4)
    assert len([k for k in ce if k.startswith("ce_f1.")]) == 14 and ce["ce_f1.Fracture"] == 0.0


def test_clinical_efficacy_uncertain_positive_and_ignore():
    positive = clinical_efficacy(REF, GEN, uncertain="positive")
    assert positive["ce_micro_f1"] == pytest.approx(0.8)  # tp4 fp1 fn1
    assert positive["ce_f1.Cardiomegaly"] == 1.0
    assert positive["ce_recall.Pleural Effusion"] == 0.5
    ignore = clinical_efficacy(REF, GEN, uncertain="ignore")
    assert ignore["ce_micro_f1"] == pytest.approx(2 / 3)  # uncertain pairs dropped: tp2 fp1 fn1
    assert ignore["ce_f1.Cardiomegaly"] == 1.0 and ignore["ce_recall.Pleural Effusion"] == 0.0
    with pytest.raises(UserError, match="uncertain must be"):
        clinical_efficacy(REF, GEN, uncertain="maybe")


def test_clinical_efficacy_perfect_and_shape_checks():
    assert clinical_efficacy(REF, REF)["ce_micro_f1"] == 1.0
    with pytest.raises(ValueError, match="both be"):
        clinical_efficacy(REF, GEN[:2])
