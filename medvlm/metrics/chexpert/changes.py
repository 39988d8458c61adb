"""Interval change against the prior study, per CheXpert observation, and a score for it.

`change_labels(text)` maps each observation a report states a change for to one of
`CHANGE_KINDS`: "new", "worse", "better", "unchanged", "resolved" ("Interval increase in the left
effusion" -> {"Pleural Effusion": "worse"}). It reuses the labeler (`labeler`) unchanged: its
clauses, its mentions and its negation / uncertainty cues, and adds change cues (`CHANGE_CUES`),
matched on the tokens no mention uses.

- Which cue governs a mention: one inside it ("the heart remains enlarged"); else a predicate
  after it, across no finite verb ("Cardiomegaly is unchanged", "The previously seen effusion
  has resolved"); else the nearest cue before it, under the labeler's scope rules for a cue
  before a mention ("Unchanged cardiomegaly and effusion" covers both; "Stable cardiomegaly with
  small effusion" does not reach the effusion); else a bare word after it that governs nothing
  after itself, right after the mention or a comma ("left effusion, new since the prior").
  "Increased" before a mention is a density, not a change ("increased opacity"), unless
  "interval increased"; "more prominent in the bases", "right larger than left" compare places.
- A negation or uncertainty cue between a change cue and a mention stops the change cue
  ("Increasing opacity, possibly pneumonia": the pneumonia has no change).
- A mention that the labeler's cues negate has no change ("No new effusion"), except where the
  negation is itself the change ("no change in", "resolution of", "has resolved", "no longer
  seen": these are change cues, so they do not count as negations here), and a negated mention
  that "previously seen" / "prior" names has resolved ("The previously seen nodule is not seen").
- Per report and observation, the kinds of several mentions aggregate as new > worse > better >
  resolved > unchanged. No Finding has no change.

`change_accuracy` scores generated reports on the (report, observation) pairs whose reference
states a change; `change_counts` gives its per-report counts, for the bootstrap. Change labels
are cached per report text, so scoring the same references against several baselines labels
them once.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ...observations import CHEXPERT_OBSERVATIONS
from .labeler import NEGATIVE, NO_FINDING, Span, _bounded, _Clause, _classify, _find_cues, _find_mentions, \
    _in_scope, split_clauses

CHANGE_KINDS = ("new", "worse", "better", "unchanged", "resolved")
_PRIORITY = {"new": 0, "worse": 1, "better": 2, "resolved": 3, "unchanged": 4}
_PRIOR = "prior"  # "previously seen": a change only when the mention is negated (then resolved)

# ================================================================== change cues
# (pattern, kind, reach forward, reach backward): patterns over a clause's tokens, as the labeler's
# cues; matched in this order, a token used by one cue is not reused. Reach 0: not that way.

_BE = r"(?:(?:is|are|was|were|has been|have been|has|have|remains|remain|appears|appear|seems|looks) )?"
_ADV = (r"(?:(?:again|now|also|still|essentially|overall|grossly|largely|relatively|otherwise|slightly|mildly|"
        r"minimally|somewhat|markedly|significantly|substantially|considerably|further|all|both|each|much|"
        r"clearly|definitely|perhaps|possibly|probably|likely) )*")
_DEGREE = r"(?:(?:interval|slight|slightly|mild|mildly|minimal|significant|marked|further|continued|small) )*"
_AMOUNT = r"(?: the)?(?: (?:size|amount|extent|degree|volume|conspicuity|prominence|density|severity) of)?"
_NOT_SIDES = r"(?! than(?: the| on the| in the)? (?:left|right|contralateral|other))"  # "right larger than left"
_PLACE = (r"(?! (?:in|on|at|within|along|toward|towards|than|inferiorly|superiorly|medially|laterally|centrally|"
          r"peripherally|basilar|apically)(?!\S))")  # "more prominent in the bases" compares places, not studies
_MORE = r"(?:prominent|conspicuous|pronounced|extensive|confluent|dense|apparent|evident|marked|visible|opaque|severe)"
_SEEN = r"(?:seen|identified|visualized|visible|appreciated|present|evident|demonstrated|noted|detected|apparent)"

CHANGE_CUES: list[tuple[str, str, int, int]] = [
    (r"(?:(?:is|are|was|were) )?not (?:seen|visualized|present|evident|identified|apparent|visible) (?:on|in) "
     r"(?:the )?(?:prior|previous|earlier)", "new", 0, 12),
    (r"no (?:significant |appreciable |substantial |interval |definite |major |gross |marked |further |apparent |"
     r"radiographic )*(?:change|changes|progression|increase|decrease|worsening|improvement|enlargement|growth|"
     r"difference)(?: in| of)?" + _AMOUNT, "unchanged", 8, 12),
    (r"without (?:significant |appreciable |substantial |interval )*(?:change|changes)", "unchanged", 8, 12),
    (_BE + _ADV + r"not (?:significantly |substantially |appreciably |markedly |much |been )?"
     r"(?:changed|increased|decreased|worsened|improved)", "unchanged", 0, 12),
    (r"(?:partial|partially|incomplete|near|nearly|almost|near complete|nearly complete|almost complete) "
     r"(?:resolution|clearing) of|" + _BE + r"(?:since )?(?:partially|nearly|almost|mostly|largely|incompletely) "
     r"(?:resolved|cleared)|" + _BE + _ADV + r"(?:resolving|clearing(?: of)?)", "better", 8, 12),
    (r"(?:interval |complete |total )?(?:resolution|removal|withdrawal) of", "resolved", 8, 0),
    (_BE + r"(?:since |subsequently |completely |now |been )*(?:resolved|cleared|disappeared|removed|gone)|" +
     _BE + r"(?:now )?no longer(?: (?:clearly |well )?" + _SEEN + ")?", "resolved", 8, 12),
    (_DEGREE + r"increase(?:s)? in" + _AMOUNT + "|progression(?: of)?", "worse", 8, 0),
    (_DEGREE + r"(?:decrease|reduction|improvement|regression)(?:s)? (?:in|of)" + _AMOUNT, "better", 8, 0),
    (r"(?:interval )?(?:development|placement|insertion) of|interval appearance of|newly (?:seen|noted|developed|"
     r"demonstrated|apparent|visible|identified|placed|inserted)|" + _BE + _ADV +
     r"(?:new|newly|developing|developed|appeared|been placed|been inserted)", "new", 8, 12),
    # "increased opacity" states a density, not a change: "increased" before a mention needs "interval"
    (r"interval increased|(?:has |have |had )(?:been )?" + _ADV + r"increased|(?:is |are )" + _ADV +
     r"increased in (?:size|extent|number)", "worse", 8, 12),
    (r"increased", "worse", 0, 12),
    (_BE + _ADV + r"(?:increasing|enlarging|larger" + _NOT_SIDES + r"|worse" + _PLACE + r"|worsened|worsening|"
     r"progressed|progressing|progressive|grown|more " + _MORE + _PLACE + ")", "worse", 8, 12),
    (_BE + _ADV + r"(?:decreased|decreasing|improved|improving|smaller" + _NOT_SIDES + r"|diminished|diminishing|"
     r"reduced|regressed|regressing|less " + _MORE + _PLACE + ")", "better", 8, 12),
    (_BE + _ADV + r"(?:unchanged|stable|stably|persistent|persistently|persists|persist|persisting|remains|"
     r"remain|constant|similar|redemonstrated|again " + _SEEN + "|again)|redemonstration of", "unchanged", 8, 12),
    (r"previously (?:seen|noted|described|demonstrated|identified|visualized|present|reported)|previous|prior",
     _PRIOR, 8, 0),
]
_CHANGE_RES = [(_bounded(p), kind, forward, backward) for p, kind, forward, backward in CHANGE_CUES]


_INNER = {"remains", "remain", "again", "still", "persistently", "stably"}  # change words a mention may span
_AFTER_PREDICATE = {"from", "since", "compared", "to", "in", "relative", "when", "as", "over", "on", "at", "and",
                    "versus", "vs", "with", "or", ","}
_VERBS = {"is", "are", "was", "were", "has", "have", "had", "remains", "remain", "appears", "appear", "seems",
          "looks", "persists", "persist"}


@dataclass
class _Change:
    start: int
    end: int
    kind: str
    forward: int
    backward: int
    verb: bool  # starts with a verb ("is unchanged"): a predicate, which governs its subject first

    def as_cue(self, direction: str) -> Span:
        """The labeler's view of this cue, for its scope rules."""
        return Span(self.start, self.end, self.kind, direction=direction,
                    reach=self.forward if direction == "pre" else self.backward)


