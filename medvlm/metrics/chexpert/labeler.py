"""A rule-based labeler for the 14 CheXpert observations.

The labeler follows the CheXpert labeler's three stages (Irvin et al., AAAI 2019) without its
parser: mention extraction from phrase lists, mention classification (negative, uncertain,
positive) from cue phrases with limited scope, and aggregation per report.

1. Text -> sentences (on . ! ? and blank lines; decimals such as "1.5 cm" stay whole) ->
   clauses. A clause ends at ; : ( ) and at "but", "however", "although", "though", "whereas",
   "which", "except", "aside from", "apart from", "other than", and before ", the", ", there",
   "and the", "and there": a cue never reaches across a clause boundary.
2. Mentions: phrase lists per observation (modelled on the CheXpert/NegBio lists), matched
   longest-first on whole tokens, after exclusions that stop look-alikes ("pericardial effusion"
   is not a pleural effusion, a "lytic lesion" is not a lung lesion, "vertebral collapse" is not
   atelectasis, a "lesion of the rib" is not a lung lesion, a "fractured lead" is not a
   fracture). A "nodular density" is an opacity, not a nodule; a device's "tip", "leads" (external
   monitor leads too), a "generator", "markers" and anything "prosthetic" are Support Devices.
   Heart and mediastinum size are read as subject + attribute ("heart size is normal", "mildly
   enlarged cardiac silhouette", "the heart and mediastinum are within normal limits"): an
   "enlarged" attribute is a positive mention, a "normal" attribute a negative one (as CheXpert
   labels "normal heart size" 0); "cardiomediastinal silhouette ... normal" is
   negative for both Enlarged Cardiomediastinum and Cardiomegaly, and an *enlarged* one positive
   for both (the heart is most of it: IU's annotators index it as cardiomegaly). Laterality and
   size words ("left", "bilateral", "small") are not part of any phrase, so they never change a
   label.
3. Classification by cues, matched before mentions and in this order (a token used by one cue is
   not reused): pseudo-negations ("no change in", "no increase in", "without interval change":
   they negate nothing, so "no change in the left effusion" is positive); double negations that
   mean uncertainty ("cannot exclude", "cannot be excluded", "not ruled out", "difficult to
   exclude"); negations ("no", "not", "without", "negative for", "free of", "clear of",
   "absence of", "resolution of", "removal of", "clearing of", "history of", and after the
   mention "not seen", "may not be demonstrated", "has resolved", "is absent", "have been
   removed", "is clear", "appear within normal limits"); uncertainty ("may", "might", "could",
   "possible", "questionable", "question", "suspected", "concern for", "correlate clinically
   for", "versus", "and/or", "differential diagnosis includes", "borderline", "equivocal", and
   after the mention "is possible", "would be a consideration", "suspected", "?").
   High-confidence hedges are positive, as in the CheXpert labeler's lists and the IU
   annotations: "probable", "probably", "likely" negate nothing and shield what follows from an
   earlier negation ("No effusion, probable atelectasis": the atelectasis is positive);
   "suggestive of", "suggesting", "indicative of" pass on a governing negation or uncertainty
   ("no findings to suggest pneumonia" is negative, "may be suggestive of pneumonia" uncertain)
   and are positive otherwise; "concerning for", "suspicious for" keep a governing negation and
   are uncertain otherwise.
   A cue before a mention governs it when it is the nearest cue before it in the clause, within
   its reach (12 tokens for "no"/"without", 4 for "not", ...; the findings of a list do not use
   up the reach), and the scope has not been closed: after a finding has been named, a finite
   verb ("No effusion is seen and ..."), "with", "and" + a state word ("and stable ..."), or
   ", new|stable|..." closes it. So a negated list ("no effusion, consolidation or pneumothorax")
   negates every item, and "No effusion but there is a new opacity" leaves the opacity positive.
   A cue after a mention governs it when no finite verb stands between them.
4. Aggregation as CheXpert: positive beats uncertain beats negative across mentions; no mention
   leaves the observation blank (NaN); a positive or uncertain "CHF"/"heart failure" also adds an
   uncertain Cardiomegaly (CheXpert's exception); No Finding is 1 when no observation other
   than Support Devices is positive or uncertain, and blank otherwise.

This is a heuristic labeler, not the CheXpert labeler: compare results only with scores made
by the same labeler. ``benchmarks/labeler_vs_iu_problems.py`` measures its agreement with the
human `Problems` annotations of IU X-ray. Clinical efficacy scores from these labels are in
`efficacy`; the `medvlm label` command is in `command`.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

import numpy as np

from ...observations import CHEXPERT_OBSERVATIONS

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0

NO_FINDING = "No Finding"
SUPPORT_DEVICES = "Support Devices"
ECM, CARDIOMEGALY = "Enlarged Cardiomediastinum", "Cardiomegaly"
OBS_INDEX = {name: i for i, name in enumerate(CHEXPERT_OBSERVATIONS)}


# ================================================================== phrase lists
# Patterns are regular expressions over a clause's tokens joined by single spaces; they match
# whole tokens only. Keep them free of laterality and size words.

_PL = r"(?:s)?"  # optional plural s

MENTIONS: dict[str, list[str]] = {
    ECM: [
        r"enlarged cardiomediastinum",
        r"cardiomediastinal (?:enlargement|widening)",
        r"(?:widened|widening|wide|enlarged|enlargement|prominent|prominence)(?: of the)? (?:superior |upper )?"
        r"mediastin(?:um|al (?:silhouette|contour|contours|shadow|width))",
        r"(?:mediastinal|paratracheal) (?:widening|enlargement|prominence|fullness)",
    ],
    CARDIOMEGALY: [
        r"cardiomegaly",
        r"(?:cardiac|heart) enlargement",
        r"enlargement of the (?:heart|cardiac (?:silhouette|shadow|contour|size))",
        r"(?:enlarged|large|prominent) heart",
        r"(?:enlarged|large|prominent) (?:heart|cardiac) (?:size|silhouette|shadow|contour)",
    ],
    "Lung Lesion": [
        r"nodule" + _PL,
        r"nodular (?:lesion|lesions|focus|foci)",
        r"nodularity",
        r"mass(?:es)?",
        r"(?:mass )?lesion" + _PL,
        r"tumou?r" + _PL,
        r"neoplasm" + _PL,
        r"carcinoma" + _PL,
        r"malignancy|malignancies",
        r"cavitary (?:lesion|lesions|mass|nodule)",
        r"lump",
        r"metastas[ie]s|metastatic disease",
    ],
    "Lung Opacity": [
        r"opacit(?:y|ies)",
        r"opacification",
        r"opacified",
        r"infiltrate" + _PL,
        r"infiltration" + _PL,
        r"infiltrative (?:process|change|changes|disease|opacity|opacities)",
        r"haziness",
        r"hazy(?: (?:opacity|opacities|density|densities|appearance|lung|lungs|airspace))?",
        r"air ?space (?:disease|process|opacity|opacities|filling)",
        r"(?:radio)?densit(?:y|ies)",
        # IU's annotators index "nodular density" as Density / Opacity, not as a nodule
        r"nodular (?:density|densities|opacity|opacities|opacification)",
        r"ground glass(?: opacity| opacities| attenuation)?",
        r"reticular (?:pattern|markings|opacity|opacities|changes)",
        r"reticulonodular(?: (?:pattern|opacity|opacities|markings|changes))?",
        r"interstitial (?:opacity|opacities|pattern)",
        r"reticular nodular (?:pattern|opacity|opacities|densities|changes)",
    ],
    "Edema": [
        r"o?edema",
        r"(?:pulmonary |vascular |venous |pulmonary vascular )?congestion",
        r"congestive (?:heart )?failure",
        r"chf",
        r"heart failure",
        r"(?:pulmonary )?vascular (?:engorgement|prominence|redistribution|indistinctness)",
        r"cephalization",
        r"kerley(?: b)? lines",
        r"interstitial (?:thickening|edema)",
        r"(?:prominent|engorged|indistinct|increased) (?:central )?(?:pulmonary |lung )?"
        r"(?:vasculature|vessels|vascular markings|vascularity)",
        r"(?:prominence|engorgement|indistinctness) of the (?:central )?(?:pulmonary )?"
        r"(?:vasculature|vessels|vascular markings|vascularity)",
        r"(?:pulmonary |lung )?(?:vasculature|vascularity) (?:is |are |appears |appear )"
        r"(?:mildly |slightly |somewhat )?(?:prominent|engorged|indistinct|increased)",
        r"(?:pulmonary )?venous hypertension",  # the radiograph's name for venous congestion
        r"(?:fluid|volume) overload",
    ],
    "Consolidation": [
        r"(?:air ?space )?consolidation" + _PL,
        r"consolidative(?: (?:opacity|opacities|process|change|changes))?",
        r"consolidated",
    ],
    "Pneumonia": [
        r"(?:broncho)?pneumonia" + _PL,
        r"pneumonitis",
        r"infection" + _PL,
        r"infectious(?: (?:process|etiology|change|changes|infiltrate))?",
    ],
    "Atelectasis": [
        r"atelecta(?:sis|ses|tic)",
        r"collapse",
        r"collapsed",
    ],
    "Pneumothorax": [
        r"pneumothora(?:x|ces)",
        r"hydropneumothorax",
        r"ptx",
    ],
    "Pleural Effusion": [
        r"effusion" + _PL,
        r"pleural fluid",
        r"hydrothorax",
        r"hydropneumothorax",
        r"fluid (?:in|within) the (?:pleural space|pleural spaces|fissure|fissures|minor fissure|major fissure)",
        r"(?:layering|loculated) (?:pleural )?fluid",
    ],
    "Pleural Other": [
        r"pleural (?:thickening|scar|scars|scarring|plaque|plaques|calcification|calcifications|reaction|abnormality|"
        r"abnormalities|disease|mass|masses)",
        r"pleural based (?:opacity|opacities|density|densities|thickening|scarring)",
        r"pleural parenchymal (?:scar|scarring|thickening)",  # a "pleural parenchymal opacity" is an opacity
        r"pleuroparenchymal (?:scar|scarring|thickening)",
        r"fibrothorax",
        r"(?:apical|biapical) (?:pleural )?(?:thickening|cap|caps|capping)",
        r"thickening of the pleura",
        r"calcified pleura",
    ],
    "Fracture": [
        r"fracture" + _PL,
        r"fractured",
        r"fx",
    ],
    SUPPORT_DEVICES: [
        r"(?:endotracheal|et|ett|tracheostomy|trach|nasogastric|ng|orogastric|og|feeding|enteric|chest|dobhoff|"
        r"gastric|gastrostomy|pleural|mediastinal|nasoenteric|sump|drainage|thoracostomy) tubes?",
        r"tubes?",
        r"ett",
        r"(?:central|central venous|venous|picc|pic|midline|arterial|port|ij|internal jugular|subclavian|jugular|"
        r"femoral|swan ganz|dialysis|hemodialysis|pulmonary artery) (?:lines?|catheters?)",
        r"picc",
        r"catheters?",
        r"pacemaker" + _PL,
        r"pacer" + _PL,
        r"aicd|icd|defibrillator" + _PL,
        r"(?:pacemaker|pacer|pacing|aicd|icd|defibrillator|cardiac) (?:leads?|wires?|generator|device|devices)",
        r"(?:sternotomy|sternal|surgical|cerclage|epicardial|pacing) wires?",
        r"wires",
        r"devices?",
        r"port a cath|portacath|mediport",
        r"port" + _PL,
        r"stent" + _PL,
        r"drain" + _PL,
        r"(?:surgical |vascular )?clips",
        r"hardware",
        r"prosthes[ie]s",
        r"prosthetic (?:valve|valves|device|devices)",
        r"(?:valve|mitral valve|aortic valve) (?:replacement|replacements|prosthesis)",
        r"(?:intra aortic )?balloon pump",
        r"iabp|lvad|impella",
        r"(?:embolization )?coils?",
        r"shunt" + _PL,
        r"(?:shunt )?tubing",
        # a "tip" on a chest film is a line's or tube's tip ("right chest XXXX tip in the SVC")
        r"tips?",
        r"leads|electrodes?",
        r"(?:pulse )?generator" + _PL,
        r"tracheostomy",
        r"prosthetic",
        r"markers?",
        r"(?:bone |suture )?anchors?",
        r"occluder" + _PL,
    ],
}

# Look-alikes consumed before mentions are matched: they name no CheXpert observation.
EXCLUSIONS = [
    r"pericardial effusion" + _PL,
    r"(?:joint|knee|shoulder) effusion" + _PL,
    r"(?:lytic|sclerotic|blastic|osseous|bony|bone|skin|cutaneous|soft tissue|skeletal|rib|vertebral|hepatic|liver|"
    r"renal|adrenal|thyroid|breast) (?:lesion|lesions|mass|masses|metastasis|metastases)",
    r"(?:osseous|bony|bone|skeletal) metastatic disease",
    r"(?:muscle|fat) mass",
    r"(?:pericardial|mediastinal|anterior mediastinal|posterior mediastinal|hilar|paratracheal|neck|abdominal) "
    r"mass(?:es)?",
    r"(?:granulomatous) (?:infection|infections|disease)",
    r"(?:signs|symptoms|history) of (?:infection|pneumonia)",
    r"breast (?:prosthesis|prostheses|implant|implants)",
    r"(?:bone|bony|osseous|sclerotic|breast) (?:density|densities|opacity|opacities)",
    r"(?:compression|vertebral|vertebral body|vertebra|vertebrae) (?:collapse|deformity|deformities)",
    r"collapse of the (?:vertebral body|vertebra|vertebrae)",
    r"(?:soft tissue|subcutaneous|chest wall|extremity) edema",
    r"(?:scapular|scapula|lingular|lung) tips?",
    r"(?:nipple|breast) (?:shadow|shadows)",
    r"pleural (?:line|lines)",  # the visceral pleural line of a pneumothorax description
    # a lesion of a bone, a broken device: not a lung lesion, not a fracture
    r"(?:lesion|lesions|mass|masses) (?:of|in|within|involving) the (?:[a-z0-9]+ ){0,4}(?:rib|ribs|clavicle|"
    r"clavicles|scapula|humerus|humeral head|spine|vertebra|vertebrae|vertebral body|sternum|bone|bones)",
    r"(?:(?<=screw )|(?<=wire )|(?<=lead )|(?<=catheter ))fractures?|"
    r"fractured(?= (?:[a-z]+ )?(?:lead|leads|wire|wires|screw|screws|catheter|hardware)(?!\S))",
]

# Heart / mediastinum size: a subject and the nearest size attribute.
SIZE_SUBJECTS = [
    (r"(?:cardiac|heart) and mediastinal (?:contours?|silhouettes?|shadows?)", (CARDIOMEGALY, ECM)),
    (r"cardiomediastinal (?:silhouette|silhouettes|contour|contours|shadow|size|structures)|cardiomediastinum",
     (ECM, CARDIOMEGALY)),
    (r"heart(?: size)?(?! failure)(?! valve)|cardiac (?:silhouette|size|shadow|contour|contours|border|borders)|"
     r"cardiopericardial silhouette", (CARDIOMEGALY,)),
    (r"(?:superior )?mediastinum|mediastinal (?:silhouette|contour|contours|shadow|width|structures)", (ECM,)),
]
_SIZE_POSITIVE = {"enlarged", "enlargement", "large", "larger", "increased", "prominent", "prominence",
                  "widened", "widening", "wide"}
_SIZE_NORMAL = {"normal", "unremarkable"}
_SIZE_UNCERTAIN = {"borderline"}
_SIZE_FORWARD, _SIZE_BACKWARD = 8, 3

# ================================================================== cues
# (pattern, kind, direction, reach): kind neg | unc | weak (uncertainty that a governing negation
# overrides) | lean (a finding suggested: positive, but a governing negation or uncertainty
# passes through it, "no findings to suggest pneumonia") | pseudo (negates nothing, but shields
# what follows from earlier cues) | none (consumed only); direction pre (governs mentions after
# it), post (before it) or both; reach = the most tokens between cue and mention.
# High-confidence hedges ("probable", "likely", "suggestive of") state the finding, as in the
# CheXpert labeler's lists, which leave "likely" and "suggestive of" positive; the IU annotators
# index "probable X" as X as well. Low-confidence ones ("may", "possible", "versus") are uncertain.

_ADV = r"(?:entirely |completely |totally |definitely |definitively |fully |reliably |confidently |be )*"
CUES: list[tuple[str, str, str, int]] = [
    # 1. pseudo-negations
    (r"no (?:significant |appreciable |substantial |interval |definite |major |gross |acute |marked |further )*"
     r"(?:change|changes|increase|decrease|worsening|improvement|progression|enlargement|difference)",
     "pseudo", "pre", 12),
    (r"without (?:significant |appreciable |substantial |interval )*(?:change|changes)", "pseudo", "pre", 12),
    (r"(?:has |have |had )?not (?:significantly |substantially |appreciably |been )?(?:changed|change|increased|"
     r"decreased|worsened|improved)", "none", "post", 0),
    (r"not only|gram negative", "none", "pre", 0),
    # 2. double negations that mean uncertainty
    (r"(?:(?:is|are|was|were) )?(?:cannot|could not|can not|unable to|not able to|difficult to|hard to|not|"
     r"may not|would not) " + _ADV +
     r"(?:exclude|excluded|rule out|ruled out|eliminate|eliminated)", "unc", "both", 10),
    (r"(?:(?:is|are|was|were) )?(?:unlikely|less likely|not likely)", "unc", "both", 6),  # before "not"
    # 3. negations
    (r"(?:is |are |was |were |has been |have been )?(?:now )?no longer (?:clearly |well |definitely )?"
     r"(?:seen|identified|visualized|visible|appreciated|present|evident|demonstrated|noted|detected|apparent)",
     "neg", "post", 8),
    (r"(?:is |are |was |were |has been |have been |may |might |will |would )?(?:now )?not (?:be )?"
     r"(?:clearly |well |definitely |convincingly |currently |again |otherwise |radiographically )?"
     r"(?:seen|identified|visualized|visible|appreciated|present|evident|demonstrated|noted|detected|apparent|"
     r"observed|shown)", "neg", "post", 8),
    (r"(?:has |have |had )(?:since |subsequently |completely |nearly |almost |now |largely |essentially )?"
     r"(?:resolved|cleared|disappeared|been removed|been withdrawn)", "neg", "post", 8),
    (r"(?:is |are |was |were )?(?:now )?(?:absent|excluded|ruled out|gone)", "neg", "post", 6),
    (r"(?:is |are |was |were )(?:now )?(?:clear|cleared)(?! of)", "neg", "post", 8),
    (r"(?:(?:is|are|appears|appear|remains|remain) )?(?:(?:grossly|otherwise|again) )?within "
     r"(?:the )?(?:normal limits|limits of normal|normal range)", "neg", "post", 4),
    (r"resolved|cleared|disappeared", "neg", "both", 3),
    (r"removed", "neg", "post", 6),
    (r"negative for|free of|clear of|absence of|without|rather than", "neg", "pre", 12),
    (r"no", "neg", "pre", 12),
    (r"(?:interval )?(?:resolution|removal|withdrawal|clearing) of", "neg", "pre", 6),
    (r"history of", "neg", "pre", 4),  # the clinical history, not this film (as the CheXpert labeler reads it)
    (r"not|nor|neither", "neg", "pre", 4),
    # 4. uncertainty
    (r"concerning for|suspicious for|worrisome for", "weak", "pre", 10),
    (r"suggest|suggests|suggested|suggesting|suggestive of|to suggest|to indicate|indicative of", "lean", "pre", 10),
    (r"(?:is |are |was |were |would be |may be |remains )(?:also |more |thought )?(?:possible|"
     r"suspected|questioned|favored|considered|a possibility|a consideration|another consideration|"
     r"in the differential)", "unc", "post", 6),
    (r"(?:is |are |was |were )(?:most |more |also )?(?:likely|probable)", "none", "post", 6),
    (r"(?:most |more )?(?:likely|probable|probably)", "pseudo", "pre", 10),
    (r"(?:may|might|could) be (?:present|seen|considered)", "unc", "post", 6),
    (r"\?", "unc", "post", 12),
    (r"versus|vs|and or", "unc", "both", 4),
    # a differential diagnosis lists its candidates at length
    (r"differential(?: (?:diagnosis|diagnoses|considerations?))?(?: (?:includes?|including|is|are))?",
     "unc", "pre", 20),
    (r"suspected", "unc", "both", 6),
    (r"may|might|could|possible|possibly|questionable|questionably|"
     r"question of|question|suspect|suspicion of|suspicion for|concern for|equivocal|"
     r"borderline|uncertain|unclear|consider|considered|presumed|presumably|"
     r"evaluate for|evaluation for|assess for|rule out|r o|cannot be assessed|possibility of|"
     r"correlate clinically for|clinically correlate for|clinical correlation for", "unc", "pre", 10),
]

# After a finding has been named inside a cue's scope, these close the scope.
_SCOPE_VERBS = {"is", "are", "was", "were", "has", "have", "had", "remains", "remain", "appears", "appear",
                "persists", "persist", "shows", "show",
                "measures", "measuring", "extends", "projects", "terminates", "overlies", "represents",
                "represent", "reflects", "reflect"}
_STATE_WORDS = {"stable", "persistent", "unchanged", "increased", "increasing", "decreased", "decreasing",
                "improved", "improving", "worsening", "worsened", "new", "mild", "moderate", "severe", "large",
                "small", "minimal", "residual", "slight", "trace", "tiny", "chronic", "old", "healed", "healing"}
_COMMA_STATE = _STATE_WORDS - {"mild", "moderate", "severe", "large", "small", "minimal", "slight", "trace", "tiny"}

_CLAUSE_WORDS = {"but", "however", "although", "though", "whereas", "which", "except", "nevertheless",
                 "otherwise", "aside", "apart", ";", ":", "(", ")"}
_CLAUSE_BIGRAMS = {(",", "the"), (",", "there"), ("and", "the"), ("and", "there"), ("other", "than")}
_NEW_SUBJECTS = {"lung", "lungs", "pleural", "pulmonary", "vasculature", "vascularity", "bones", "osseous",
                 "there", "no", "without", "trachea", "hila", "hilar", "aorta", "diaphragm", "spine"}


def _bounded(pattern: str) -> re.Pattern:
    return re.compile(rf"(?<!\S)(?:{pattern})(?!\S)")


_MENTION_RES = [(_bounded(p), (obs,)) for obs, patterns in MENTIONS.items() for p in patterns]
_EXCLUSION_RES = [_bounded(p) for p in EXCLUSIONS]
_SUBJECT_RES = [(_bounded(p), obs) for p, obs in SIZE_SUBJECTS]
_CUE_RES = [(_bounded(p), kind, direction, reach) for p, kind, direction, reach in CUES]


# ================================================================== text -> clauses -> tokens

_CONTRACTIONS = [(re.compile(r"\bcan[’']t\b"), "cannot"), (re.compile(r"\bwon[’']t\b"), "will not"),
                 (re.compile(r"n[’']t\b"), " not"), (re.compile(r"[’']s\b"), ""), (re.compile(r"[’']"), "")]
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[a-z]+|[.,;:()?!]|\n\s*\n")


def _tokens(text: str) -> list[str]:
    text = str(text).lower()
    for pattern, replacement in _CONTRACTIONS:
        text = pattern.sub(replacement, text)
    return [t if not t.startswith("\n") else "." for t in _TOKEN.findall(text)]


def split_clauses(text: str) -> list[list[str]]:
    """Tokens of a report grouped into clauses (see the module docstring). A "?" stays at the
    end of its clause, where it is an uncertainty cue."""
    clauses, current = [], []

    def close():
        if current:
            clauses.append(list(current))
            current.clear()

    tokens = _tokens(text)
    for i, token in enumerate(tokens):
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if token in (".", "!"):
            close()
        elif token == "?":
            current.append(token)
            close()
        elif token in _CLAUSE_WORDS:
            close()
        elif (token, nxt) in _CLAUSE_BIGRAMS:
            close()
        else:
            current.append(token)
    close()
    return clauses


# ================================================================== mentions and cues in a clause

@dataclass
class Span:
    start: int  # first token
    end: int  # one past the last token
    kind: str  # mention: "mention"; cue: neg | unc | weak | pseudo | none
    observations: tuple = ()
    preset: float | None = None  # a label fixed by the phrase itself ("normal heart size" -> 0)
    direction: str = "pre"
    reach: int = 0
    text: str = ""


class _Claims(list):
    """A clause's mask of claimed tokens; every write drops the clause's cached text."""

    def __init__(self, clause: "_Clause", size: int):
        super().__init__([False] * size)
        self.clause = clause

    def __setitem__(self, index, value):
        super().__setitem__(index, value)
        self.clause.cached_text = None


class _Clause:
    """A clause's tokens as one space-joined string, with a mask of tokens already claimed."""

    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.cached_text: str | None = None  # the text is read once per pattern: build it once per claim
        self.claimed = _Claims(self, len(tokens))
        self.offsets, position = [], 0
        for token in tokens:
            self.offsets.append(position)
            position += len(token) + 1

    def text(self) -> str:
        if self.cached_text is None:
            self.cached_text = " ".join("_" * len(t) if c else t for t, c in zip(self.tokens, self.claimed))
        return self.cached_text

    def find(self, regex: re.Pattern) -> list[tuple[int, int]]:
        """Token spans of non-overlapping matches on unclaimed tokens."""
        spans = []
        for match in regex.finditer(self.text()):
            if match.end() == match.start():
                continue
            start = bisect.bisect_left(self.offsets, match.start())
            end = bisect.bisect_left(self.offsets, match.end() + 1)
            spans.append((start, end))
        return spans

    def claim(self, start: int, end: int):
        for i in range(start, end):
            self.claimed[i] = True

    def free(self, start: int, end: int) -> bool:
        return not any(self.claimed[start:end])


