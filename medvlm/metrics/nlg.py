"""Natural-language-generation metrics for generated reports: BLEU-1..4, METEOR, ROUGE-L, CIDEr-D.

The scores are pycocoevalcap's own scorer classes (``Bleu``, ``Meteor``, ``Rouge``, ``Cider``;
pycocoevalcap's ``Cider`` is CIDEr-D: clipped n-gram tf-idf cosine with a Gaussian length
penalty, sigma 6), called the way report-generation papers after R2Gen call them: one reference
and one hypothesis per study, corpus BLEU with the 'closest' reference length, ROUGE-L with
beta 1.2, METEOR 1.5 with ``-l en -norm``.

Text convention (``tokenize_report``): lower-case, punctuation removed, whitespace-tokenised,
in Python, so no PTBTokenizer and no Java is needed for it. R2Gen additionally keeps " . "
between sentences as a token; we do not (periods are punctuation), which gives slightly lower
BLEU than R2Gen-style tables that count periods as matched words. Say which convention a table
uses when comparing with published numbers.

Empty strings: with pycocoevalcap 1.2 an empty hypothesis does not crash any scorer; it simply
scores 0 for that item (BLEU counts 0 words, ROUGE-L finds no common subsequence, CIDEr's vector
is empty, METEOR returns 0). We therefore pass empty hypotheses through unchanged rather than
substituting a token, so the counts stay honest. The one case pycocoevalcap cannot score is
CIDEr when *every* reference is empty (no document frequencies; it raises); CIDEr is then
reported as None with a logged reason.

METEOR needs Java. It runs when ``shutil.which("java")`` finds it; otherwise, or when the Java
subprocess fails or exceeds its timeout, ``meteor`` is None (never 0) and the reason is logged.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge

from ..errors import UserError

logger = logging.getLogger(__name__)

NLG_KEYS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider")

METEOR_TIMEOUT_S = 300.0  # per line read from the METEOR process; a stuck JVM becomes None

_APOSTROPHES = re.compile(r"['\u2019`]")
_NON_WORD = re.compile(r"[^a-z0-9\s]+")
_SPACES = re.compile(r"\s+")


def tokenize_report(text: str | None) -> str:
    """Lower-case, drop apostrophes ("heart's" -> "hearts"), turn every other non-alphanumeric
    character into a space, collapse whitespace. ``None`` counts as the empty report."""
    if not text:
        return ""
    text = _APOSTROPHES.sub("", str(text).lower())
    text = _NON_WORD.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def _as_coco(references: list[str], hypotheses: list[str]) -> tuple[dict, dict]:
    """Tokenised inputs in pycocoevalcap's layout: {index: [sentence]}."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("no reports to score")
    gts = {i: [tokenize_report(r)] for i, r in enumerate(references)}
    res = {i: [tokenize_report(h)] for i, h in enumerate(hypotheses)}
    return gts, res


def bleu_scores(gts: dict, res: dict) -> list[float]:
    """Corpus BLEU-1..4 exactly as pycocoevalcap computes it ('closest' reference length)."""
    score, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return [float(s) for s in score]


def rouge_l_per_item(gts: dict, res: dict) -> list[float]:
    """ROUGE-L F (beta 1.2) per item; the corpus score is their mean."""
    _, scores = Rouge().compute_score(gts, res)
    return [float(s) for s in scores]


def cider_per_item(gts: dict, res: dict) -> list[float] | None:
    """CIDEr-D per item with document frequencies from all references given; None when every
    reference is empty (pycocoevalcap cannot build document frequencies then)."""
    if not any(refs[0] for refs in gts.values()):
        logger.warning("CIDEr not computed: every reference report is empty")
        return None
    _, scores = Cider().compute_score(gts, res)
    return [float(s) for s in scores]


# ------------------------------------------------------------------ METEOR (Java, guarded)

def meteor_available() -> bool:
    return shutil.which("java") is not None