def _find_changes(tokens: list[str], mentions: list[Span]) -> list[_Change]:
    clause = _Clause(tokens)
    for mention in mentions:
        clause.claim(mention.start, mention.end)
        for i in range(mention.start, mention.end):  # "the heart remains enlarged": one size mention
            clause.claimed[i] = clause.claimed[i] and tokens[i] not in _INNER
    found = []
    for regex, kind, forward, backward in _CHANGE_RES:
        for start, end in clause.find(regex):
            if clause.free(start, end):
                clause.claim(start, end)
                found.append(_Change(start, end, kind, forward, backward, tokens[start] in _VERBS))
    return found


def _between(cues: list[Span], start: int, end: int) -> bool:
    return any(c.start >= start and c.end <= end for c in cues)


def _forward(change: _Change, mention: Span, tokens, mentions, stops) -> bool:
    return (change.forward > 0 and change.end <= mention.start and not _between(stops, change.end, mention.start)
            and _in_scope(change.as_cue("pre"), mention, tokens, mentions))


def _backward(change: _Change, mention: Span, tokens, mentions, stops) -> bool:
    if change.backward == 0 or mention.end > change.start or _between(stops, mention.end, change.start):
        return False
    if not change.verb:  # a bare word governs back only right after the mention or a comma ("X, unchanged"),
        if change.start > mention.end and tokens[change.start - 1] != ",":  # at the clause end or before "from"
            return False
        if change.end < len(tokens) and tokens[change.end] not in _AFTER_PREDICATE:
            return False  # "cardiomegaly, stable mediastinal contours": "stable" describes what follows
    return _in_scope(change.as_cue("post"), mention, tokens, mentions)


