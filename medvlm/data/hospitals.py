"""Synthetic hospitals: the built-in synthetic dataset split into 2-6 simulated sites that differ
the way real hospitals do, for federated learning.

Options (``data.options`` of ``data.dataset: synthetic``, checked by `check_options`):

- ``hospitals``: 0 (the plain dataset, unchanged) or 2..6, the number of sites; the sites are the
  first ones of `SITE_ORDER` (3: icu, outpatient, general; 4: + trauma; ...).
- ``hospital``: the index of the site whose studies a split holds, or None for all sites pooled.
  Pooled or not, every record is drawn in its site's style and carries ``"site"`` (its name).
- ``hospital_skew``: alpha > 0, the Dirichlet concentration of the label skew (default 0.5):
  small = sites very different, large = each class spread over the sites in the profile's mean
  proportions (the profiles' tilt only, no random extra skew).

How studies are split. A study keeps its place in the plain dataset (the same index ranges make
train / validation / test, so splits stay disjoint, and the same study_id); it only gains a site.
Its *class* is "normal" or, among its finding kinds, the one whose tilt (max / min) varies most over the
sites in use (its most site-characteristic kind). The partition is the label-skew Dirichlet one
(Hsu et al. 2019; Wang et al. 2020): for each class c, site proportions
``p_c ~ Dirichlet(alpha * K * a_c)`` with K sites and ``a_c[s] ∝ size[s] * tilt[s][c]``
normalised to sum 1 (so uniform affinities give the usual Dir(alpha, ..., alpha)), drawn once per
(seed, K, alpha) from ``default_rng([seed, 7301, K])`` and shared by all splits. The draw is
redrawn (the same rng's next draws) until it is plausible: every site expects at least
MIN_SITE_SHARE = 5% of the studies (from the exact class frequencies, `class_frequencies`: a
small site is the point, an empty one cannot be trained or tested), and each class is most
enriched in a site whose tilt for it is >= 1. Without that a small alpha often sends a class to
a site that is averse to it (seed 0, 4 sites: 46% of "outpatient" studies had a pneumothorax,
4% of "trauma" ones), and the site names would mean nothing. A study then goes to site
``searchsorted(cumsum(p_class), u)`` with ``u`` from ``default_rng([seed, index, 7302])``. The
site of a study therefore does not depend on which `hospital` is asked for, nor on the split.

Site profiles. `tilt` is each class's affinity relative to the general hospital (1 = the base
mix; devices are tubes, lines, pacemakers); `size` weights how many studies a site gets before
the tilt (unequal on purpose: local-only training on a small site should be weak).

============  =====  ======  ========  ========  =======  ======  ========  =====  =======  =======
site          size   normal  effusion  cardiom.  opacity  nodule  pneumoth  edema  atelect  devices
============  =====  ======  ========  ========  =======  ======  ========  =====  =======  =======
icu           1.0    0.3     3         1         1.5      0.3     1         3      3        5
outpatient    0.35   2.5     0.3       0.6       0.5      3       0.2       0.2    0.4      0.1
general       1.6    1       1         1         1        1       1         1      1        1
trauma        0.5    0.6     1         0.4       2.5      0.5     5         0.5    1.5      1.5
cardiac       0.7    0.5     2         5         0.6      0.6     0.4       3      0.8      2
community     0.3    1.5     0.8       1         1.5      1.2     0.7       0.8    0.8      0.5
============  =====  ======  ========  ========  =======  ======  ========  =====  =======  =======

Image appearance per site (`Look`): exposure ``x ** gamma``, then contrast about mid-grey and a
brightness offset, an older detector's resolution (resampled to size / downsample and back),
then Gaussian noise (sd in grey levels, from ``default_rng([seed, index, 7303, image_size])``).
Every image of a record is restyled (PA, lateral, the prior's); they stay uint8 of the same shape.

=========== ===== ======== ========== ===== ========== ======================================
site        gamma contrast brightness noise downsample why
=========== ===== ======== ========== ===== ========== ======================================
icu         0.8   0.8      +0.06      7     1.5        portable AP: washed out, grainy plates
outpatient  1.0   1.05     0          1.5   1          modern PA detector
general     1.0   1.0      0          3     1          the base look, a little grain
trauma      1.3   1.0      -0.05      5     1          supine films, under-exposed
cardiac     1.1   1.1      0          2.5   1          high contrast
community   0.9   0.9      +0.03      9     2.5        an old, low-resolution detector
=========== ===== ======== ========== ===== ========== ======================================

Report style per site (`Style`): a header sentence, section order, and phrase rewrites that
change the wording but not the findings: the CheXpert-style labeler
(`medvlm.metrics.chexpert.label_report`) reads a restyled report exactly as the original, and
the change extractor reads the same changes (both checked by tests/test_hospitals.py).

===========  =================================  ========  ==================================================
site         header                             order     wording
===========  =================================  ========  ==================================================
icu          PORTABLE AP CHEST RADIOGRAPH.      F, I      terse: "There is a small ..." -> "Small ...",
                                                          "There is no" -> "No", "is seen" -> "is noted",
                                                          "No acute intrathoracic process."
outpatient   PA CHEST. / PA AND LATERAL CHEST.  F, I      verbose: "There is a" -> "Evidence of a", "There is
                                                          no" -> "No evidence of", "Normal heart size.", its
                                                          own normal impressions
general      (none)                             F, I      the plain wording (text identical to the plain set)
trauma       SUPINE AP CHEST, TRAUMA BAY.       I, F      "No evidence of pneumothorax.", "clear bilaterally"
cardiac      CHEST RADIOGRAPH, CARDIOLOGY.      F, I      the plain wording
community    CHEST X-RAY.                       F, I      terse, in capitals (an old reporting system)
===========  =================================  ========  ==================================================

The header is words only: the record's `view` stays "PA" (the film is the plain one, restyled).
Labels, meta, masks and changes are the plain study's.

Cost: a split is generated whole (every site's studies) once per process and kept in a small
cache (`_pooled_split`, up to 6 splits: memory as the records themselves), so loading each
site's split in turn generates it once; the records handed out are copies whose arrays are
shared and read-only.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image

from medvlm.errors import UserError

from .synthetic import (
    DEVICE_RATE_WITH_PATHOLOGY,
    FINDINGS,
    MAX_FINDINGS_PER_STUDY,
    PATHOLOGY_RATES,
    synthetic_records,
)

MAX_HOSPITALS = 6
DEFAULT_SKEW = 0.5
# Every site is expected to get at least this share of a split's studies (see `site_proportions`).
MIN_SITE_SHARE, MAX_DRAWS = 0.05, 1000
_DIRICHLET_STREAM, _SITE_STREAM, _NOISE_STREAM = 7301, 7302, 7303

# A study's class: "normal" or one of its finding kinds (the two sides and the devices grouped).
CLASSES = ("normal", "pleural_effusion", "cardiomegaly", "lung_opacity", "nodule", "pneumothorax", "edema",
           "atelectasis", "support_devices")
_DEVICES = {"endotracheal_tube", "central_venous_catheter", "pacemaker"}
_KIND_OF_NAME = {name: "support_devices" if name in _DEVICES else name.removesuffix("_left").removesuffix("_right")
                 for name in FINDINGS}


@dataclass(frozen=True)
class Look:
    """A site's image appearance (see the module docstring's table)."""

    gamma: float = 1.0
    contrast: float = 1.0
    brightness: float = 0.0  # added in [0, 1] units
    noise: float = 0.0  # sd in grey levels of 255
    downsample: float = 1.0  # 1 = full resolution


@dataclass(frozen=True)
class Style:
    """A site's report wording: `header` goes before the sections ({views} -> "PA" or "PA AND
    LATERAL"); `rewrites` are (regex, replacement) applied in order to each section."""

    header: str = ""
    impression_first: bool = False
    rewrites: tuple[tuple[str, str], ...] = ()
    upper: bool = False


