"""VQA scores: exact-match accuracy of normalised answers (closed, open, overall) and, for open
answers, token recall (as LLaVA-Med reports it) and token F1 (as MedGemma reports it); the
candidate answers closed questions are scored against by likelihood; and the majority-answer
baselines they are read beside.

Answers are compared after `normalize_answer` (case, punctuation, articles, number words,
yes/no synonyms).
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

_NUMBER_WORDS = {
    w: str(i) for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_ARTICLES = {"a", "an", "the"}
_YES = {"yes", "y", "yeah", "yep", "true"}
_NO = {"no", "n", "nope", "false"}
_PERIOD_RE = re.compile(r"(?<!\d)\.|\.(?!\d)")  # periods that are not decimal points
_PUNCT_RE = re.compile(r"[^\w\s.]")


def normalize_answer(answer) -> str:
    """Canonical form of a VQA answer, for exact-match accuracy.

    Lower-case; apostrophes removed; other punctuation becomes a space (a decimal point between
    digits is kept: "2.5 cm"); articles a/an/the removed; number words zero..twenty become
    digits; whitespace collapsed; yes/y/yeah/yep/true -> "yes" and no/n/nope/false -> "no".
    Non-strings (VQA-RAD has a few integer answers) are formatted with str() first.
    """
    s = str(answer).lower().replace("'", "").replace("\u2019", "")
    s = _PERIOD_RE.sub(" ", s)
    s = _PUNCT_RE.sub(" ", s)
    words = [_NUMBER_WORDS.get(w, w) for w in s.split() if w not in _ARTICLES]
    s = " ".join(words)
    if s in _YES:
        return "yes"
    if s in _NO:
        return "no"
    return s


def _common_words(prediction: str, reference: str) -> tuple[int, int, int]:
    """(words the normalised answers share, counted as multisets; prediction words; reference words)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    return sum((Counter(pred) & Counter(ref)).values()), len(pred), len(ref)


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style F1 of the normalised answers' word multisets (1.0 when both are empty), the
    open-question "token F1" of MedGemma's VQA-RAD / SLAKE figures."""
    common, n_pred, n_ref = _common_words(prediction, reference)
    if not n_pred or not n_ref:
        return float(n_pred == n_ref)
    if common == 0:
        return 0.0
    precision, recall = common / n_pred, common / n_ref
    return 2 * precision * recall / (precision + recall)


def token_recall(prediction: str, reference: str) -> float:
    """Share of the reference answer's words (normalised, as a multiset) that the prediction
    contains: the open-question "recall" of LLaVA-Med's VQA-RAD / SLAKE figures. Extra predicted
    words cost nothing (a long answer is not penalised; read it beside `token_f1`). An empty
    reference scores 1.0 for an empty prediction, else 0.0."""
    common, n_pred, n_ref = _common_words(prediction, reference)
    if not n_ref:
        return float(not n_pred)
    return common / n_ref


def vqa_scores(predictions: list[str], answers: list[str], answer_types: list[str], prefix: str = "vqa") -> dict:
    """`<prefix>_closed_acc`, `_open_acc`, `_overall_acc` (normalised exact match),
    `_open_recall` (mean `token_recall`, LLaVA-Med's open figure) and `_open_f1` (mean
    `token_f1`, MedGemma's) over open questions, with the question counts. A mean over no
    questions is None."""
    if not (len(predictions) == len(answers) == len(answer_types)):
        raise ValueError("predictions, answers and answer_types must have the same length")
    exact = np.array([normalize_answer(p) == normalize_answer(a) for p, a in zip(predictions, answers)], dtype=float)
    kinds = np.array([str(t).lower() for t in answer_types])
    closed, opened = kinds == "closed", kinds == "open"

    def mean(values, where):
        return float(values[where].mean()) if where.any() else None

    f1 = np.array([token_f1(p, a) if t == "open" else np.nan for p, a, t in zip(predictions, answers, kinds)])
    recall = np.array([token_recall(p, a) if t == "open" else np.nan for p, a, t in zip(predictions, answers, kinds)])
    return {
        f"{prefix}_closed_acc": mean(exact, closed),
        f"{prefix}_open_acc": mean(exact, opened),
        f"{prefix}_overall_acc": mean(exact, np.ones(len(exact), dtype=bool)),
        f"{prefix}_open_recall": mean(recall, opened),
        f"{prefix}_open_f1": mean(f1, opened),
        f"{prefix}_num_closed": int(closed.sum()),
        f"{prefix}_num_open": int(opened.sum()),
    }


def majority_answers(train_questions: list[str], train_answers: list[str], train_types: list[str],
                     questions: list[str], types: list[str]) -> dict[str, list[str]]:
    """Two answer-only baselines (they never look at the image):

    - `majority`: the most frequent training answer of the question's answer type;
    - `question_majority`: the most frequent training answer to the same question text
      (normalised), falling back to `majority` for a question never seen in training.
    """
    by_type: dict[str, Counter] = {}
    by_question: dict[str, Counter] = {}
    for q, a, t in zip(train_questions, train_answers, train_types):
        by_type.setdefault(str(t).lower(), Counter())[normalize_answer(a)] += 1
        by_question.setdefault(normalize_answer(q), Counter())[normalize_answer(a)] += 1
    overall = Counter()
    for counts in by_type.values():
        overall.update(counts)
    fallback = overall.most_common(1)[0][0] if overall else ""

    def typed(t):
        counts = by_type.get(str(t).lower())
        return counts.most_common(1)[0][0] if counts else fallback

    majority = [typed(t) for t in types]
    question_majority = [by_question[normalize_answer(q)].most_common(1)[0][0]
                         if normalize_answer(q) in by_question else typed(t) for q, t in zip(questions, types)]
    return {"majority": majority, "question_majority": question_majority}


def closed_candidates(train_answers: list[str], train_types: list[str], min_count: int = 2) -> list[str]:
    """The answers a closed question is scored against by likelihood: every normalised answer
    given to at least `min_count` closed training questions (yes and no, and e.g. "left",
    "axial"), most frequent first, each spelt as it was most often written in training (the
    text the model was trained to write)."""
    counts: Counter = Counter()
    spellings: dict[str, Counter] = {}
    for answer, kind in zip(train_answers, train_types):
        if str(kind).lower() != "closed" or not normalize_answer(answer):
            continue
        key = normalize_answer(answer)
        counts[key] += 1
        spellings.setdefault(key, Counter())[str(answer).strip()] += 1
    return [spellings[key].most_common(1)[0][0] for key, n in counts.most_common() if n >= min_count]