def _find_cues(clause: _Clause) -> list[Span]:
    cues = []
    for regex, kind, direction, reach in _CUE_RES:
        for start, end in clause.find(regex):
            if clause.free(start, end):
                clause.claim(start, end)
                cues.append(Span(start, end, kind, direction=direction, reach=reach,
                                 text=" ".join(clause.tokens[start:end])))
    return sorted(cues, key=lambda s: s.start)


def _find_mentions(clause: _Clause) -> list[Span]:
    for regex in _EXCLUSION_RES:
        for start, end in clause.find(regex):
            clause.claim(start, end)
    mentions = _size_mentions(clause)
    candidates = []
    for regex, observations in _MENTION_RES:
        for start, end in clause.find(regex):
            candidates.append((start, end, observations))
    candidates.sort(key=lambda c: (-(c[1] - c[0]), c[0]))  # longest first
    taken: list[tuple[int, int, tuple]] = []
    for start, end, observations in candidates:
        same = [t for t in taken if (t[0], t[1]) == (start, end)]
        if same:  # the same words name two observations ("hydropneumothorax")
            same[0][2].extend(o for o in observations if o not in same[0][2])
            continue
        if clause.free(start, end):
            clause.claim(start, end)
            taken.append((start, end, list(observations)))
    for start, end, observations in taken:
        mentions.append(Span(start, end, "mention", tuple(observations), text=" ".join(clause.tokens[start:end])))
    return sorted(mentions, key=lambda s: s.start)