@dataclass(frozen=True)
class SiteProfile:
    name: str
    size: float
    tilt: dict
    look: Look
    style: Style


def _tilt(normal, effusion, cardiomegaly, opacity, nodule, pneumothorax, edema, atelectasis, devices) -> dict:
    return dict(zip(CLASSES, (normal, effusion, cardiomegaly, opacity, nodule, pneumothorax, edema, atelectasis,
                              devices)))


# Rewrites are checked against the labeler: sentence-initial "There is/are" only, and normal
# phrasings the labeler reads as the originals (no new observation words, no dropped negation).
_TERSE = ((r"(^|\. )There (?:is|are) (?:an? )?(?!no )", r"\1"), (r"(^|\. )There is no ", r"\1No "),
          (r" is seen", " is noted"), (r"(^|\. )The lungs are clear\.", r"\1Lungs are clear."),
          (r"No acute cardiopulmonary process\.", "No acute intrathoracic process."))
_VERBOSE = ((r"(^|\. )There is (an? )(?!no )", r"\1Evidence of \2"), (r"(^|\. )There is no ", r"\1No evidence of "),
            (r"(^|\. )The lungs are clear\.", r"\1The lungs are well expanded and clear."),
            (r"(^|\. )Heart size is normal\.", r"\1Normal heart size."),
            (r"No acute cardiopulmonary (?:process|abnormality)\.", "No radiographic evidence of acute disease."),
            (r"Normal chest radiograph\.", "Normal radiographic examination of the chest."))
