"""Free-text radiology reports: FINDINGS / IMPRESSION extraction and cleaning.

Real reports are messy: headers come as ``FINDINGS:``, ``Findings :``, ``FINDINGS AND
IMPRESSION:``, ``CONCLUSION:``, at the start of a line or run into the previous sentence; lines
are wrapped at ~78 columns; MIMIC-CXR replaces names and dates with ``___`` and IU X-ray with
``XXXX``. `extract_sections` finds the two sections a report-generation model is trained on and
`clean_report` normalises their text.
"""

from __future__ import annotations

import re
from pathlib import Path

from medvlm.data.records import DataError
from medvlm.errors import UserError

TARGET_SECTIONS = ("findings", "impression", "findings+impression")
DEID_POLICIES = ("drop", "keep")

_FINDINGS_NAMES = {"findings", "finding", "findings/observations", "observations", "report"}
_IMPRESSION_NAMES = {
    "impression", "impressions", "conclusion", "conclusions", "summary", "opinion",
    "interpretation", "diagnosis",
}
_BOTH_NAMES = {
    "findings and impression", "findings and impressions", "impression and findings",
    "findings/impression", "findings / impression", "findings & impression",
}
# Other headers seen in MIMIC-CXR / IU reports; they end a FINDINGS or IMPRESSION section.
_OTHER_NAMES = {
    "final report", "examination", "exam", "type of examination", "indication", "indications",
    "clinical indication", "history", "clinical history", "clinical information",
    "reason for exam", "reason for examination", "technique", "procedure", "comparison",
    "comparisons", "notification", "notifications", "recommendation", "recommendations",
    "recommendation(s)", "wet read", "addendum", "provisional findings impression (pfi)",
    "pfi", "note", "attending", "references", "reference exam",
}

# "NAME:" at the start of a line (name: letters, spaces and a few punctuation marks).
_HEADER_RE = re.compile(r"^\s*(?P<name>[A-Za-z][A-Za-z /&()\-]{0,48}?)\s*:(?P<rest>.*)$")
# A header run into the previous sentence ("... None. FINDINGS: ..."): upper case only.
_INLINE_HEADER_RE = re.compile(
    r"(?<=[.;])[ \t]+(?=(?:FINDINGS AND IMPRESSION|FINDINGS|IMPRESSION|CONCLUSION)S?[ \t]*:)"
)
_PARAGRAPH_RE = re.compile(r"\n[ \t]*\n")


def _norm_name(name: str) -> str:
    return " ".join(name.lower().split())


def _header(line: str) -> tuple[str, str] | None:
    """(kind, rest of line) when `line` opens a section, else None.

    kind is "findings", "impression", "both" or "other". A name followed by a colon is a
    header when it is a known section name (any case) or written in capitals; a known
    FINDINGS / IMPRESSION / other name alone on its line is a header without the colon.
    """
    m = _HEADER_RE.match(line)
    if m:
        name, rest = m.group("name"), m.group("rest")
        kind = _kind(_norm_name(name))
        if kind is None and name.upper() == name and sum(c.isalpha() for c in name) >= 3:
            kind = "other"
        if kind is not None:
            return kind, rest
    bare = _norm_name(line)
    kind = _kind(bare)
    if kind is not None and bare:
        return kind, ""
    return None


def _kind(name: str) -> str | None:
    if name in _BOTH_NAMES:
        return "both"
    if name in _FINDINGS_NAMES:
        return "findings"
    if name in _IMPRESSION_NAMES:
        return "impression"
    if name in _OTHER_NAMES:
        return "other"
    return None


def split_sections(text: str) -> list[tuple[str | None, str]]:
    """The report as (kind, raw text) pieces in order; kind None is text before any header."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _INLINE_HEADER_RE.sub("\n", text)
    pieces: list[list] = [[None, []]]
    for line in text.split("\n"):
        found = _header(line)
        if found is None:
            pieces[-1][1].append(line)
        else:
            kind, rest = found
            pieces.append([kind, [rest]])
    return [(kind, "\n".join(lines)) for kind, lines in pieces if "".join(lines).strip() or kind]


def _last_paragraph(text: str) -> str:
    """The last paragraph (blank-line separated) that does not open with a section header."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    for paragraph in reversed(_PARAGRAPH_RE.split(text)):
        lines = [ln for ln in paragraph.split("\n") if ln.strip()]
        if lines and _header(lines[0]) is None:
            return "\n".join(lines)
    return ""