def _size_mentions(clause: _Clause) -> list[Span]:
    """Heart/mediastinum subjects with the nearest size attribute (see the module docstring)."""
    tokens, mentions = clause.tokens, []
    subjects = []
    for regex, observations in _SUBJECT_RES:
        for start, end in clause.find(regex):
            if clause.free(start, end):
                clause.claim(start, end)
                subjects.append((start, end, observations))
    subject_starts = {s[0] for s in subjects}
    for start, end, observations in subjects:
        best = None  # (distance, attribute index, label)
        verb_seen = False
        for i in range(end, min(len(tokens), end + _SIZE_FORWARD)):
            token = tokens[i]
            if verb_seen and (i in subject_starts or token in _NEW_SUBJECTS):
                break
            verb_seen = verb_seen or token in _SCOPE_VERBS
            label = _size_attribute(token)
            if label is not None:
                best = (i - end, i, label)
                break
        for i in range(start - 1, max(-1, start - 1 - _SIZE_BACKWARD), -1):
            if tokens[i] == ",":
                break  # "heart size moderately enlarged, stable mediastinal contours": the heart's attribute
            label = _size_attribute(tokens[i])
            if label is not None and (best is None or start - 1 - i < best[0]):
                best = (start - 1 - i, i, label)
                break
        if best is None:
            continue
        _, at, label = best
        lo, hi = min(start, at), max(end, at + 1)
        inside = tokens[lo:hi]
        if label == POSITIVE and ("not" in inside or "no" in inside):
            label = NEGATIVE
        if label == POSITIVE and set(inside) & {"may", "might", "could", "possibly", "borderline", "questionably"}:
            label = UNCERTAIN
        # the attribute words are part of this mention; the subject's own tokens stay claimed
        clause.claim(at, at + 1)
        mentions.append(Span(lo, hi, "mention", tuple(observations), preset=None if label == POSITIVE else label,
                             text=" ".join(tokens[lo:hi])))
    return mentions