_TRAUMA = ((r"(^|\. )No pneumothorax\.", r"\1No evidence of pneumothorax."),
           (r"(^|\. )The lungs are clear\.", r"\1The lungs are clear bilaterally."))

SITE_ORDER = ("icu", "outpatient", "general", "trauma", "cardiac", "community")
PROFILES = {
    "icu": SiteProfile("icu", 1.0, _tilt(0.3, 3, 1, 1.5, 0.3, 1, 3, 3, 5),
                       Look(0.8, 0.8, 0.06, 7.0, 1.5), Style("PORTABLE AP CHEST RADIOGRAPH.", False, _TERSE)),
    "outpatient": SiteProfile("outpatient", 0.35, _tilt(2.5, 0.3, 0.6, 0.5, 3, 0.2, 0.2, 0.4, 0.1),
                              Look(1.0, 1.05, 0.0, 1.5), Style("{views} CHEST.", False, _VERBOSE)),
    "general": SiteProfile("general", 1.6, _tilt(1, 1, 1, 1, 1, 1, 1, 1, 1), Look(noise=3.0), Style()),
    "trauma": SiteProfile("trauma", 0.5, _tilt(0.6, 1, 0.4, 2.5, 0.5, 5, 0.5, 1.5, 1.5),
                          Look(1.3, 1.0, -0.05, 5.0), Style("SUPINE AP CHEST, TRAUMA BAY.", True, _TRAUMA)),
    "cardiac": SiteProfile("cardiac", 0.7, _tilt(0.5, 2, 5, 0.6, 0.6, 0.4, 3, 0.8, 2),
                           Look(1.1, 1.1, 0.0, 2.5), Style("CHEST RADIOGRAPH, CARDIOLOGY.", False, ())),
    "community": SiteProfile("community", 0.3, _tilt(1.5, 0.8, 1, 1.5, 1.2, 0.7, 0.8, 0.8, 0.5),
                             Look(0.9, 0.9, 0.03, 9.0, 2.5), Style("CHEST X-RAY.", False, _TERSE[:3], upper=True)),
}


def hospital_names(num_sites: int) -> list[str]:
    """The names of the sites of a `hospitals=num_sites` dataset, in index order."""
    if isinstance(num_sites, bool) or not isinstance(num_sites, int) or not 2 <= num_sites <= MAX_HOSPITALS:
        raise ValueError(f"num_sites must be an int from 2 to {MAX_HOSPITALS}, got {num_sites!r}")
    return list(SITE_ORDER[:num_sites])


# ================================================================== options