def _assign(mentions: list[Span], changes: list[_Change], tokens, stops) -> dict[int, _Change]:
    """The change cue governing each mention (keyed by id): one inside it ("the heart remains
    enlarged"); else, in three passes, predicates govern their subjects ("X is unchanged"); cues
    before a mention ("unchanged X"; "previously seen" only where no other cue reaches); bare
    words after a mention ("X, unchanged")."""
    context = (tokens, mentions, stops)
    chosen = {id(m): c for m in mentions for c in changes if m.start <= c.start and c.end <= m.end}
    for mention in [m for m in mentions if id(m) not in chosen]:
        after = [c for c in changes if c.verb and _backward(c, mention, *context)]
        if after:
            chosen[id(mention)] = min(after, key=lambda c: c.start)
    used = {id(c) for c in chosen.values()}
    for mention in [m for m in mentions if id(m) not in chosen]:
        before = [c for c in changes if id(c) not in used and _forward(c, mention, *context)]
        real = [c for c in before if c.kind != _PRIOR] or before
        if real:
            chosen[id(mention)] = max(real, key=lambda c: c.end)
    used = {id(c) for c in chosen.values()}
    for mention in [m for m in mentions if id(m) not in chosen or chosen[id(m)].kind == _PRIOR]:
        after = [c for c in changes if not c.verb and id(c) not in used and _backward(c, mention, *context)]
        if after:
            chosen[id(mention)] = min(after, key=lambda c: c.start)
    return chosen