class MeteorProcess:
    """pycocoevalcap's METEOR 1.5 jar with its exact command line, but guarded: every read has a
    timeout, the JVM is killed on failure, and scoring can be split into per-item statistics
    (slow: alignment, done once) and aggregation of any multiset of them (fast), which the
    bootstrap uses for exact resampled METEOR."""

    def __init__(self, timeout_s: float | None = None):
        import pycocoevalcap.meteor.meteor as coco_meteor

        java = shutil.which("java")
        if java is None:
            raise RuntimeError("java not found on PATH")
        jar_dir = os.path.dirname(os.path.abspath(coco_meteor.__file__))
        cmd = [java, "-jar", "-Xmx2G", coco_meteor.METEOR_JAR, "-", "-", "-stdio", "-l", "en", "-norm"]
        self.timeout_s = METEOR_TIMEOUT_S if timeout_s is None else timeout_s
        self._stderr = tempfile.TemporaryFile()  # a file, not a pipe: a chatty JVM cannot block on it
        self._proc = subprocess.Popen(cmd, cwd=jar_dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._stderr)
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self._proc.stdout:
            self._lines.put(line.decode("utf-8", "replace").strip())
        self._lines.put(None)  # EOF

    def _ask(self, line: str, n_answers: int = 1) -> list[str]:
        self._proc.stdin.write((line + "\n").encode("utf-8"))
        self._proc.stdin.flush()
        answers = []
        for _ in range(n_answers):
            try:
                answer = self._lines.get(timeout=self.timeout_s)
            except queue.Empty:
                raise TimeoutError(f"METEOR gave no answer within {self.timeout_s:.0f} s") from None
            if answer is None:
                raise RuntimeError(f"METEOR process exited (code {self._proc.wait()}): {self._stderr_tail()}")
            answers.append(answer)
        return answers

    def _stderr_tail(self, limit: int = 500) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace").strip()[-limit:] or "(no stderr)"

    def statistics(self, reference: str, hypothesis: str) -> str:
        """The alignment statistics line for one item (both sides already tokenised)."""
        hypothesis = hypothesis.replace("|||", "").replace("  ", " ")
        return self._ask(f"SCORE ||| {reference} ||| {hypothesis}")[0]

    def aggregate(self, stats: list[str]) -> tuple[float, list[float]]:
        """Corpus METEOR and per-item scores from statistics lines (METEOR's own aggregation)."""
        answers = self._ask("EVAL ||| " + " ||| ".join(stats), n_answers=len(stats) + 1)
        return float(answers[-1]), [float(a) for a in answers[:-1]]

    def close(self):
        if self._proc.poll() is None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            self._proc.kill()
            self._proc.wait()
        self._stderr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def meteor_statistics(gts: dict, res: dict) -> tuple[float, list[str]] | None:
    """(corpus METEOR, per-item statistics lines), or None (logged) when Java is missing or the
    subprocess fails. Inputs are pycocoevalcap-layout dicts of tokenised text."""
    if not meteor_available():
        logger.warning("METEOR unavailable: java not found on PATH (reported as None)")
        return None
    try:
        with MeteorProcess() as meteor:
            stats = [meteor.statistics(gts[i][0], res[i][0]) for i in gts]
            score, _ = meteor.aggregate(stats)
        return score, stats
    except Exception as error:  # a broken JVM must not take the other metrics down with it
        logger.warning("METEOR failed (reported as None): %s", error)
        return None


def meteor_score(gts: dict, res: dict) -> float | None:
    result = meteor_statistics(gts, res)
    return None if result is None else result[0]


# ------------------------------------------------------------------ the public entry points

def compute_bleu(references: list[str], hypotheses: list[str]) -> dict:
    """{"bleu_1".."bleu_4"}: corpus BLEU as in `compute_nlg`."""
    return dict(zip(("bleu_1", "bleu_2", "bleu_3", "bleu_4"), bleu_scores(*_as_coco(references, hypotheses))))


def compute_rouge_l(references: list[str], hypotheses: list[str]) -> dict:
    """{"rouge_l"}: mean per-report ROUGE-L F (beta 1.2)."""
    scores = rouge_l_per_item(*_as_coco(references, hypotheses))
    return {"rouge_l": sum(scores) / len(scores)}


def compute_cider(references: list[str], hypotheses: list[str]) -> dict:
    """{"cider"}: CIDEr-D with document frequencies from these references (None if all empty)."""
    scores = cider_per_item(*_as_coco(references, hypotheses))
    return {"cider": None if scores is None else sum(scores) / len(scores)}


def compute_meteor(references: list[str], hypotheses: list[str]) -> dict:
    """{"meteor"}: METEOR 1.5, or None (logged) without Java or on a METEOR failure."""
    return {"meteor": meteor_score(*_as_coco(references, hypotheses))}


def compute_nlg(references: list[str], hypotheses: list[str], include_meteor: bool = True) -> dict:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr-D of ``hypotheses`` against ``references`` (one
    reference per hypothesis), tokenised by ``tokenize_report``.

    Returns {"bleu_1".."bleu_4", "meteor", "rouge_l", "cider"}: floats, or None where a metric
    could not be computed (``meteor`` without Java, on a METEOR failure, or when
    ``include_meteor=False``; ``cider`` when every reference is empty).
    """
    gts, res = _as_coco(references, hypotheses)
    bleu = bleu_scores(gts, res)
    rouge = rouge_l_per_item(gts, res)
    cider = cider_per_item(gts, res)
    return {
        "bleu_1": bleu[0],
        "bleu_2": bleu[1],
        "bleu_3": bleu[2],
        "bleu_4": bleu[3],
        "meteor": meteor_score(gts, res) if include_meteor else None,
        "rouge_l": sum(rouge) / len(rouge),
        "cider": None if cider is None else sum(cider) / len(cider),
    }


def evaluate_module_path(name: str) -> str:
    """Directory of the `evaluate` metric shipped with medvlm, for ``evaluate.load(path)``
    (offline: a local directory is never fetched). Names: bleu, meteor, rouge_l, cider, nlg,
    clinical_efficacy."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "evaluate_modules")
    path = os.path.join(root, name)
    if not os.path.isfile(os.path.join(path, f"{name}.py")):
        names = sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, f"{d}.py")))
        raise UserError(f"no evaluate module {name!r}; shipped: {', '.join(names)}")
    return path