def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_options(opts: dict) -> None:
    """UserError for a bad `hospitals`, `hospital` or `hospital_skew` (or vqa with hospitals)."""
    sites, site, skew = opts["hospitals"], opts["hospital"], opts["hospital_skew"]
    if not _is_int(sites) or not (sites == 0 or 2 <= sites <= MAX_HOSPITALS):
        raise UserError(f"data.options.hospitals: 0 (no sites) or a whole number of sites from 2 to "
                        f"{MAX_HOSPITALS}, got {sites!r}")
    if isinstance(skew, bool) or not isinstance(skew, (int, float)) or not (math.isfinite(skew) and skew > 0):
        raise UserError(f"data.options.hospital_skew: a Dirichlet concentration, a number > 0 (small = sites "
                        f"very different, large = close to the profiles' mean mix), got {skew!r}")
    if site is not None and sites == 0:
        raise UserError(f"data.options.hospital: needs data.options.hospitals (2 to {MAX_HOSPITALS} sites); "
                        f"got hospital={site!r} with hospitals=0")
    if site is not None and (not _is_int(site) or not 0 <= site < sites):
        names = ", ".join(hospital_names(sites))
        raise UserError(f"data.options.hospital: a site index from 0 to {sites - 1} ({names}) or null for all "
                        f"sites pooled, got {site!r}")
    if sites and opts.get("vqa"):
        raise UserError("data.options.hospitals: hospitals apply to report data only; "
                        f"got hospitals={sites} with vqa=true (set vqa: false or hospitals: 0)")


# ================================================================== site assignment

def study_class(meta: list[dict], num_sites: int) -> str:
    """"normal", or the study's finding kind whose tilt varies most over the sites in use."""
    return _class_of_kinds({_KIND_OF_NAME[m["name"]] for m in meta}, num_sites)


def _class_of_kinds(kinds, num_sites: int) -> str:
    if not kinds:
        return "normal"
    spread = _class_spread(num_sites)
    return max((c for c in CLASSES if c in kinds), key=lambda c: spread[c])  # ties: CLASSES order


@functools.lru_cache(maxsize=8)
def _class_spread(num_sites: int) -> dict:
    tilts = [PROFILES[name].tilt for name in hospital_names(num_sites)]
    return {c: max(t[c] for t in tilts) / min(t[c] for t in tilts) for c in CLASSES}


def affinities(num_sites: int) -> np.ndarray:
    """(classes, sites): a_c[s] ∝ size[s] * tilt[s][c], each row summing to 1."""
    profiles = [PROFILES[name] for name in hospital_names(num_sites)]
    a = np.array([[p.size * p.tilt[c] for p in profiles] for c in CLASSES], dtype=np.float64)
    return a / a.sum(axis=1, keepdims=True)


@functools.lru_cache(maxsize=8)
def class_frequencies(num_sites: int) -> np.ndarray:
    """(classes,): each class's expected share of studies, exact from the generator's rates
    (independent pathologies, redrawn beyond MAX_FINDINGS_PER_STUDY; devices with some)."""
    freq = dict.fromkeys(CLASSES, 0.0)
    for present in itertools.product((False, True), repeat=len(PATHOLOGY_RATES)):
        kinds = [kind for kind, on in zip(PATHOLOGY_RATES, present) if on]
        if len(kinds) > MAX_FINDINGS_PER_STUDY:
            continue
        p = math.prod(rate if on else 1.0 - rate for rate, on in zip(PATHOLOGY_RATES.values(), present))
        devices = DEVICE_RATE_WITH_PATHOLOGY if 0 < len(kinds) < MAX_FINDINGS_PER_STUDY else 0.0
        freq[_class_of_kinds(kinds, num_sites)] += p * (1.0 - devices)
        freq[_class_of_kinds([*kinds, "support_devices"], num_sites)] += p * devices
    total = sum(freq.values())
    return np.array([freq[c] / total for c in CLASSES])


