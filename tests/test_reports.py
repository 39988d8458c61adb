"""FINDINGS / IMPRESSION extraction and cleaning on realistic MIMIC-CXR and IU X-ray report text."""

import pytest

from medvlm.data.reports import clean_report, compose_target, extract_sections, split_sections

MIMIC_FULL = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)
 
 INDICATION:  ___F with new onset ascites  // eval for infection
 
 TECHNIQUE:  Chest PA and lateral
 
 COMPARISON:  None.
 
 FINDINGS: 
 
 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows. The
 cardiomediastinal silhouette is normal.  Clips project over the left lung,
 potentially within the breast. The imaged upper abdomen is unremarkable.
 Chronic deformity of the posterior left sixth and seventh ribs are noted.
 
 IMPRESSION: 
 
 No acute cardiopulmonary process.
"""

MIMIC_NO_FINDINGS = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PORTABLE AP)
 
 INDICATION:  ___ year old woman with intubation  // ETT placement
 
 COMPARISON:  Chest radiograph from ___.
 
 IMPRESSION: 
 
 Endotracheal tube terminates 4.5 cm above the carina.  Enteric tube courses
 below the diaphragm.  Persistent bibasilar opacities.
 
 NOTIFICATION:  The findings were discussed with Dr. ___ by ___ on the
 telephone on ___ at 9:15 AM.
"""

MIMIC_LOWER_CASE = """FINAL REPORT
history: cough.
Findings :  Heart size is normal.   Lungs are clear.
impression :  No acute disease.
"""

MIMIC_NO_HEADERS = """                                 FINAL REPORT
 CHEST RADIOGRAPH PERFORMED ON ___
 
 Heart size is normal. The lungs are clear without consolidation.
 
 No acute cardiopulmonary abnormality.
"""


def test_full_mimic_report():
    s = extract_sections(MIMIC_FULL)
    assert s["findings"].startswith("There is no focal consolidation, pleural effusion or pneumothorax.")
    assert "Bilateral nodular opacities" in s["findings"]  # wrapped lines joined with one space
    assert "\n" not in s["findings"] and "  " not in s["findings"]
    assert s["findings"].endswith("seventh ribs are noted.")
    assert s["impression"] == "No acute cardiopulmonary process."


def test_missing_findings_and_notification_stops_impression():
    s = extract_sections(MIMIC_NO_FINDINGS)
    assert s["findings"] == ""
    assert s["impression"].startswith("Endotracheal tube terminates 4.5 cm above the carina.")
    assert s["impression"].endswith("Persistent bibasilar opacities.")
    assert "telephone" not in s["impression"]


def test_lower_case_headers_with_space_before_colon():
    s = extract_sections(MIMIC_LOWER_CASE)
    assert s == {"findings": "Heart size is normal. Lungs are clear.", "impression": "No acute disease."}


def test_no_headers_last_paragraph_is_impression():
    s = extract_sections(MIMIC_NO_HEADERS)
    assert s["findings"] == ""
    assert s["impression"] == "No acute cardiopulmonary abnormality."
    assert extract_sections(MIMIC_NO_HEADERS, fallback="none") == {"findings": "", "impression": ""}


def test_combined_and_conclusion_headers():
    s = extract_sections("INDICATION: pain.\nFINDINGS AND IMPRESSION: Normal chest.\n")
    assert s == {"findings": "Normal chest.", "impression": "Normal chest."}
    s = extract_sections("Findings: Small left effusion.\nCONCLUSION: Small effusion.")
    assert s == {"findings": "Small left effusion.", "impression": "Small effusion."}


def test_headers_run_into_previous_sentence():
    s = extract_sections("COMPARISON: None. FINDINGS: Lungs are clear. IMPRESSION: Normal.")
    assert s == {"findings": "Lungs are clear.", "impression": "Normal."}


def test_header_alone_on_its_line_and_unknown_capital_header_ends_section():
    text = "FINDINGS\nThe lungs are clear.\nRECOMMENDATION(S): Follow-up CT.\nIMPRESSION\nNormal."
    assert extract_sections(text) == {"findings": "The lungs are clear.", "impression": "Normal."}
    text = "FINDINGS: Clear lungs.\nPA AND LATERAL VIEWS OF THE CHEST: reviewed.\nIMPRESSION: Normal."
    assert extract_sections(text)["findings"] == "Clear lungs."


def test_mixed_case_colon_text_is_not_a_header():
    s = extract_sections("FINDINGS: Heart size: normal. Lungs: clear.\nIMPRESSION: Normal.")
    assert s["findings"] == "Heart size: normal. Lungs: clear."


def test_split_sections_order():
    # FINAL REPORT, EXAMINATION, INDICATION, TECHNIQUE, COMPARISON, then the two we want
    kinds = [k for k, _ in split_sections(MIMIC_FULL)]
    assert kinds == ["other"] * 5 + ["findings", "impression"]
    assert split_sections("no header at all") == [(None, "no header at all")]


def test_mimic_deid_blanks_removed():
    assert clean_report("Dr. ___ was paged at ___ on ___.") == "Dr. was paged at on."
    assert "___" in clean_report("Dr. ___ was paged.", deid="keep")


def test_iu_xxxx_tokens_drop_or_keep():
    text = ("These findings were discussed XXXX. XXXX by Dr. XXXX XXXX telephone at XXXX p.m. "
            "XXXX/XXXX. Dr. XXXX<XXXX>technologist receipt of the results.")
    dropped = clean_report(text)
    assert "XXXX" not in dropped and "<" not in dropped and "/" not in dropped
    assert dropped.startswith("These findings were discussed.")
    assert clean_report("The XXXX examination is normal.") == "The examination is normal."
    assert clean_report(text, deid="keep").count("XXXX") == text.count("XXXX")
    with pytest.raises(ValueError):
        clean_report(text, deid="mask")


def test_clean_report_whitespace():
    assert clean_report("  Heart  normal .\n\n Lungs\tclear ,  no effusion .  ") == \
        "Heart normal. Lungs clear, no effusion."
    assert clean_report("") == ""


def test_compose_target():
    assert compose_target("F.", "I.", "findings") == "F."
    assert compose_target("F.", "I.", "impression") == "I."
    assert compose_target("F.", "I.", "findings+impression") == "F. I."
    assert compose_target("", "I.", "findings+impression") == "I."
    assert compose_target("Same.", "Same.", "findings+impression") == "Same."
    with pytest.raises(ValueError):
        compose_target("F.", "I.", "both")