def _size_attribute(token: str) -> float | None:
    if token in _SIZE_POSITIVE:
        return POSITIVE
    if token in _SIZE_NORMAL:
        return NEGATIVE
    if token in _SIZE_UNCERTAIN:
        return UNCERTAIN
    return None


# ================================================================== classification

def _in_scope(cue: Span, target: Span, tokens: list[str], mentions: list[Span]) -> bool:
    """Whether a cue reaches a target (a mention or another cue) in the same clause."""
    if cue.end <= target.start and cue.direction in ("pre", "both"):
        gap = range(cue.end, target.start)
        inside = [m for m in mentions if m.start >= cue.end and m.end <= target.start]
        # the findings of a negated list do not use up the reach ("without evidence of focal
        # consolidation, suspicious pulmonary opacity, large pleural effusion, or pneumothorax")
        if len(gap) - sum(m.end - m.start for m in inside) > cue.reach or \
                (cue.direction == "both" and "," in tokens[cue.end:target.start]):
            return False
        named = [m.end for m in inside]
        for i in gap:
            if not any(e <= i for e in named):
                continue  # nothing named yet: the scope is still open
            token, nxt = tokens[i], tokens[i + 1] if i + 1 < len(tokens) else ""
            if token in _SCOPE_VERBS or token == "with":
                return False
            if token == "and" and nxt in _STATE_WORDS:
                return False
            if token == "," and nxt in _COMMA_STATE:
                return False
        return True
    if target.end <= cue.start and cue.direction in ("post", "both"):
        gap = range(target.end, cue.start)
        if len(gap) > cue.reach or (cue.direction == "both" and "," in tokens[target.end:cue.start]):
            return False
        return not any(tokens[i] in _SCOPE_VERBS or tokens[i] == "with" for i in gap)
    return False