def _draw_proportions(rng, num_sites: int, skew: float) -> np.ndarray:
    """(classes, sites): p_c ~ Dirichlet(skew * K * a_c), one draw per class in CLASSES order."""
    rows = [rng.dirichlet(skew * num_sites * a) for a in affinities(num_sites)]
    # a tiny alpha can underflow every component to 0: the draw is then one-hot on the largest
    return np.array([row if row.sum() > 0 else np.eye(num_sites)[np.argmax(a)]
                     for row, a in zip(rows, affinities(num_sites))])


def _plausibility(p: np.ndarray, num_sites: int) -> tuple[int, float]:
    """(classes whose most enriched site has a tilt >= 1 for them, the smallest site's expected
    share) of a draw p (classes, sites)."""
    shares = class_frequencies(num_sites) @ p  # (sites,) expected share of the studies
    enrichment = p / np.maximum(shares, 1e-12)  # (classes, sites): class share in site / overall
    tilt = np.array([[PROFILES[name].tilt[c] for name in hospital_names(num_sites)] for c in CLASSES])
    liked = tilt[np.arange(len(CLASSES)), enrichment.argmax(axis=1)] >= 1.0
    return int(liked.sum()), float(shares.min())


def site_proportions(seed: int, num_sites: int, skew: float) -> np.ndarray:
    """(classes, sites): the Dirichlet draws, redrawn from the same rng until plausible: every
    site expects at least MIN_SITE_SHARE of the studies (as FL partition code redraws until each
    client has data: an empty site cannot train or be tested), and each class is most enriched
    in a site whose profile has it at or above the base rate (so "outpatient" is never the
    pneumothorax site). After MAX_DRAWS, the most plausible draw."""
    rng = np.random.default_rng([seed, _DIRICHLET_STREAM, num_sites])
    best, best_score = None, (-1, -1.0)
    for _ in range(MAX_DRAWS):
        p = _draw_proportions(rng, num_sites, skew)
        score = _plausibility(p, num_sites)
        if score[0] == len(CLASSES) and score[1] >= MIN_SITE_SHARE:
            return p
        if score > best_score:
            best, best_score = p, score
    return best


def assign_sites(classes: list[str], indices: list[int], seed: int, num_sites: int, skew: float) -> list[int]:
    """The site index of each study (class, dataset index); one uniform per study from its own
    stream, so a study's site depends only on (seed, index, its class, the sites, skew)."""
    cumulative = np.cumsum(site_proportions(seed, num_sites, skew), axis=1)  # (classes, sites)
    row = {c: i for i, c in enumerate(CLASSES)}
    sites = []
    for c, index in zip(classes, indices):
        u = np.random.default_rng([seed, index, _SITE_STREAM]).random()
        sites.append(min(int(np.searchsorted(cumulative[row[c]], u, side="right")), num_sites - 1))
    return sites


# ================================================================== image appearance