def _clause_changes(tokens: list[str]) -> list[tuple[str, str]]:
    """(observation, kind) for every mention of a clause that a change cue governs."""
    clause = _Clause(tokens)
    cues = _find_cues(clause)
    mentions = _find_mentions(clause)
    changes = _find_changes(tokens, mentions) if mentions else []
    if not changes:
        return []
    overlaps = lambda cue: any(cue.start < c.end and c.start < cue.end for c in changes)  # noqa: E731
    cues = [c for c in cues if not overlaps(c)]  # "no change in", "has resolved": changes, not negations
    chosen = _assign(mentions, changes, tokens, [c for c in cues if c.kind in ("neg", "unc", "weak", "lean")])
    found = []
    for mention in mentions:
        change = chosen.get(id(mention))
        if change is None:
            continue
        negated = _classify(mention, cues, tokens, mentions) == NEGATIVE
        kind = ("resolved" if negated else None) if change.kind == _PRIOR else change.kind
        if kind is None or (negated and kind != "resolved"):
            continue
        found.extend((observation, kind) for observation in mention.observations if observation != NO_FINDING)
    return found


@functools.lru_cache(maxsize=1 << 16)
def _report_changes(text: str) -> tuple[tuple[str, str], ...]:
    kinds: dict[str, str] = {}
    for tokens in split_clauses(text):
        for observation, kind in _clause_changes(tokens):
            if observation not in kinds or _PRIORITY[kind] < _PRIORITY[kinds[observation]]:
                kinds[observation] = kind
    return tuple(sorted(kinds.items(), key=lambda item: CHEXPERT_OBSERVATIONS.index(item[0])))


def change_labels(text: str | None) -> dict[str, str]:
    """{observation: kind} for each CheXpert observation the report states a change for, kind
    one of `CHANGE_KINDS` (see the module docstring); {} for a report that states none."""
    return dict(_report_changes(str(text or "")))


# ================================================================== the score

def change_counts(ref_changes: list[dict], gen_changes: list[dict]) -> np.ndarray:
    """Per report and kind (`CHANGE_KINDS` order): the reference's (observation, kind) pairs, and
    how many of them the hypothesis states the same. int array (N, 5, 2)."""
    if len(ref_changes) != len(gen_changes):
        raise ValueError(f"{len(ref_changes)} references but {len(gen_changes)} hypotheses")
    counts = np.zeros((len(ref_changes), len(CHANGE_KINDS), 2), dtype=np.int64)
    for i, (ref, gen) in enumerate(zip(ref_changes, gen_changes)):
        for observation, kind in ref.items():
            k = CHANGE_KINDS.index(kind)
            counts[i, k, 0] += 1
            counts[i, k, 1] += gen.get(observation) == kind
    return counts


def change_accuracy_from_counts(counts: np.ndarray) -> dict:
    """`change_accuracy`'s scores from (5, 2) counts summed over reports."""
    total, hits = counts.sum(axis=0)
    metrics = {"change_accuracy": float(hits / total) if total else math.nan, "change_count": int(total)}
    for kind, (n, matched) in zip(CHANGE_KINDS, counts):
        metrics[f"change_accuracy.{kind}"] = float(matched / n) if n else math.nan
    return metrics


def change_accuracy(references, hypotheses) -> dict:
    """How often a generated report states the reference's interval changes.

    Over every (report, observation) pair where the reference states a change (`change_labels`),
    the share where the hypothesis states the same kind for that observation: ``change_accuracy``;
    the same per kind of the reference, ``change_accuracy.<kind>`` for the five `CHANGE_KINDS`
    (NaN where the kind never occurs in the references); ``change_count``, the number of pairs.
    ``change_accuracy`` is NaN when no reference states a change. Changes a hypothesis states
    that its reference does not are not penalised: this is a recall of changes.
    """
    counts = change_counts([change_labels(t) for t in references], [change_labels(t) for t in hypotheses])
    return change_accuracy_from_counts(counts.sum(axis=0))