def extract_sections(text: str, *, deid: str = "drop", fallback: str = "last_paragraph") -> dict:
    """``{"findings": str, "impression": str}`` from a free-text report (cleaned, "" if absent).

    FINDINGS: every section headed FINDINGS (or FINDING, OBSERVATIONS, REPORT), in order.
    IMPRESSION: every section headed IMPRESSION (or CONCLUSION, SUMMARY, OPINION, ...).
    A combined FINDINGS AND IMPRESSION section fills both. A section runs until the next header
    of any kind (INDICATION, COMPARISON, NOTIFICATION, any capitalised ``NAME:``, ...).
    When the report has neither header and ``fallback="last_paragraph"``, the impression is its
    last paragraph not opening with another header (reports without headers put the
    conclusion last); findings stays "". ``fallback="none"`` leaves both empty instead.
    `deid` is passed to `clean_report`.
    """
    if fallback not in ("last_paragraph", "none"):
        raise UserError(f"fallback must be 'last_paragraph' or 'none', got {fallback!r}")
    findings, impression = [], []
    for kind, body in split_sections(text):
        if kind in ("findings", "both"):
            findings.append(body)
        if kind in ("impression", "both"):
            impression.append(body)
    if not findings and not impression and fallback == "last_paragraph":
        impression.append(_last_paragraph(text))
    return {
        "findings": clean_report(" ".join(findings), deid=deid),
        "impression": clean_report(" ".join(impression), deid=deid),
    }


_MIMIC_BLANK_RE = re.compile(r"_{2,}")
_IU_TOKEN_RE = re.compile(r"X{3,}")
_EMPTY_BRACKETS_RE = re.compile(r"<\s*>|\(\s*\)|\[\s*\]")
_LONE_SYMBOLS_RE = re.compile(r"(?<!\S)[/<>\-]+(?!\S)")
_SPACE_BEFORE_PUNCT_RE = re.compile(r"\s+([.,;:!?])")
_REPEATED_PUNCT_RE = re.compile(r"([.,;:])(?:\s*[.,;:])+")
_LEADING_PUNCT_RE = re.compile(r"^[\s.,;:]+")


def clean_report(text: str, *, deid: str = "drop") -> str:
    """Normalise a report (or section) into one line of text.

    ``deid="drop"`` (default) removes de-identification blanks, ``___`` (MIMIC-CXR) and
    ``XXXX`` (IU X-ray), and tidies what they leave (``Dr. XXXX<XXXX>`` -> ``Dr.``, ``at XXXX.``
    -> ``at.``); ``deid="keep"`` leaves them in. Whitespace runs, line breaks included, become
    one space; spaces before punctuation and repeated punctuation are removed.
    """
    if deid not in DEID_POLICIES:
        raise UserError(f"deid must be one of {DEID_POLICIES}, got {deid!r}")
    if not text:
        return ""
    if deid == "drop":
        text = _MIMIC_BLANK_RE.sub(" ", text)
        text = _IU_TOKEN_RE.sub(" ", text)
        text = _EMPTY_BRACKETS_RE.sub(" ", text)
        text = _LONE_SYMBOLS_RE.sub(" ", text)
    text = " ".join(text.split())
    text = _SPACE_BEFORE_PUNCT_RE.sub(r"\1", text)
    text = _REPEATED_PUNCT_RE.sub(r"\1", text)
    text = _LEADING_PUNCT_RE.sub("", text)
    return text.strip()


def compose_target(findings: str, impression: str, target: str) -> str:
    """The training text for `target` ("findings", "impression" or "findings+impression")."""
    if target == "findings":
        return findings
    if target == "impression":
        return impression
    if target == "findings+impression":
        if findings and impression and findings != impression:
            return f"{findings} {impression}"
        return findings or impression
    raise UserError(f"target_section must be one of {TARGET_SECTIONS}, got {target!r}")


def decode_report(data: bytes, name: str) -> str:
    """Report bytes -> str; non-UTF-8 or empty (blank) reports are a DataError naming `name`."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{name}: report is not valid UTF-8 (byte {err.start}: {data[err.start:err.start + 1]!r}); "
            "expected UTF-8 text", path=name, reason="not_utf8",
        ) from None
    if not text.strip():
        raise DataError(f"{name}: report is empty; expected report text", path=name, reason="empty_report")
    return text


def read_report(path) -> str:
    """Read a report file (UTF-8). Missing, empty or non-UTF-8 files raise DataError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: report file not found", path=path, reason="missing_report") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read report file ({err})", path=path, reason="missing_report") from None
    return decode_report(data, str(path))