def _governing(target: Span, cues: list[Span], tokens: list[str], mentions: list[Span], before: bool) -> Span | None:
    if before:
        found = [c for c in cues if c.end <= target.start and _in_scope(c, target, tokens, mentions)]
        return max(found, key=lambda c: c.end) if found else None
    found = [c for c in cues if c.start >= target.end and _in_scope(c, target, tokens, mentions)]
    return min(found, key=lambda c: c.start) if found else None


def _classify(mention: Span, cues: list[Span], tokens: list[str], mentions: list[Span]) -> float:
    if mention.preset is not None:
        return mention.preset
    kinds = set()
    pre = _governing(mention, [c for c in cues if c.kind != "none"], tokens, mentions, before=True)
    if pre is not None and pre.kind in ("weak", "lean"):
        outer = _governing(pre, [c for c in cues if c.kind in ("neg", "unc", "pseudo") and c.end <= pre.start],
                           tokens, mentions, before=True)
        if outer is not None and outer.kind == "neg":
            kinds.add("neg")
        elif pre.kind == "weak" or (outer is not None and outer.kind == "unc"):
            kinds.add("unc")
    elif pre is not None:
        kinds.add(pre.kind)
    post = _governing(mention, [c for c in cues if c.kind in ("neg", "unc")], tokens, mentions, before=False)
    if post is not None:
        kinds.add(post.kind)
    if "neg" in kinds:
        return NEGATIVE
    if "unc" in kinds:
        return UNCERTAIN
    return POSITIVE