def _resample(x: np.ndarray, factor: float) -> np.ndarray:
    """(H, W) float32 -> the same, as seen by a detector `factor` times coarser."""
    h, w = x.shape
    small = (max(1, round(w / factor)), max(1, round(h / factor)))
    im = Image.fromarray(x, mode="F").resize(small, Image.Resampling.BOX)
    return np.asarray(im.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def restyle_image(image: np.ndarray, look: Look, rng) -> np.ndarray:
    """uint8 (H, W) -> uint8 (H, W) with the site's exposure, resolution and noise."""
    x = image.astype(np.float32) / 255.0  # (H, W) in [0, 1]
    x = x ** look.gamma
    x = (x - 0.5) * look.contrast + 0.5 + look.brightness
    if look.downsample > 1.0:
        x = _resample(np.ascontiguousarray(x), look.downsample)
    if look.noise > 0:
        x = x + rng.standard_normal(x.shape, dtype=np.float32) * (look.noise / 255.0)
    out = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    out.flags.writeable = False  # shared with the cache
    return out


def _restyle_images(record: dict, look: Look, rng) -> dict:
    """The record with every image restyled; `image` stays the first entry of `images`."""
    images = [{**e, "image": restyle_image(e["image"], look, rng)} for e in record["images"]]
    out = {**record, "images": images}
    if "image" in record:
        out["image"] = images[0]["image"]
    return out


# ================================================================== report style

def _rewrite(text: str, style: Style) -> str:
    for pattern, replacement in style.rewrites:
        text = re.sub(pattern, replacement, text)
    if style.rewrites:  # a dropped "There is a" leaves the sentence starting lower case
        text = re.sub(r"(^|\. )([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)
    return text.upper() if style.upper else text


def restyle_report(record: dict, style: Style) -> dict:
    """The record (a study or a prior) with `findings`, `impression` and `text` in the site's
    wording; `text` is the header, then FINDINGS and IMPRESSION (or the other way round)."""
    findings, impression = _rewrite(record["findings"], style), _rewrite(record["impression"], style)
    sections = [f"FINDINGS: {findings}", f"IMPRESSION: {impression}"]
    if style.impression_first:
        sections.reverse()
    views = "PA AND LATERAL" if len(record.get("images") or ()) > 1 else "PA"
    header = style.header.format(views=views)
    text = " ".join(filter(None, [header, *sections]))
    return {**record, "findings": findings, "impression": impression, "text": text}


def restyle_study(record: dict, index: int, seed: int, image_size: int, site: str) -> dict:
    """A plain synthetic study (no masks) drawn and written as `site` would; adds "site"."""
    profile = PROFILES[site]
    rng = np.random.default_rng([seed, index, _NOISE_STREAM, image_size])
    out = restyle_report(_restyle_images(record, profile.look, rng), profile.style)
    if record.get("prior"):
        out["prior"] = restyle_report(_restyle_images(record["prior"], profile.look, rng), profile.style)
    out["site"] = site
    return out


# ================================================================== splits

def _copy(value):
    """Containers copied, arrays shared: callers may change a record, not the cache."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


@functools.lru_cache(maxsize=6)
def _pooled_split(num_studies: int, seed: int, image_size: int, split: str, start_index: int, views: int,
                  prior_share: float, num_sites: int, skew: float) -> tuple[tuple[int, dict], ...]:
    """((site index, record), ...) of the whole split, in dataset order."""
    records = synthetic_records(num_studies, seed, image_size, split, start_index, views=views,
                                prior_share=prior_share)
    indices = list(range(start_index, start_index + num_studies))
    classes = [study_class(r["meta"], num_sites) for r in records]
    sites = assign_sites(classes, indices, seed, num_sites, skew)
    names = hospital_names(num_sites)
    return tuple((s, restyle_study(r, i, seed, image_size, names[s])) for s, r, i in zip(sites, records, indices))


def hospital_records(num_studies: int, seed: int = 0, image_size: int = 128, split: str = "train",
                     start_index: int = 0, views: int = 1, prior_share: float = 0.0, hospitals: int = 3,
                     hospital: int | None = None, skew: float = DEFAULT_SKEW) -> list[dict]:
    """The records of site `hospital` (None: all sites) among the plain split's studies
    start_index .. start_index + num_studies - 1, in dataset order; see the module docstring."""
    pooled = _pooled_split(int(num_studies), int(seed), int(image_size), split, int(start_index), int(views),
                           float(prior_share), int(hospitals), float(skew))
    return [_copy(record) for site, record in pooled if hospital is None or site == hospital]


def site_summary(records: list[dict]) -> dict:
    """{site: {"studies": n, "normal": share, <finding kind>: share of studies with it, ...}},
    sites in SITE_ORDER (records without a site under "all")."""
    by_site: dict[str, list[set]] = {}
    for record in records:
        kinds = {_KIND_OF_NAME[m["name"]] for m in record["meta"]}
        by_site.setdefault(record.get("site", "all"), []).append(kinds)
    order = {name: i for i, name in enumerate(SITE_ORDER)}
    summary = {}
    for site in sorted(by_site, key=lambda s: order.get(s, len(order))):
        studies = by_site[site]
        counts = Counter(kind for kinds in studies for kind in kinds)
        summary[site] = {"studies": len(studies), "normal": sum(not k for k in studies) / len(studies),
                         **{c: counts[c] / len(studies) for c in CLASSES[1:]}}
    return summary