def extract_mentions(text: str) -> list[tuple[str, str, float]]:
    """(observation, mention text, label) for every mention in a report, in order: what the
    labeler saw, for debugging a label."""
    found = []
    for tokens in split_clauses(text):
        clause = _Clause(tokens)
        cues = _find_cues(clause)
        mentions = _find_mentions(clause)
        for mention in mentions:
            label = _classify(mention, cues, tokens, mentions)
            for observation in mention.observations:
                found.append((observation, mention.text, label))
    return found


def label_report(text: str | None) -> list[float]:
    """The 14 CheXpert labels of one report, in `CHEXPERT_OBSERVATIONS` order:
    1.0 positive, 0.0 negative, -1.0 uncertain, NaN not mentioned."""
    votes: dict[str, list[float]] = {}
    for observation, mention_text, label in extract_mentions(text or ""):
        votes.setdefault(observation, []).append(label)
        if observation == "Edema" and label != NEGATIVE and mention_text in ("chf", "heart failure",
                                                                             "congestive heart failure"):
            votes.setdefault(CARDIOMEGALY, []).append(UNCERTAIN)  # CheXpert's CHF exception
    labels = [float("nan")] * len(CHEXPERT_OBSERVATIONS)
    for observation, values in votes.items():
        labels[OBS_INDEX[observation]] = (POSITIVE if POSITIVE in values else
                                          UNCERTAIN if UNCERTAIN in values else NEGATIVE)
    finding = any(v in (POSITIVE, UNCERTAIN) for name, v in zip(CHEXPERT_OBSERVATIONS, labels)
                  if name not in (NO_FINDING, SUPPORT_DEVICES))
    labels[OBS_INDEX[NO_FINDING]] = float("nan") if finding else POSITIVE
    return labels


def label_reports(texts) -> np.ndarray:
    """Labels of many reports: float array (N, 14), NaN where not mentioned."""
    texts = list(texts)
    if not texts:
        return np.zeros((0, len(CHEXPERT_OBSERVATIONS)))
    return np.array([label_report(t) for t in texts], dtype=float)
