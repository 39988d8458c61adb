"""The built-in synthetic chest X-ray dataset: drawn PA (and lateral) radiographs with matching
reports, CheXpert labels, masks of where each finding was drawn, and prior studies with known
changes.

Why it exists: it is the package's default data. A small model must learn to read findings
from the pixels, so the findings are sampled independently of each other (a report cannot be
guessed from text priors), every finding is drawn large enough to see at 64-128 px, and the
report words are ones a CheXpert-style labeler maps to the right observation.

Orientation: radiological convention for a PA film, the patient's right is on the image left.
All geometry here is written in *image* coordinates of a normalised frame: x runs from -1
(image left = patient right) to +1 (image right = patient left), y from -1 (top) to +1 (bottom).
A random pose (shift, scale, small rotation) maps this frame onto the pixel grid, so every
shape and every mask moves together. Findings are named by the patient's side ("left" means
patient left, drawn at x > 0).

Lateral view (``views=2``): a left lateral film of the same patient and findings, appended to
`images` after the PA one. Its frame's x is the depth axis, from -1 (image left = anterior) to +1
(posterior): the two lungs overlap, the heart lies anteriorly on the diaphragm domes (enlarged,
it fills the retrocardiac space), the spine posteriorly, clear retrosternal lung above the heart.
An effusion first fills the posterior costophrenic sulcus (a meniscus rising posteriorly); a
pneumothorax is a lucent rim without markings. Every finding has a mask there too
(`lateral_masks`, keyed as `masks`).

Prior studies (``prior_share``): that share of studies gets a prior study of the same patient
(same anatomy and subject_id, study_id ``<study_id>-prior``, its own pose and exposure), with its
own images and plain report. Each present finding of `CHANGING_KINDS` was absent before ("new"),
less severe or smaller ("worse"), more severe or larger ("better") or the same ("unchanged"), and
a finding absent now may have been there ("resolved"); the kinds come out about equally often.
The current report's impression then states each change in fixed phrasings (`_CHANGE_SENTENCES`:
"New ...", "Interval increase in the ...", "Stable ...", "Interval resolution of the previously
seen ...", ...), and `changes` holds the truth per CheXpert observation. A finding the prior
shares with the current study is drawn from the same saved rng state, so it keeps its place.

Determinism: `make_study(index, seed, image_size)` draws everything from
``np.random.default_rng([seed, index])`` in an order that does not depend on the image size,
so one study has the same findings, report and labels at every size; only the film grain uses
a second, size-specific stream. The lateral film and the prior use streams of their own
(``[seed, index, tag, ...]``): with the defaults (``views=1, prior_share=0``) a study's film,
report, labels, masks and meta are what they were before these options existed, and its PA film
is the same whatever the options (only its report changes when it has a prior).

Splits: a study is identified by (seed, index), one subject per study (its prior is part of the
same record). Callers make splits from disjoint index ranges (``start_index``);
`synthetic_splits` uses train = [0, n_train), validation = the next n_val indices, test = the
next n_test, the same ranges as `medvlm.data.sources`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from medvlm.observations import CHEXPERT_OBSERVATIONS

# Mask keys and `meta[i]["name"]` values: one per thing drawn.
FINDINGS: tuple[str, ...] = (
    "pleural_effusion_left",
    "pleural_effusion_right",
    "cardiomegaly",
    "lung_opacity",
    "nodule",
    "pneumothorax_left",
    "pneumothorax_right",
    "edema",
    "atelectasis",
    "endotracheal_tube",
    "central_venous_catheter",
    "pacemaker",
)

# Pathologies are sampled independently with these rates; the chance of none at all is their
# product of (1 - rate), about 0.35, which is the share of normal studies (as in real data).
PATHOLOGY_RATES: dict[str, float] = {
    "pleural_effusion": 0.16,
    "cardiomegaly": 0.15,
    "lung_opacity": 0.15,
    "nodule": 0.13,
    "pneumothorax": 0.13,
    "edema": 0.12,
    "atelectasis": 0.13,
}
# Devices only ever come with a pathology: a devices-only study would be "No Finding" to the
# CheXpert rules but abnormal to us, and the ambiguity is not worth it.
DEVICE_RATE_WITH_PATHOLOGY = 0.3
MAX_FINDINGS_PER_STUDY = 3

_SIDE_SIGN = {"right": -1.0, "left": 1.0}  # patient side -> sign of image x
_OBS_INDEX = {name: i for i, name in enumerate(CHEXPERT_OBSERVATIONS)}
_MM_PER_UNIT = 200.0  # one frame unit is about 20 cm of patient (the thorax spans ~1.5 units)


# ================================================================== sampled findings

@dataclass
class _Finding:
    """One drawn finding. `name` is a member of FINDINGS; `kind` groups the two sides of an
    effusion or pneumothorax and the three devices into one report topic."""

    name: str
    kind: str
    side: str | None = None
    zone: str | None = None
    severity: str | None = None
    size_mm: int | None = None
    cardiothoracic_ratio: float | None = None
    extent: float = 1.0  # how far an opacity or atelectasis spreads (a prior's may differ); not in meta

    @property
    def observations(self) -> tuple[str, ...]:
        if self.kind == "lung_opacity" and self.severity == "dense":
            return ("Lung Opacity", "Consolidation")  # the report calls a dense opacity consolidation
        return (_KIND_OBSERVATION[self.kind],)

    def meta(self) -> dict:
        return {"name": self.name, "side": self.side, "zone": self.zone, "severity": self.severity,
                "observations": list(self.observations), "size_mm": self.size_mm,
                "cardiothoracic_ratio": self.cardiothoracic_ratio}


_KIND_OBSERVATION = {
    "pleural_effusion": "Pleural Effusion",
    "cardiomegaly": "Cardiomegaly",
    "lung_opacity": "Lung Opacity",
    "nodule": "Lung Lesion",
    "pneumothorax": "Pneumothorax",
    "edema": "Edema",
    "atelectasis": "Atelectasis",
    "support_devices": "Support Devices",
}

_OPACITY_ZONES = ("right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "left lower lobe")
_NODULE_SIZES_MM = (8, 10, 12, 15, 18, 22)
_HEART_SCALE = {None: 1.0, "mild": 1.34, "moderate": 1.48, "severe": 1.62}


def _choice(rng, options, p=None):
    return options[rng.choice(len(options), p=p)]


def _sample_pleural_effusion(rng) -> list[_Finding]:
    sides = _choice(rng, (("left",), ("right",), ("left", "right")), p=(0.4, 0.35, 0.25))
    size = _choice(rng, ("small", "moderate", "large"), p=(0.4, 0.4, 0.2))
    return [_Finding(f"pleural_effusion_{side}", "pleural_effusion", side, "base", size) for side in sides]


def _sample_cardiomegaly(rng) -> list[_Finding]:
    severity = _choice(rng, ("mild", "moderate", "severe"), p=(0.45, 0.35, 0.2))
    return [_Finding("cardiomegaly", "cardiomegaly", None, None, severity)]


def _sample_lung_opacity(rng) -> list[_Finding]:
    zone = _choice(rng, _OPACITY_ZONES)
    density = _choice(rng, ("patchy", "dense"), p=(0.55, 0.45))
    return [_Finding("lung_opacity", "lung_opacity", zone.split()[0], zone, density)]


def _sample_nodule(rng) -> list[_Finding]:
    side = _choice(rng, ("left", "right"))
    zone = _choice(rng, ("upper", "mid", "lower"))
    return [_Finding("nodule", "nodule", side, zone, None, size_mm=int(_choice(rng, _NODULE_SIZES_MM)))]


def _sample_pneumothorax(rng) -> list[_Finding]:
    side = _choice(rng, ("left", "right"))
    size = _choice(rng, ("small", "moderate", "large"), p=(0.45, 0.35, 0.2))
    return [_Finding(f"pneumothorax_{side}", "pneumothorax", side, "apex", size)]


def _sample_edema(rng) -> list[_Finding]:
    return [_Finding("edema", "edema", "bilateral", "perihilar", _choice(rng, ("mild", "moderate")))]


def _sample_atelectasis(rng) -> list[_Finding]:
    return [_Finding("atelectasis", "atelectasis", _choice(rng, ("left", "right")), "base", None)]


def _sample_support_devices(rng) -> list[_Finding]:
    while True:
        wanted = rng.random(3) < (0.55, 0.5, 0.35)
        if wanted.any():
            break
    devices = []
    if wanted[0]:
        devices.append(_Finding("endotracheal_tube", "support_devices"))
    if wanted[1]:
        side = _choice(rng, ("right", "left"), p=(0.75, 0.25))
        devices.append(_Finding("central_venous_catheter", "support_devices", side))
    if wanted[2]:
        side = _choice(rng, ("left", "right"), p=(0.8, 0.2))
        devices.append(_Finding("pacemaker", "support_devices", side))
    return devices


_SAMPLERS = {
    "pleural_effusion": _sample_pleural_effusion,
    "cardiomegaly": _sample_cardiomegaly,
    "lung_opacity": _sample_lung_opacity,
    "nodule": _sample_nodule,
    "pneumothorax": _sample_pneumothorax,
    "edema": _sample_edema,
    "atelectasis": _sample_atelectasis,
    "support_devices": _sample_support_devices,
}


def _sample_kinds(rng) -> list[str]:
    """Independent draws per pathology (redrawn in the rare case of more than three), then
    devices with some pathology studies."""
    rates = np.array(list(PATHOLOGY_RATES.values()))
    while True:
        present = rng.random(len(rates)) < rates
        if present.sum() <= MAX_FINDINGS_PER_STUDY:
            break
    kinds = [kind for kind, p in zip(PATHOLOGY_RATES, present) if p]
    if 0 < len(kinds) < MAX_FINDINGS_PER_STUDY and rng.random() < DEVICE_RATE_WITH_PATHOLOGY:
        kinds.append("support_devices")
    return kinds


def _sample_findings(rng) -> list[_Finding]:
    return [finding for kind in _sample_kinds(rng) for finding in _SAMPLERS[kind](rng)]


# ================================================================== frame and anatomy

@functools.lru_cache(maxsize=8)
def _pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in [-1, 1]: (u, v), each (size, size), u along columns, v along rows."""
    axis = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0)
    u, v = np.meshgrid(axis, axis)
    u.flags.writeable = False
    v.flags.writeable = False
    return u, v


@dataclass
class _Frame:
    """The normalised frame laid over the pixels: `x`, `y` (H, W) are the frame coordinates of
    each pixel centre; `pixel` is one pixel's width in frame units."""

    size: int
    x: np.ndarray
    y: np.ndarray
    pixel: float
    shift: tuple[float, float]
    scale: float
    angle: float

    def to_pixels(self, points) -> list[tuple[float, float]]:
        """Frame points -> PIL pixel coordinates (the inverse of the grid mapping)."""
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        out = []
        for x, y in points:
            u = self.shift[0] + self.scale * (cos * x - sin * y)
            v = self.shift[1] + self.scale * (sin * x + cos * y)
            out.append(((u + 1.0) / 2.0 * self.size - 0.5, (v + 1.0) / 2.0 * self.size - 0.5))
        return out


def _sample_frame(rng, size: int) -> _Frame:
    shift = (float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.04, 0.04)))
    scale = float(rng.uniform(0.94, 1.03))
    angle = float(rng.uniform(-0.05, 0.05))  # about +-3 degrees
    u, v = _pixel_centres(size)
    cos, sin = math.cos(angle), math.sin(angle)
    du, dv = u - shift[0], v - shift[1]
    x = (cos * du + sin * dv) / scale
    y = (-sin * du + cos * dv) / scale
    return _Frame(size, x, y, 2.0 / size / scale, shift, scale, angle)


@dataclass
class _Anatomy:
    """Per-study anatomy. Lungs are tall ellipses cut at the bottom by the diaphragm domes;
    dicts are keyed by patient side."""

    lung_cx: dict
    lung_rx: dict
    lung_cy: float
    lung_ry: float
    dome_base: dict  # y of a dome at the lung's lateral and medial ends
    dome_height: float  # how far the dome rises at the lung's centre
    heart_cx: float
    heart_cy: float
    heart_rx: float
    heart_ry: float
    heart_angle: float
    body_rx: float
    rib_start: float
    rib_spacing: float
    clavicle_y: float
    lung_darkness: float

    @property
    def thorax_width(self) -> float:
        return (self.lung_cx["left"] + self.lung_rx["left"]) - (self.lung_cx["right"] - self.lung_rx["right"])

    @property
    def heart_width(self) -> float:
        cos, sin = math.cos(self.heart_angle), math.sin(self.heart_angle)
        return 2.0 * math.sqrt((self.heart_rx * cos) ** 2 + (self.heart_ry * sin) ** 2)

    def dome_y(self, side: str, x: np.ndarray | float):
        t = np.clip((x - self.lung_cx[side]) / self.lung_rx[side], -1.0, 1.0)
        return self.dome_base[side] - self.dome_height * (1.0 - t * t)


def _sample_anatomy(rng, heart_scale: float = 1.0) -> _Anatomy:
    jitter = lambda width: float(rng.uniform(-width, width))  # noqa: E731
    spread = 0.40 + jitter(0.02)
    rx = 0.33 + jitter(0.02)
    # The heart grows towards the patient's left and down, as a real enlarged heart does.
    heart_rx = (0.32 + jitter(0.02)) * heart_scale
    heart_ry = (0.25 + jitter(0.015)) * (1.0 + 0.4 * (heart_scale - 1.0))
    anatomy = _Anatomy(
        lung_cx={"right": -spread, "left": spread + 0.01},
        lung_rx={"right": rx, "left": rx - 0.015},
        lung_cy=0.18 + jitter(0.03),
        lung_ry=0.85 + jitter(0.03),
        dome_base={"right": 0.62 + jitter(0.03), "left": 0.68 + jitter(0.03)},  # right dome sits higher
        dome_height=0.17 + jitter(0.03),
        heart_cx=0.09 + 0.25 * (heart_scale - 1.0) + jitter(0.02),
        heart_cy=0.36 + 0.1 * (heart_scale - 1.0) + jitter(0.02),  # its base rests on the domes
        heart_rx=heart_rx,
        heart_ry=heart_ry,
        heart_angle=0.4 + jitter(0.08),
        body_rx=0.97 + jitter(0.03),
        rib_start=-0.74 + jitter(0.03),
        rib_spacing=0.135 + jitter(0.01),
        clavicle_y=-0.6 + jitter(0.03),
        lung_darkness=0.33 + jitter(0.03),
    )
    while heart_scale > 1.0 and anatomy.heart_width < 0.52 * anatomy.thorax_width:
        anatomy.heart_rx *= 1.02  # an enlarged heart must read as one: cardiothoracic ratio > 0.5
    return anatomy


# ================================================================== shapes on the frame

def _soft_step(signed: np.ndarray, width: float) -> np.ndarray:
    """0 -> 1 ramp across `signed` = 0 over `width` (positive = inside)."""
    return np.clip(0.5 + signed / width, 0.0, 1.0)


def _ellipse_radius(frame: _Frame, cx, cy, rx, ry, angle: float = 0.0) -> np.ndarray:
    """Normalised radius: 1 on the ellipse, < 1 inside."""
    dx, dy = frame.x - cx, frame.y - cy
    if angle:
        cos, sin = math.cos(angle), math.sin(angle)
        dx, dy = cos * dx + sin * dy, -sin * dx + cos * dy
    return np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2)


def _soft_ellipse(frame: _Frame, cx, cy, rx, ry, angle: float = 0.0, edge: float = 0.02) -> np.ndarray:
    radius = _ellipse_radius(frame, cx, cy, rx, ry, angle)
    # (1 - r) * min radius is close to the distance to the boundary near it
    return _soft_step((1.0 - radius) * min(rx, ry), edge + frame.pixel)


def _smooth_noise(rng, frame: _Frame, cells: int) -> np.ndarray:
    """Band-limited noise, about unit variance: a cells x cells grid upsampled bicubically.
    The grid size does not depend on the image size, so the rng stream does not either."""
    grid = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((frame.size, frame.size), Image.BICUBIC))


def _dilate(mask: np.ndarray, pixels: int = 1) -> np.ndarray:
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(image.filter(ImageFilter.MaxFilter(2 * pixels + 1))) > 0


# ================================================================== the normal chest

@dataclass
class _Chest:
    """The drawing in progress: `density` (H, W) float, brighter = more attenuating, plus the
    anatomy fields that findings need to know where to draw."""

    frame: _Frame
    anatomy: _Anatomy
    density: np.ndarray
    lungs: dict  # patient side -> soft lung field (H, W) in [0, 1]
    vessel_term: dict  # patient side -> what the lung markings added to `density`
    heart: np.ndarray


def _lung_field(frame: _Frame, anatomy: _Anatomy, side: str) -> np.ndarray:
    inside = _soft_ellipse(frame, anatomy.lung_cx[side], anatomy.lung_cy, anatomy.lung_rx[side], anatomy.lung_ry)
    above_dome = _soft_step(anatomy.dome_y(side, frame.x) - frame.y, 0.02 + frame.pixel)
    return inside * above_dome


def _body_field(frame: _Frame, anatomy: _Anatomy) -> np.ndarray:
    # a superellipse (power 4) gives square shoulders; the neck is a band above them
    across = (frame.x / anatomy.body_rx) ** 2
    down = ((frame.y - 0.25) / 1.15) ** 2
    torso = _soft_step(1.0 - (across * across + down * down), 0.12)
    neck = _soft_step(0.21 - np.abs(frame.x), 0.03) * (frame.y < -0.5)
    return np.maximum(torso, neck)


def _vessel_field(rng, frame: _Frame, anatomy: _Anatomy, side: str) -> np.ndarray:
    return _markings(rng, frame, _SIDE_SIGN[side] * 0.2, -0.02)


def _markings(rng, frame: _Frame, hilum_x: float, hilum_y: float) -> np.ndarray:
    """Lung markings: thin lines radiating from the hilum, fading towards the periphery."""
    dx, dy = frame.x - hilum_x, frame.y - hilum_y
    distance = np.sqrt(dx * dx + dy * dy)
    theta = np.arctan2(dy, dx)
    wiggle = _smooth_noise(rng, frame, 10) * 0.5
    lines = np.abs(np.sin(13.0 * theta + wiggle + 4.0 * distance))
    branches = np.abs(np.sin(23.0 * theta - 1.5 * wiggle))
    pattern = np.clip(1.0 - 2.5 * lines, 0, 1) + 0.5 * np.clip(1.0 - 2.5 * branches, 0, 1) * (distance < 0.45)
    return pattern * np.exp(-distance / 0.4)


def _rib_field(frame: _Frame, anatomy: _Anatomy) -> np.ndarray:
    """Posterior ribs as arcs (rising a little from the spine, falling laterally) and fainter
    anterior ribs sloping down towards the midline, limited to the rib cage."""
    lateral = np.abs(frame.x)
    posterior = (frame.y + 0.35 * lateral - 0.9 * lateral * lateral - anatomy.rib_start) / anatomy.rib_spacing
    anterior = (frame.y - 0.4 * lateral - anatomy.rib_start - 0.1) / (anatomy.rib_spacing * 1.15)
    soft = 0.05 + frame.pixel / anatomy.rib_spacing

    def bands(phase, half_width):
        fraction = phase - np.floor(phase)
        inside_range = (phase > 0) & (phase < 10)
        return np.clip((half_width - np.abs(fraction - 0.5)) / soft, 0, 1) * inside_range

    cage = _soft_ellipse(frame, 0.0, anatomy.lung_cy - 0.02, 0.8, anatomy.lung_ry + 0.06, edge=0.04)
    cage *= _soft_step(lateral - 0.08, 0.03)
    return (bands(posterior, 0.18) + 0.4 * bands(anterior, 0.15) * (lateral > 0.2)) * cage


def _clavicle_field(frame: _Frame, anatomy: _Anatomy) -> np.ndarray:
    lateral = np.abs(frame.x)
    centre = anatomy.clavicle_y - 0.3 * (lateral - 0.1) + 0.1 * (lateral - 0.1) ** 2
    band = _soft_step(0.028 - np.abs(frame.y - centre), 0.012 + frame.pixel)
    return band * _soft_step(lateral - 0.07, 0.03) * _soft_step(0.8 - lateral, 0.05)


def _spine_field(frame: _Frame) -> np.ndarray:
    column = _soft_step(0.075 - np.abs(frame.x), 0.02 + frame.pixel)
    vertebrae = 0.75 + 0.25 * np.cos(2.0 * np.pi * frame.y / 0.13)  # disc spaces between bodies
    return column * vertebrae


def _trachea_field(frame: _Frame) -> np.ndarray:
    return _soft_step(0.04 - np.abs(frame.x), 0.015 + frame.pixel) * _soft_step(-0.3 - frame.y, 0.05)


def _draw_normal_chest(rng, frame: _Frame, anatomy: _Anatomy) -> _Chest:
    body = _body_field(frame, anatomy)
    lungs = {side: _lung_field(frame, anatomy, side) for side in ("right", "left")}
    vessel_term = {side: 0.12 * _vessel_field(rng, frame, anatomy, side) * lungs[side] for side in lungs}
    hila = sum(_soft_ellipse(frame, _SIDE_SIGN[s] * 0.19, -0.02, 0.07, 0.12, edge=0.06) for s in lungs)
    heart = _soft_ellipse(frame, anatomy.heart_cx, anatomy.heart_cy, anatomy.heart_rx, anatomy.heart_ry,
                          anatomy.heart_angle, edge=0.025)
    aortic_knob = _soft_ellipse(frame, 0.1, -0.38, 0.07, 0.06, edge=0.03)
    gastric_bubble = _soft_ellipse(frame, anatomy.lung_cx["left"], anatomy.dome_base["left"] + 0.05, 0.1, 0.06,
                                   edge=0.03)

    density = 0.03 + 0.52 * body
    density -= anatomy.lung_darkness * (lungs["right"] + lungs["left"])
    density += vessel_term["right"] + vessel_term["left"] + 0.08 * hila * (lungs["right"] + lungs["left"])
    density += (0.57 - density) * np.maximum(heart, aortic_knob)  # the heart lies in front of the lungs
    density += 0.07 * _spine_field(frame) - 0.1 * _trachea_field(frame) - 0.12 * gastric_bubble
    lungs_both = lungs["right"] + lungs["left"]
    density += (0.02 + 0.055 * lungs_both) * _rib_field(frame, anatomy)  # ribs show best against air
    density += 0.1 * _clavicle_field(frame, anatomy)
    return _Chest(frame, anatomy, density, lungs, vessel_term, heart)


# ================================================================== findings on the chest
# Each drawer changes `chest.density` and returns the boolean mask of what it drew.

def _draw_pleural_effusion(chest: _Chest, finding: _Finding, rng) -> np.ndarray:
    """Basal fluid: homogeneous, with a meniscus climbing the lateral chest wall; it fills the
    costophrenic angle and hides the dome."""
    a, frame, side = chest.anatomy, chest.frame, finding.side
    top = {"small": a.dome_base[side] - 0.13, "moderate": 0.28, "large": 0.0}[finding.severity]
    top += float(rng.uniform(-0.03, 0.03))
    lateral = np.clip(_SIDE_SIGN[side] * (frame.x - a.lung_cx[side]) / a.lung_rx[side], -1, 1)
    meniscus = top - 0.2 * ((lateral + 1.0) / 2.0) ** 2
    hemithorax = _soft_ellipse(frame, a.lung_cx[side], a.lung_cy, a.lung_rx[side] + 0.01, a.lung_ry + 0.3)
    fluid = _soft_step(frame.y - meniscus, 0.08) * hemithorax
    chest.density += (0.55 + float(rng.uniform(-0.03, 0.02)) - chest.density) * 0.95 * fluid
    return (fluid > 0.5) & (chest.lungs[side] > 0.3)


def _draw_cardiomegaly(chest: _Chest, finding: _Finding, rng) -> np.ndarray:
    """The heart was already drawn enlarged (see `_sample_anatomy`); the mask is the heart."""
    finding.cardiothoracic_ratio = round(chest.anatomy.heart_width / chest.anatomy.thorax_width, 3)
    return chest.heart > 0.5


_OPACITY_CENTRES = {  # (x, y) of each lobe's usual opacity on a PA film
    "right upper lobe": (-0.42, -0.32),
    "right middle lobe": (-0.27, 0.16),
    "right lower lobe": (-0.5, 0.36),
    "left upper lobe": (0.43, -0.28),
    "left lower lobe": (0.56, 0.4),
}


def _lobe_blob(frame: _Frame, centre: tuple[float, float], finding: _Finding, rng) -> np.ndarray:
    """A flat-topped blob about a lobe's centre: a lobe fills, then fades at its edge (the same
    draws in the same order on either film)."""
    cx, cy = centre
    cx, cy = cx + float(rng.uniform(-0.04, 0.04)), cy + float(rng.uniform(-0.04, 0.04))
    rx, ry = float(rng.uniform(0.18, 0.23)) * finding.extent, float(rng.uniform(0.15, 0.2)) * finding.extent
    radius = _ellipse_radius(frame, cx, cy, rx, ry, float(rng.uniform(-0.5, 0.5)))
    squared = radius * radius
    return np.exp(-1.5 * squared * squared)


def _draw_lung_opacity(chest: _Chest, finding: _Finding, rng) -> np.ndarray:
    frame = chest.frame
    blob = _lobe_blob(frame, _OPACITY_CENTRES[finding.zone], finding, rng)
    texture = 0.7 + 0.3 * np.tanh(_smooth_noise(rng, frame, 14))
    amplitude = 0.4 if finding.severity == "dense" else 0.26
    lung = chest.lungs[finding.side]
    chest.density += amplitude * blob * texture * lung
    return (blob > 0.45) & (lung > 0.5)


_NODULE_LEVELS = {"upper": -0.36, "mid": 0.02, "lower": 0.3}


def _draw_nodule(chest: _Chest, finding: _Finding, rng) -> np.ndarray:
    frame, side = chest.frame, finding.side
    lateral = 0.5 if (side == "left" and finding.zone != "upper") else 0.42  # keep clear of the heart
    cx = _SIDE_SIGN[side] * (lateral + float(rng.uniform(-0.05, 0.05)))
    cy = _NODULE_LEVELS[finding.zone] + float(rng.uniform(-0.05, 0.05))
    # Drawn a little larger than life so an 8 mm nodule still covers pixels at 64 px.
    radius = 0.025 + finding.size_mm / _MM_PER_UNIT * 0.9
    distance = _ellipse_radius(frame, cx, cy, radius, radius) * radius
    chest.density += 0.24 * _soft_step(radius - distance, 0.008 + frame.pixel)
    return distance < radius + frame.pixel


_COLLAPSED_FRACTION = {"small": 0.87, "moderate": 0.72, "large": 0.56}


def _draw_pneumothorax(chest: _Chest, finding: _Finding, rng) -> np.ndarray:
    """Air between the chest wall and a lung that has shrunk towards the hilum: darker than the
    lung, with no markings, bounded by the bright visceral pleural line."""
    a, frame, side = chest.anatomy, chest.frame, finding.side
    fraction = _COLLAPSED_FRACTION[finding.severity] + float(rng.uniform(-0.02, 0.02))
    anchor_x, anchor_y = _SIDE_SIGN[side] * 0.15, 0.35
    cx = anchor_x + fraction * (a.lung_cx[side] - anchor_x)
    cy = anchor_y + fraction * (a.lung_cy - anchor_y)
    rx, ry = a.lung_rx[side] * fraction, a.lung_ry * fraction
    radius = _ellipse_radius(frame, cx, cy, rx, ry)
    lung = chest.lungs[side]
    air = _soft_step((radius - 1.0) * rx, 0.01 + frame.pixel) * lung
    pleural_line = _soft_step(0.006 + frame.pixel * 0.5 - np.abs(radius - 1.0) * rx, 0.008 + frame.pixel)
    chest.density -= air * (0.12 + chest.vessel_term[side])
    chest.density += 0.05 * (1.0 - air) * lung * (radius < 1.0)  # the collapsed lung is denser
    chest.density += 0.13 * pleural_line * lung
    return air > 0.5


def _draw_edema(chest: _Chest, finding: _Finding, rng) -> np.ndarray:
    """Bilateral perihilar haze ("bat wing"), densest at the hila."""
    frame = chest.frame
    amplitude = {"mild": 0.15, "moderate": 0.23}[finding.severity]
    texture = 0.75 + 0.25 * np.tanh(_smooth_noise(rng, frame, 16))
    mask = np.zeros((frame.size, frame.size), dtype=bool)
    for side in ("right", "left"):
        centre_x = _SIDE_SIGN[side] * (0.26 + float(rng.uniform(-0.02, 0.02)))
        haze = np.exp(-1.8 * _ellipse_radius(frame, centre_x, 0.04, 0.26, 0.34) ** 2)
        chest.density += amplitude * haze * texture * chest.lungs[side]
        mask |= (haze > 0.4) & (chest.lungs[side] > 0.5)
    return mask


def _draw_atelectasis(chest: _Chest, finding: _Finding, rng) -> np.ndarray:
    """A plate of collapsed lung: a thin, slightly tilted band just above the dome."""
    a, frame, side = chest.anatomy, chest.frame, finding.side
    cx = a.lung_cx[side] + _SIDE_SIGN[side] * float(rng.uniform(0.06, 0.11))
    cy = float(a.dome_y(side, cx)) - float(rng.uniform(0.1, 0.15))
    half_length, half_width = 0.17 * finding.extent, max(0.035, 1.5 * frame.pixel) * math.sqrt(finding.extent)
    tilt = -_SIDE_SIGN[side] * float(rng.uniform(0.05, 0.25))  # rises laterally
    radius = _ellipse_radius(frame, cx, cy, half_length, half_width, tilt)
    band = _soft_step((1.0 - radius) * half_width, 0.006 + frame.pixel)
    in_front_of_heart = 1.0 - 0.7 * chest.heart  # where the heart overlaps it, it hides it
    chest.density += 0.2 * band * chest.lungs[side] * in_front_of_heart
    return _dilate(band > 0.3)


def _bezier(p0, p1, p2, steps: int = 24) -> list[tuple[float, float]]:
    t = np.linspace(0.0, 1.0, steps)[:, None]
    points = (1 - t) ** 2 * np.array(p0) + 2 * (1 - t) * t * np.array(p1) + t ** 2 * np.array(p2)
    return [tuple(p) for p in points]


def _stroke(frame: _Frame, points, width_units: float) -> np.ndarray:
    """Rasterise a polyline given in frame units; returns a float layer in [0, 1]."""
    layer = Image.new("L", (frame.size, frame.size), 0)
    width = max(1, round(width_units / frame.pixel))
    ImageDraw.Draw(layer).line(frame.to_pixels(points), fill=255, width=width, joint="curve")
    return np.asarray(layer, dtype=np.float32) / 255.0


def _draw_endotracheal_tube(chest: _Chest, finding: _Finding, rng) -> np.ndarray:
    tip_y = float(rng.uniform(-0.56, -0.4))  # the carina is at about y = -0.3
    points = [(0.0, -1.1), (0.005, -0.8), (0.0, tip_y)]
    tube = _stroke(chest.frame, points, 0.04)
    chest.density += 0.3 * tube
    return _dilate(tube > 0)


def _draw_central_venous_catheter(chest: _Chest, finding: _Finding, rng) -> np.ndarray:
    """From the internal jugular vein down to the superior vena cava (right of the midline)."""
    s = _SIDE_SIGN[finding.side]
    tip = (-0.06 + float(rng.uniform(-0.02, 0.02)), -0.2 + float(rng.uniform(-0.05, 0.05)))
    points = _bezier((s * 0.3, -1.08), (s * 0.12, -0.55), tip)
    line = _stroke(chest.frame, points, 0.022)
    chest.density += 0.4 * line
    return _dilate(line > 0)


def _draw_pacemaker(chest: _Chest, finding: _Finding, rng) -> np.ndarray:
    """A metal generator below the clavicle with leads to the right atrium and ventricle."""
    frame, s = chest.frame, _SIDE_SIGN[finding.side]
    cx, cy = s * (0.55 + float(rng.uniform(-0.04, 0.04))), -0.6 + float(rng.uniform(-0.03, 0.03))
    box = _soft_ellipse(frame, cx, cy, 0.11, 0.075, float(rng.uniform(-0.3, 0.3)), edge=0.005) > 0.5
    start = (cx - s * 0.09, cy + 0.02)
    atrial = _bezier(start, (s * 0.1, -0.62), (-0.07, -0.08))
    ventricular = _bezier(start, (s * 0.05, -0.45), (0.12, 0.32))
    leads = np.maximum(_stroke(frame, atrial, 0.018), _stroke(frame, ventricular, 0.018))
    chest.density = np.maximum(chest.density, 0.82 * leads)
    chest.density[box] = 1.0
    return _dilate(box | (leads > 0))


# Order matters: the pneumothorax removes markings drawn before it, fluid covers what lies under
# it, and devices project over everything.
_DRAWERS = {
    "pneumothorax_left": _draw_pneumothorax,
    "pneumothorax_right": _draw_pneumothorax,
    "lung_opacity": _draw_lung_opacity,
    "edema": _draw_edema,
    "atelectasis": _draw_atelectasis,
    "nodule": _draw_nodule,
    "pleural_effusion_left": _draw_pleural_effusion,
    "pleural_effusion_right": _draw_pleural_effusion,
    "cardiomegaly": _draw_cardiomegaly,
    "endotracheal_tube": _draw_endotracheal_tube,
    "central_venous_catheter": _draw_central_venous_catheter,
    "pacemaker": _draw_pacemaker,
}
assert set(_DRAWERS) == set(FINDINGS)


def _replayed(state: dict) -> np.random.Generator:
    """A generator that continues from a saved `bit_generator.state` (reading one draws nothing)."""
    generator = np.random.Generator(np.random.PCG64())
    generator.bit_generator.state = state
    return generator


def _draw_findings(chest, findings: list[_Finding], rng, drawers=None, replay=None) -> tuple[dict, dict]:
    """Draw each finding, in the drawers' order; returns (masks, states). `states[name]` is the
    rng state its drawing started from; a name in `replay` is drawn from that state instead of
    `rng`, so a finding a prior shares with its current study keeps its place and shape."""
    drawers = _DRAWERS if drawers is None else drawers
    by_name = {f.name: f for f in findings}
    masks, states = {}, {}
    for name, drawer in drawers.items():
        if name in by_name:
            stream = _replayed(replay[name]) if replay and name in replay else rng
            states[name] = stream.bit_generator.state
            masks[name] = drawer(chest, by_name[name], stream)
    return masks, states


def _develop(chest: _Chest, rng, grain_rng) -> np.ndarray:
    """Density -> uint8 film: exposure (gamma, contrast, brightness), mottle, grain, blur."""
    frame = chest.frame
    density = chest.density + 0.02 * _smooth_noise(rng, frame, 12)
    gamma = float(rng.uniform(0.85, 1.2))
    contrast = float(rng.uniform(0.9, 1.15))
    brightness = float(rng.uniform(-0.05, 0.05))
    density = np.clip(density, 0.0, 1.0) ** gamma
    density = (density - 0.4) * contrast + 0.4 + brightness
    density += grain_rng.standard_normal(density.shape, dtype=np.float32) * 0.015
    image = Image.fromarray(np.clip(density * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(0.45 * frame.size / 128)))


# ================================================================== the lateral view
# A left lateral film of the same patient: the frame's x is now the depth axis, from -1 (image
# left = anterior) to +1 (posterior); y is vertical as on the PA film. Both lungs overlap; the
# heart lies anteriorly on the domes, the spine posteriorly, the retrosternal space (clear lung
# between sternum and aorta) above the heart. Heights come from the frontal anatomy, so the domes,
# the heart's size and the levels of the findings agree between the two views.

@dataclass
class _Lateral:
    """The lateral geometry of a study's anatomy, in lateral frame units."""

    front: float  # the anterior chest wall (sternum)
    back: float  # the posterior chest wall (ribs)
    lung_cx: float
    lung_rx: float
    lung_cy: float
    lung_ry: float
    dome_x: float  # depth of the domes' summits
    dome_top: dict  # patient side -> y of its dome's summit
    dome_curve: dict  # patient side -> how fast its dome falls towards the posterior sulcus
    heart_cx: float
    heart_cy: float
    heart_rx: float
    heart_ry: float
    spine_x: float
    hilum: tuple[float, float]
    rib_start: float

    def dome_y(self, side: str, x):
        return self.dome_top[side] + self.dome_curve[side] * (x - self.dome_x) ** 2


def _lateral_geometry(rng, anatomy: _Anatomy) -> _Lateral:
    jitter = lambda width: float(rng.uniform(-width, width))  # noqa: E731
    front, back, dome_x = -0.62 + jitter(0.03), 0.7 + jitter(0.03), -0.1 + jitter(0.03)
    tops = {side: anatomy.dome_base[side] - anatomy.dome_height for side in ("right", "left")}
    # the posterior costophrenic sulcus is the lowest point of each dome
    curves = {side: (anatomy.dome_base[side] + 0.14 - tops[side]) / (back - dome_x) ** 2 for side in tops}
    enlarged = anatomy.heart_rx / 0.32 - 1.0  # about 0 for a normal heart, up to ~0.7
    heart_rx = 0.29 * (1.0 + 0.85 * enlarged)  # an enlarged heart fills the retrocardiac space
    return _Lateral(
        front=front, back=back, lung_cx=(front + back) / 2 + 0.02, lung_rx=(back - front) / 2 - 0.02,
        lung_cy=anatomy.lung_cy, lung_ry=anatomy.lung_ry, dome_x=dome_x, dome_top=tops, dome_curve=curves,
        heart_cx=front + 0.04 + heart_rx, heart_cy=anatomy.heart_cy - 0.02, heart_rx=heart_rx,
        heart_ry=anatomy.heart_ry * 1.1, spine_x=back - 0.17 + jitter(0.02), hilum=(0.02 + jitter(0.03), -0.02),
        rib_start=anatomy.rib_start,
    )


@dataclass
class _LateralChest:
    """A lateral drawing in progress, as `_Chest` for the PA film; `lungs[side]` is the side's lung
    field (the two overlap); `vessel_term` is the markings of both."""

    frame: _Frame
    anatomy: _Anatomy
    lateral: _Lateral
    density: np.ndarray
    lungs: dict
    vessel_term: np.ndarray
    heart: np.ndarray


def _lateral_body(frame: _Frame, g: _Lateral) -> np.ndarray:
    middle, half = (g.front + g.back) / 2, (g.back - g.front) / 2 + 0.12
    across = ((frame.x - middle) / half) ** 2
    down = ((frame.y - 0.25) / 1.15) ** 2
    torso = _soft_step(1.0 - (across * across + down * down), 0.12)
    neck = _soft_step(0.3 - np.abs(frame.x - middle - 0.05), 0.04) * (frame.y < -0.5)
    return np.maximum(torso, neck)


def _lateral_bones(frame: _Frame, g: _Lateral) -> np.ndarray:
    """Vertebral bodies (with disc spaces), the sternum, and posterior ribs crossing the lungs."""
    spine = _soft_step(0.09 - np.abs(frame.x - g.spine_x), 0.02 + frame.pixel)
    spine *= 0.7 + 0.3 * np.cos(2.0 * np.pi * frame.y / 0.13)
    sternum = _soft_step(0.025 - np.abs(frame.x - g.front - 0.03), 0.01 + frame.pixel)
    sternum *= _soft_step(0.3 - np.abs(frame.y + 0.15), 0.05)
    phase = (frame.y + 0.3 * (frame.x - g.spine_x) - g.rib_start) / 0.14
    ribs = np.clip((0.15 - np.abs(phase - np.floor(phase) - 0.5)) / 0.08, 0, 1) * (frame.x > g.lung_cx)
    return 0.12 * spine + 0.08 * sternum + 0.03 * ribs


def _lateral_lung(frame: _Frame, g: _Lateral) -> np.ndarray:
    """Both lungs' outline: round at the apex, square below (deep costophrenic sulci)."""
    dx, dy = (frame.x - g.lung_cx) / g.lung_rx, (frame.y - g.lung_cy) / g.lung_ry
    across = dx * dx
    radius = np.sqrt(np.where(dy > 0, across * across, across) + dy * dy)
    return _soft_step((1.0 - radius) * min(g.lung_rx, g.lung_ry), 0.02 + frame.pixel)


def _draw_lateral_chest(rng, frame: _Frame, anatomy: _Anatomy) -> _LateralChest:
    g = _lateral_geometry(rng, anatomy)
    lung = _lateral_lung(frame, g)
    lungs = {side: lung * _soft_step(g.dome_y(side, frame.x) - frame.y, 0.02 + frame.pixel)
             for side in ("right", "left")}
    both = 0.5 * (lungs["right"] + lungs["left"])
    vessel_term = 0.1 * _markings(rng, frame, *g.hilum) * both
    heart = _soft_ellipse(frame, g.heart_cx, g.heart_cy, g.heart_rx, g.heart_ry, -0.3, edge=0.025)
    arch = _ellipse_radius(frame, g.hilum[0] + 0.02, -0.3, 0.21, 0.15) * (frame.y < -0.25)
    aorta = _soft_step(0.03 - np.abs(arch - 1.0) * 0.15, 0.02 + frame.pixel)
    trachea = _soft_step(0.035 - np.abs(frame.x - g.hilum[0] + 0.04 - 0.1 * (frame.y + 0.3)), 0.015 + frame.pixel)
    trachea *= _soft_step(-0.12 - frame.y, 0.05)
    bubble = _soft_ellipse(frame, g.dome_x - 0.08, g.dome_top["left"] + 0.12, 0.12, 0.06, edge=0.03)
    hilum = _soft_ellipse(frame, *g.hilum, 0.1, 0.13, edge=0.06)

    density = 0.03 + 0.55 * _lateral_body(frame, g)
    density -= 1.1 * anatomy.lung_darkness * both  # two lungs' worth of air, seen through each other
    density += vessel_term + 0.08 * hilum * both
    density += (0.57 - density) * np.maximum(heart, 0.35 * aorta)
    density += _lateral_bones(frame, g) - 0.1 * trachea - 0.12 * bubble
    return _LateralChest(frame, anatomy, g, density, lungs, vessel_term, heart)


# ------------------------------------------------------------------ findings on the lateral view
# The same findings as on the PA film, drawn where the depth axis puts them; same masks keys.

def _lateral_pleural_effusion(chest: _LateralChest, finding: _Finding, rng) -> np.ndarray:
    """Fluid collects in the posterior costophrenic sulcus first: a meniscus rising posteriorly."""
    g, frame, side = chest.lateral, chest.frame, finding.side
    sulcus = float(g.dome_y(side, g.back))
    top = {"small": sulcus - 0.2, "moderate": 0.3, "large": 0.04}[finding.severity] + float(rng.uniform(-0.03, 0.03))
    depth = np.clip((frame.x - g.lung_cx) / g.lung_rx, -1, 1)  # -1 anterior, +1 posterior
    meniscus = top + 0.3 * ((1.0 - depth) / 2.0) ** 2
    chest_cavity = _soft_ellipse(frame, g.lung_cx, g.lung_cy, g.lung_rx + 0.01, g.lung_ry + 0.3)
    fluid = _soft_step(frame.y - meniscus, 0.08) * chest_cavity
    chest.density += (0.52 - chest.density) * 0.85 * fluid
    return (fluid > 0.5) & (chest.lungs[side] > 0.3)


def _lateral_cardiomegaly(chest: _LateralChest, finding: _Finding, rng) -> np.ndarray:
    return chest.heart > 0.5  # drawn enlarged by `_lateral_geometry`


_LATERAL_OPACITY_CENTRES = {  # (depth, y) of each lobe's opacity on a lateral film
    "right upper lobe": (0.02, -0.38),
    "right middle lobe": (-0.3, 0.04),
    "right lower lobe": (0.36, 0.3),
    "left upper lobe": (-0.12, -0.3),
    "left lower lobe": (0.4, 0.36),
}


def _lateral_lung_opacity(chest: _LateralChest, finding: _Finding, rng) -> np.ndarray:
    blob = _lobe_blob(chest.frame, _LATERAL_OPACITY_CENTRES[finding.zone], finding, rng)
    amplitude = 0.36 if finding.severity == "dense" else 0.24
    lung = chest.lungs[finding.side]
    chest.density += amplitude * blob * lung
    return (blob > 0.45) & (lung > 0.5)


def _lateral_nodule(chest: _LateralChest, finding: _Finding, rng) -> np.ndarray:
    frame = chest.frame
    cx = float(rng.uniform(-0.15, 0.3))
    cy = _NODULE_LEVELS[finding.zone] + float(rng.uniform(-0.05, 0.05))
    radius = 0.025 + finding.size_mm / _MM_PER_UNIT * 0.9
    distance = _ellipse_radius(frame, cx, cy, radius, radius) * radius
    chest.density += 0.22 * _soft_step(radius - distance, 0.008 + frame.pixel)
    return distance < radius + frame.pixel


def _lateral_pneumothorax(chest: _LateralChest, finding: _Finding, rng) -> np.ndarray:
    """The lung shrinks towards the hilum: a lucent rim without markings, anterior, apical and
    posterior, bounded by the pleural line."""
    g, frame = chest.lateral, chest.frame
    fraction = _COLLAPSED_FRACTION[finding.severity] + float(rng.uniform(-0.02, 0.02))
    anchor_x, anchor_y = g.hilum[0], 0.35
    cx, cy = anchor_x + fraction * (g.lung_cx - anchor_x), anchor_y + fraction * (g.lung_cy - anchor_y)
    rx, ry = g.lung_rx * fraction, g.lung_ry * fraction
    radius = _ellipse_radius(frame, cx, cy, rx, ry)
    lung = chest.lungs[finding.side]
    air = _soft_step((radius - 1.0) * rx, 0.01 + frame.pixel) * lung
    pleural_line = _soft_step(0.006 + frame.pixel * 0.5 - np.abs(radius - 1.0) * rx, 0.008 + frame.pixel)
    chest.density -= air * (0.17 + chest.vessel_term)
    chest.density += 0.15 * pleural_line * lung
    return air > 0.5


def _lateral_edema(chest: _LateralChest, finding: _Finding, rng) -> np.ndarray:
    frame, g = chest.frame, chest.lateral
    amplitude = {"mild": 0.14, "moderate": 0.22}[finding.severity]
    texture = 0.75 + 0.25 * np.tanh(_smooth_noise(rng, frame, 16))
    haze = np.exp(-1.8 * _ellipse_radius(frame, g.hilum[0] + float(rng.uniform(-0.03, 0.03)), 0.04, 0.42, 0.4) ** 2)
    lung = np.maximum(chest.lungs["right"], chest.lungs["left"])
    chest.density += amplitude * haze * texture * lung
    return (haze > 0.4) & (lung > 0.5)


def _lateral_atelectasis(chest: _LateralChest, finding: _Finding, rng) -> np.ndarray:
    g, frame, side = chest.lateral, chest.frame, finding.side
    cx = float(rng.uniform(0.05, 0.3))
    cy = float(g.dome_y(side, cx)) - float(rng.uniform(0.1, 0.15))
    half_length, half_width = 0.2 * finding.extent, max(0.035, 1.5 * frame.pixel) * math.sqrt(finding.extent)
    radius = _ellipse_radius(frame, cx, cy, half_length, half_width, float(rng.uniform(-0.25, 0.05)))
    band = _soft_step((1.0 - radius) * half_width, 0.006 + frame.pixel)
    chest.density += 0.2 * band * chest.lungs[side]
    return _dilate(band > 0.3)


def _lateral_endotracheal_tube(chest: _LateralChest, finding: _Finding, rng) -> np.ndarray:
    tip_y, hilum_x = float(rng.uniform(-0.56, -0.4)), chest.lateral.hilum[0]
    along = lambda y: hilum_x - 0.04 + 0.1 * (y + 0.3)  # noqa: E731  (the trachea's axis)
    tube = _stroke(chest.frame, [(along(-1.1), -1.1), (along(tip_y), tip_y)], 0.04)
    chest.density += 0.3 * tube
    return _dilate(tube > 0)


def _lateral_central_venous_catheter(chest: _LateralChest, finding: _Finding, rng) -> np.ndarray:
    tip = (-0.14 + float(rng.uniform(-0.03, 0.03)), -0.2 + float(rng.uniform(-0.05, 0.05)))
    line = _stroke(chest.frame, _bezier((-0.05, -1.08), (-0.2, -0.6), tip), 0.022)
    chest.density += 0.4 * line
    return _dilate(line > 0)


def _lateral_pacemaker(chest: _LateralChest, finding: _Finding, rng) -> np.ndarray:
    """The generator in the anterior chest wall, seen edge-on; leads down into the heart."""
    frame, g = chest.frame, chest.lateral
    cx, cy = g.front + 0.05 + float(rng.uniform(-0.02, 0.02)), -0.6 + float(rng.uniform(-0.03, 0.03))
    box = _soft_ellipse(frame, cx, cy, 0.05, 0.1, edge=0.005) > 0.5
    start = (cx + 0.03, cy + 0.05)
    leads = np.maximum(_stroke(frame, _bezier(start, (-0.1, -0.5), (g.heart_cx, g.heart_cy - 0.1)), 0.018),
                       _stroke(frame, _bezier(start, (-0.05, -0.3), (g.heart_cx - 0.1, g.heart_cy + 0.12)), 0.018))
    chest.density = np.maximum(chest.density, 0.82 * leads)
    chest.density[box] = 1.0
    return _dilate(box | (leads > 0))


_LATERAL_DRAWERS = {
    "pneumothorax_left": _lateral_pneumothorax,
    "pneumothorax_right": _lateral_pneumothorax,
    "lung_opacity": _lateral_lung_opacity,
    "edema": _lateral_edema,
    "atelectasis": _lateral_atelectasis,
    "nodule": _lateral_nodule,
    "pleural_effusion_left": _lateral_pleural_effusion,
    "pleural_effusion_right": _lateral_pleural_effusion,
    "cardiomegaly": _lateral_cardiomegaly,
    "endotracheal_tube": _lateral_endotracheal_tube,
    "central_venous_catheter": _lateral_central_venous_catheter,
    "pacemaker": _lateral_pacemaker,
}
assert list(_LATERAL_DRAWERS) == list(_DRAWERS)


def _film(view: str, anatomy: _Anatomy, findings: list[_Finding], rng, grain_rng, image_size: int,
          replay: dict | None = None) -> tuple[np.ndarray, dict, dict]:
    """One radiograph ("PA" or "LATERAL") of the study: (image, masks, states), drawing in a fixed
    order from `rng`. `states` holds the rng state where the chest ("chest") and each finding
    started; `replay` (a current study's states, for its prior) draws those from the saved state."""
    frame = _sample_frame(rng, image_size)
    stream = _replayed(replay["chest"]) if replay else rng
    states = {"chest": stream.bit_generator.state}
    lateral = view == "LATERAL"
    chest = (_draw_lateral_chest if lateral else _draw_normal_chest)(stream, frame, anatomy)
    masks, finding_states = _draw_findings(chest, findings, rng, _LATERAL_DRAWERS if lateral else _DRAWERS, replay)
    return _develop(chest, rng, grain_rng), masks, {**states, **finding_states}


# ================================================================== reports
# Every sentence carries the labels it states, so the labels are what the report says.

def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _side_words(findings: list[_Finding]) -> str:
    sides = {f.side for f in findings}
    return "bilateral" if len(sides) > 1 else sides.pop()


def _describe_pleural_effusion(findings, rng):
    size, sides = findings[0].severity, _side_words(findings)
    if sides == "bilateral":
        finding = _choice(rng, (f"There are {size} bilateral pleural effusions.",
                                f"{_cap(size)} bilateral pleural effusions with blunting of the costophrenic angles."))
        return finding, f"{_cap(size)} bilateral pleural effusions."
    finding = _choice(rng, (f"There is a {size} {sides} pleural effusion.",
                            f"{_cap(size)} {sides} pleural effusion with blunting of the costophrenic angle.",
                            f"A {size} {sides} pleural effusion is present."))
    return finding, f"{_cap(size)} {sides} pleural effusion."


_ADVERB = {"mild": "mildly", "moderate": "moderately", "severe": "severely"}


def _describe_cardiomegaly(findings, rng):
    severity = findings[0].severity
    finding = _choice(rng, (f"{_cap(severity)} cardiomegaly.",
                            f"The cardiac silhouette is {_ADVERB[severity]} enlarged.",
                            f"The heart size is {_ADVERB[severity]} enlarged."))
    return finding, f"{_cap(severity)} cardiomegaly."


def _describe_lung_opacity(findings, rng):
    zone = findings[0].zone
    if findings[0].severity == "dense":
        finding = _choice(rng, (f"Focal consolidation in the {zone} with dense opacity.",
                                f"There is dense opacity with consolidation in the {zone}."))
        return finding, f"{_cap(zone)} consolidation."
    finding = _choice(rng, (f"There is a patchy opacity in the {zone}.",
                            f"Patchy airspace opacity is seen in the {zone}.",
                            f"Hazy opacity in the {zone}."))
    return finding, f"{_cap(zone)} opacity."


def _describe_nodule(findings, rng):
    f = findings[0]
    where = f"{f.side} {f.zone} lung"
    finding = _choice(rng, (f"There is a {f.size_mm} mm nodule in the {where}.",
                            f"A {f.size_mm} mm pulmonary nodule is seen in the {where}.",
                            f"{_cap(where)} nodule measuring {f.size_mm} mm."))
    return finding, f"{f.size_mm} mm {where} nodule."


def _describe_pneumothorax(findings, rng):
    size, side = findings[0].severity, findings[0].side
    finding = _choice(rng, (f"There is a {size} {side} pneumothorax.",
                            f"{_cap(size)} {side} pneumothorax with a visible pleural line.",
                            f"A {size} {side}-sided pneumothorax is seen."))
    return finding, f"{_cap(size)} {side} pneumothorax."


def _describe_edema(findings, rng):
    severity = findings[0].severity
    finding = _choice(rng, (f"{_cap(severity)} pulmonary edema.",
                            f"There is {severity} pulmonary edema with perihilar predominance.",
                            f"{_cap(severity)} bilateral perihilar pulmonary edema."))
    return finding, f"{_cap(severity)} pulmonary edema."


def _describe_atelectasis(findings, rng):
    side = findings[0].side
    finding = _choice(rng, (f"Subsegmental atelectasis at the {side} lung base.",
                            f"There is {side} basilar atelectasis.",
                            f"Discoid atelectasis in the {side} lower lung."))
    return finding, f"{_cap(side)} basilar atelectasis."


_DEVICE_PHRASE = {"endotracheal_tube": "endotracheal tube", "central_venous_catheter": "central venous catheter",
                  "pacemaker": "pacemaker"}


def _describe_device(finding: _Finding, rng) -> str:
    if finding.name == "endotracheal_tube":
        return _choice(rng, ("Endotracheal tube tip is above the carina.",
                             "The endotracheal tube terminates above the carina."))
    if finding.name == "central_venous_catheter":
        return _choice(rng, (f"{_cap(finding.side)} internal jugular central venous catheter ends in the "
                             "superior vena cava.",
                             f"A {finding.side} central venous catheter ends in the superior vena cava."))
    return _choice(rng, (f"{_cap(finding.side)} chest wall pacemaker with leads in the right heart.",
                         f"A {finding.side}-sided pacemaker is present with leads in expected position."))


def _describe_support_devices(findings, rng):
    sentences = " ".join(_describe_device(f, rng) for f in findings)
    if len(findings) > 1:
        return sentences, "Support devices in standard position."
    return sentences, f"{_cap(_DEVICE_PHRASE[findings[0].name])} in standard position."


_DESCRIBERS = {
    "pleural_effusion": _describe_pleural_effusion,
    "cardiomegaly": _describe_cardiomegaly,
    "lung_opacity": _describe_lung_opacity,
    "nodule": _describe_nodule,
    "pneumothorax": _describe_pneumothorax,
    "edema": _describe_edema,
    "atelectasis": _describe_atelectasis,
    "support_devices": _describe_support_devices,
}
# Radiologists describe tubes first, then lungs, pleura, heart; impressions lead with urgency.
_FINDINGS_ORDER = ("support_devices", "lung_opacity", "nodule", "edema", "atelectasis",
                   "pleural_effusion", "pneumothorax", "cardiomegaly")
_IMPRESSION_ORDER = ("pneumothorax", "pleural_effusion", "lung_opacity", "edema", "cardiomegaly", "nodule",
                     "atelectasis", "support_devices")
_SECTION_OF_KIND = {"support_devices": "devices", "lung_opacity": "lungs", "nodule": "lungs", "edema": "lungs",
                    "atelectasis": "lungs", "pleural_effusion": "pleura", "pneumothorax": "pleura",
                    "cardiomegaly": "heart"}
_SECTIONS = ("devices", "lungs", "pleura", "heart", "bones")

_PE, _PTX, _CM, _ECM = "Pleural Effusion", "Pneumothorax", "Cardiomegaly", "Enlarged Cardiomediastinum"


@dataclass(frozen=True)
class _Negation:
    """A normal-finding sentence: usable when none of `requires_absent` is present."""

    text: str
    labels: tuple[tuple[str, float], ...]
    requires_absent: frozenset
    section: str
    group: str  # at most one sentence per group in a report


def _negation(text, negated, requires_absent, section, group):
    return _Negation(text, tuple((obs, 0.0) for obs in negated), frozenset(requires_absent), section, group)


_LUNG_KINDS = ("lung_opacity", "nodule", "edema", "atelectasis")
_PLEURAL_KINDS = ("pleural_effusion", "pneumothorax")
_NEGATIONS = (
    _negation("No pleural effusion or pneumothorax.", (_PE, _PTX), _PLEURAL_KINDS, "pleura", "pleura"),
    _negation("There is no pleural effusion or pneumothorax.", (_PE, _PTX), _PLEURAL_KINDS, "pleura", "pleura"),
    _negation("No evidence of pleural effusion or pneumothorax.", (_PE, _PTX), _PLEURAL_KINDS, "pleura", "pleura"),
    _negation("No pleural effusion.", (_PE,), ("pleural_effusion",), "pleura", "effusion"),
    _negation("There is no pleural effusion.", (_PE,), ("pleural_effusion",), "pleura", "effusion"),
    _negation("No pneumothorax.", (_PTX,), ("pneumothorax",), "pleura", "pneumothorax"),
    _negation("No evidence of pneumothorax.", (_PTX,), ("pneumothorax",), "pleura", "pneumothorax"),
    _negation("Heart size is normal.", (_CM,), ("cardiomegaly",), "heart", "heart"),
    _negation("No cardiomegaly.", (_CM,), ("cardiomegaly",), "heart", "heart"),
    # "cardiomediastinal silhouette ... normal" negates both, as the CheXpert labeler reads it
    _negation("The cardiomediastinal silhouette is within normal limits.", (_ECM, _CM), ("cardiomegaly",),
              "heart", "heart"),
    _negation("No pulmonary edema.", ("Edema",), ("edema",), "lungs", "edema"),
    _negation("No focal consolidation.", ("Consolidation",), ("lung_opacity",), "lungs", "consolidation"),
    _negation("The lungs are clear.", (), _LUNG_KINDS, "lungs", "clear"),
    _negation("No acute osseous abnormality.", (), (), "bones", "bones"),
)
# Chance that a usable sentence of a group is said at all (before topping up to the minimum).
_GROUP_RATES = {"pleura": 0.85, "effusion": 0.7, "pneumothorax": 0.7, "heart": 0.7, "edema": 0.35,
                "consolidation": 0.35, "clear": 0.5, "bones": 0.15}
MIN_REPORT_WORDS, MAX_REPORT_WORDS = 20, 70

# Normal studies: a few fixed reports, so they repeat word for word as real normal reports do.
_NORMAL_REPORTS = (
    (("The lungs are clear.", "There is no pleural effusion or pneumothorax.",
      "The cardiomediastinal silhouette is within normal limits."),
     "No acute cardiopulmonary process.",
     {_PE: 0.0, _PTX: 0.0, _ECM: 0.0, _CM: 0.0}),
    (("Heart size is normal.", "The lungs are clear without focal consolidation.",
      "No pleural effusion or pneumothorax."),
     "No acute cardiopulmonary abnormality.",
     {_CM: 0.0, "Consolidation": 0.0, _PE: 0.0, _PTX: 0.0}),
    (("The cardiomediastinal silhouette is within normal limits.",
      "No focal consolidation, pleural effusion, or pneumothorax.", "No pulmonary edema."),
     "Normal chest radiograph.",
     {_ECM: 0.0, _CM: 0.0, "Consolidation": 0.0, _PE: 0.0, _PTX: 0.0, "Edema": 0.0}),
)
_NORMAL_REPORT_WEIGHTS = (0.45, 0.35, 0.2)


def _word_count(sentences) -> int:
    return sum(len(s.split()) for s in sentences)


def _choose_negations(kinds: set, rng, words_so_far: int) -> list[_Negation]:
    """Some of the usable normal sentences (at most one per group) within MAX_REPORT_WORDS, then
    more until the report reaches MIN_REPORT_WORDS."""
    by_group: dict[str, list[_Negation]] = {}
    for negation in _NEGATIONS:
        if not (negation.requires_absent & kinds):
            by_group.setdefault(negation.group, []).append(negation)
    if "pleura" in by_group:  # the combined sentence speaks for both
        by_group.pop("effusion")
        by_group.pop("pneumothorax")
    picks = {group: options[rng.integers(len(options))] for group, options in by_group.items()}
    chance = rng.random(len(picks))
    said = []
    for group, u in zip(picks, chance):
        fits = words_so_far + _word_count(picks[g].text for g in [*said, group]) <= MAX_REPORT_WORDS
        if u < _GROUP_RATES[group] and fits:
            said.append(group)
    spare = [group for group in picks if group not in said]
    rng.shuffle(spare)
    while spare and words_so_far + _word_count(picks[g].text for g in said) < MIN_REPORT_WORDS:
        said.append(spare.pop())
    return [picks[g] for g in said]


def _empty_labels() -> list[float]:
    return [math.nan] * len(CHEXPERT_OBSERVATIONS)


def _set_label(labels: list[float], observation: str, value: float) -> None:
    current = labels[_OBS_INDEX[observation]]
    if value == 1.0 or math.isnan(current):  # positive beats negative, as CheXpert aggregates
        labels[_OBS_INDEX[observation]] = value


def _normal_report(rng) -> tuple[str, str, list[float]]:
    sentences, impression, negated = _NORMAL_REPORTS[rng.choice(len(_NORMAL_REPORTS), p=_NORMAL_REPORT_WEIGHTS)]
    labels = _empty_labels()
    for observation, value in negated.items():
        _set_label(labels, observation, value)
    labels[_OBS_INDEX["No Finding"]] = 1.0
    return " ".join(sentences), impression, labels


def _by_kind(findings: list[_Finding]) -> dict[str, list[_Finding]]:
    by_kind: dict[str, list[_Finding]] = {}
    for finding in findings:
        by_kind.setdefault(finding.kind, []).append(finding)
    return by_kind


def _report(findings: list[_Finding], rng, comparison: dict | None = None) -> tuple[str, str, list[float]]:
    """(findings text, impression, labels). With a `comparison` (see `_plan_prior`) the impression
    states each change: a changed kind's impression sentence becomes its change sentence, and a
    resolved kind gets one (its observations are then labelled 0, as the labeler reads it)."""
    if findings:
        return _abnormal_report(findings, rng, comparison)
    findings_text, impression, labels = _normal_report(rng)
    if comparison:  # a normal study can only have resolved findings
        impression = " ".join([*_change_impressions(comparison, rng).values(), impression])
        _label_resolved(labels, comparison)
    return findings_text, impression, labels


def _abnormal_report(findings: list[_Finding], rng, comparison: dict | None = None) -> tuple[str, str, list[float]]:
    by_kind = _by_kind(findings)
    described = {kind: _DESCRIBERS[kind](by_kind[kind], rng) for kind in _FINDINGS_ORDER if kind in by_kind}
    positives = {section: [] for section in _SECTIONS}
    for kind, (sentence, _) in described.items():
        positives[_SECTION_OF_KIND[kind]].append(sentence)
    impressions = {kind: sentence for kind, (_, sentence) in described.items()}
    if comparison:
        impressions.update(_change_impressions(comparison, rng))
    impression = " ".join(impressions[kind] for kind in _IMPRESSION_ORDER if kind in impressions)
    words_so_far = _word_count(s for section in _SECTIONS for s in positives[section]) + len(impression.split()) + 2
    negations = _choose_negations(set(by_kind), rng, words_so_far)  # + 2 for the section headers
    for negation in negations:
        positives[negation.section].append(negation.text)

    labels = _empty_labels()
    for finding in findings:
        for observation in finding.observations:
            _set_label(labels, observation, 1.0)
    for negation in negations:
        for observation, value in negation.labels:
            _set_label(labels, observation, value)
    if comparison:
        _label_resolved(labels, comparison)
    findings_text = " ".join(sentence for section in _SECTIONS for sentence in positives[section])
    return findings_text, impression, labels


# ================================================================== prior studies and change

# The kinds whose change against a prior study is drawn and stated; nodules and devices are the
# same in the prior as now, and the report says nothing about them.
CHANGING_KINDS = ("pleural_effusion", "cardiomegaly", "lung_opacity", "pneumothorax", "edema", "atelectasis")
CHANGE_KINDS = ("new", "worse", "better", "unchanged", "resolved")
# Chance that a study with a prior also had a finding that has since resolved; it makes
# "resolved" about as common as each of the other four kinds.
RESOLVED_RATE = 0.2
_SEVERITY_LADDERS = {"pleural_effusion": ("small", "moderate", "large"), "cardiomegaly": ("mild", "moderate", "severe"),
                     "pneumothorax": ("small", "moderate", "large"), "edema": ("mild", "moderate")}
_PRIOR_EXTENT = {"worse": 0.5, "better": 1.6}  # an opacity or atelectasis has no size word: it was smaller / larger
# The report's change sentences; a variant is chosen with the study rng.
_CHANGE_SENTENCES = {
    "new": ("New {}.", "There is a new {}."),
    "worse": ("Interval increase in the {}.", "Worsening {}."),
    "better": ("Interval decrease in the {}.", "Improving {}."),
    "unchanged": ("Unchanged {}.", "Stable {}."),
    "resolved": ("Interval resolution of the previously seen {}.", "The previously seen {} has resolved."),
}


def _change_phrase(findings: list[_Finding]) -> tuple[str, dict[str, int]]:
    """The finding phrase of a kind's findings, and {change: the one sentence variant that fits}
    where only one does: a plural takes no "There is a new" / "has resolved", and the labeler
    reads "resolution of the previously seen consolidative ... opacity" as negating the
    consolidation only."""
    f = findings[0]
    if f.kind == "pleural_effusion":
        sides = _side_words(findings)
        if sides == "bilateral":
            return f"{f.severity} bilateral pleural effusions", {"new": 0, "resolved": 0}
        return f"{f.severity} {sides} pleural effusion", {}
    if f.kind == "lung_opacity":
        if f.severity == "dense":
            return f"consolidative {f.zone} opacity", {"resolved": 1}
        return f"{f.zone} opacity", {}
    phrases = {"cardiomegaly": f"{f.severity} cardiomegaly", "pneumothorax": f"{f.severity} {f.side} pneumothorax",
               "edema": f"{f.severity} pulmonary edema", "atelectasis": f"{f.side} basilar atelectasis"}
    return phrases[f.kind], {}


def _change_impressions(comparison: dict, rng) -> dict[str, str]:
    """kind -> its change sentence (a resolved kind's phrase names the prior's finding)."""
    sentences = {}
    for kind, (change, findings) in comparison.items():
        phrase, only = _change_phrase(findings)
        variants = _CHANGE_SENTENCES[change]
        sentences[kind] = (variants[only[change]] if change in only else _choice(rng, variants)).format(phrase)
    return sentences


def _label_resolved(labels: list[float], comparison: dict) -> None:
    for change, findings in comparison.values():
        if change == "resolved":
            for observation in findings[0].observations:
                _set_label(labels, observation, 0.0)


def _changes(comparison: dict | None) -> dict[str, str]:
    """The record's `changes`: CheXpert observation -> change kind."""
    return {observation: change for change, findings in (comparison or {}).values()
            for observation in findings[0].observations}


def _prior_change(findings: list[_Finding], rng) -> tuple[str, list[_Finding]]:
    """A change for a present kind, and the prior's findings of that kind: absent ("new"), less
    severe or smaller ("worse"), more severe or larger ("better"), or the same ("unchanged").
    Where only one direction is open the severity allows, it counts twice, so that worse and
    better together stay half of the changes of present findings."""
    ladder = _SEVERITY_LADDERS.get(findings[0].kind)
    level = ladder.index(findings[0].severity) if ladder else None
    lower, higher = (ladder[:level], ladder[level + 1:]) if ladder else ((None,), (None,))
    options = ["new", "unchanged", *(["worse"] * (2 if not higher else 1) if lower else []),
               *(["better"] * (2 if not lower else 1) if higher else [])]
    change = _choice(rng, options)
    if change == "new":
        return change, []
    if change == "unchanged":
        return change, [replace(f) for f in findings]
    if ladder:
        severity = _choice(rng, lower if change == "worse" else higher)
        return change, [replace(f, severity=severity) for f in findings]
    return change, [replace(f, extent=_PRIOR_EXTENT[change]) for f in findings]


def _plan_prior(findings: list[_Finding], rng) -> tuple[list[_Finding], dict]:
    """The prior study's findings and the comparison: kind -> (change, the findings its phrase
    names: the current ones, or the prior's for a resolved kind)."""
    prior, comparison = [], {}
    by_kind = _by_kind(findings)
    for kind, group in by_kind.items():
        if kind not in CHANGING_KINDS:
            prior += [replace(f) for f in group]
            continue
        change, before = _prior_change(group, rng)
        comparison[kind] = (change, group)
        prior += before
    absent = [kind for kind in CHANGING_KINDS if kind not in by_kind]
    if absent and rng.random() < RESOLVED_RATE:
        kind = _choice(rng, absent)
        before = _SAMPLERS[kind](rng)
        comparison[kind] = ("resolved", before)
        prior += before
    if all(f.kind == "support_devices" for f in prior):
        prior = []  # no devices-only studies (see DEVICE_RATE_WITH_PATHOLOGY): they came with the pathology
    return prior, comparison


# ================================================================== studies and records

def _study_id(seed: int, index: int) -> str:
    return f"syn{seed}-s{index:08d}"


# Tags of the rng streams beside a study's own ([seed, index]); far above any image size, so no
# stream is another's film-grain stream ([seed, index, image_size]).
_LATERAL_STREAM, _PRIOR_STREAM = 1_000_001, 1_000_002
VIEWS = (1, 2)


def _stream(seed: int, index: int, *tags: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, *tags])


def _heart_scale(findings: list[_Finding]) -> float:
    return _HEART_SCALE[next((f.severity for f in findings if f.kind == "cardiomegaly"), None)]


def _lateral_film(seed: int, index: int, image_size: int, anatomy: _Anatomy, findings: list[_Finding],
                  tags: tuple = (), replay: dict | None = None) -> tuple[np.ndarray, dict, dict]:
    """The study's lateral film, from its own streams ([seed, index, *tags, _LATERAL_STREAM]), so
    drawing it changes nothing on the frontal film or in the report."""
    rng = _stream(seed, index, *tags, _LATERAL_STREAM)
    grain_rng = _stream(seed, index, *tags, _LATERAL_STREAM, image_size)
    return _film("LATERAL", anatomy, findings, rng, grain_rng, image_size, replay)


def _draw_prior(seed: int, index: int, image_size: int, views: int, anatomy_state: dict, plan: tuple,
                replays: dict) -> dict:
    """The prior study: the same patient (anatomy drawn again from the saved state, with the
    prior's heart), its own pose, exposure and report, drawn from the prior stream after the plan.
    `replays` (view -> the current film's states) keeps shared findings where they were."""
    rng, findings = plan[0], plan[1]
    anatomy = _sample_anatomy(_replayed(anatomy_state), _heart_scale(findings))
    grain_rng = _stream(seed, index, _PRIOR_STREAM, image_size)
    image, masks, _ = _film("PA", anatomy, findings, rng, grain_rng, image_size, replays["PA"])
    findings_text, impression, labels = _report(findings, rng)
    prior = {"study_id": f"{_study_id(seed, index)}-prior", "images": [{"image": image, "view": "PA"}],
             "text": f"FINDINGS: {findings_text} IMPRESSION: {impression}", "findings": findings_text,
             "impression": impression, "labels": labels, "meta": [f.meta() for f in findings], "masks": masks}
    if views == 2:
        lateral, prior["lateral_masks"], _ = _lateral_film(seed, index, image_size, anatomy, findings,
                                                           (_PRIOR_STREAM,), replays["LATERAL"])
        prior["images"].append({"image": lateral, "view": "LATERAL"})
    return prior


def _plan(seed: int, index: int, findings: list[_Finding], prior_share: float) -> tuple | None:
    """(prior rng, prior findings, comparison) for a study that has a prior, else None. The draw
    that decides comes first in the prior stream, so a larger share keeps the smaller's priors."""
    rng = _stream(seed, index, _PRIOR_STREAM)
    if not rng.random() < prior_share:
        return None
    return (rng, *_plan_prior(findings, rng))


def make_study(index: int, seed: int = 0, image_size: int = 128, views: int = 1, prior_share: float = 0.0) -> dict:
    """One synthetic study, deterministic in (index, seed, image_size, views, prior_share); see
    the module docstring.

    Keys: image (uint8 (H, W), the PA film), text ("FINDINGS: ... IMPRESSION: ..."), findings,
    impression, labels (14 floats in CHEXPERT_OBSERVATIONS order: 1 present, 0 negated in the
    report, NaN not mentioned; No Finding is 1 for normal studies, else NaN), masks (finding name
    -> bool (H, W), on the PA film), study_id, subject_id, view ("PA"), split (""), meta (one dict
    per drawn finding: name, side, zone, severity, observations, size_mm, cardiothoracic_ratio),
    images ([{"image", "view": "PA"}], then {"image", "view": "LATERAL"} when views=2), prior (None
    or {study_id, images, text, findings, impression, labels, meta, masks[, lateral_masks]}),
    changes (observation -> "new"/"worse"/"better"/"unchanged"/"resolved"; {} without a prior),
    and with views=2 lateral_masks (the masks on the lateral film, keyed as `masks`).
    """
    if views not in VIEWS or not 0.0 <= prior_share <= 1.0:
        raise ValueError(f"views must be one of {VIEWS} and prior_share in [0, 1], got {views}, {prior_share}")
    rng = np.random.default_rng([seed, index])
    grain_rng = np.random.default_rng([seed, index, image_size])
    findings = _sample_findings(rng)
    anatomy_state = rng.bit_generator.state
    anatomy = _sample_anatomy(rng, _heart_scale(findings))
    image, masks, pa_states = _film("PA", anatomy, findings, rng, grain_rng, image_size)
    plan = _plan(seed, index, findings, prior_share)
    findings_text, impression, labels = _report(findings, rng, plan[2] if plan else None)
    study = {
        "image": image,
        "text": f"FINDINGS: {findings_text} IMPRESSION: {impression}",
        "findings": findings_text,
        "impression": impression,
        "labels": labels,
        "masks": masks,
        "study_id": _study_id(seed, index),
        "subject_id": f"syn{seed}-p{index:08d}",
        "view": "PA",
        "split": "",
        "meta": [f.meta() for f in findings],
        "images": [{"image": image, "view": "PA"}],
        "prior": None,
        "changes": _changes(plan[2] if plan else None),
    }
    replays = {"PA": pa_states}  # where each film's chest and findings started, for the prior
    if views == 2:
        lateral, study["lateral_masks"], replays["LATERAL"] = _lateral_film(seed, index, image_size, anatomy, findings)
        study["images"].append({"image": lateral, "view": "LATERAL"})
    if plan:
        study["prior"] = _draw_prior(seed, index, image_size, views, anatomy_state, plan, replays)
    return study


def _drop_masks(study: dict) -> dict:
    for record in (study, study["prior"] or {}):
        record.pop("masks", None)
        record.pop("lateral_masks", None)
    return study


def synthetic_records(num_studies: int, seed: int = 0, image_size: int = 128, split: str = "train",
                      start_index: int = 0, with_masks: bool = False, views: int = 1,
                      prior_share: float = 0.0) -> list[dict]:
    """Studies start_index .. start_index + num_studies - 1, with `split` set. Masks (`masks`,
    `lateral_masks`, and the prior's) are left out unless `with_masks`, to keep large sets small
    in memory. `views` and `prior_share` are `make_study`'s.

    Splits must come from disjoint index ranges, e.g. train from 0, validation from n_train;
    `synthetic_splits` does that."""
    records = []
    for index in range(start_index, start_index + num_studies):
        study = make_study(index, seed=seed, image_size=image_size, views=views, prior_share=prior_share)
        study["split"] = split
        records.append(study if with_masks else _drop_masks(study))
    return records


def synthetic_splits(num_train: int, num_val: int, num_test: int, seed: int = 0, image_size: int = 128,
                     with_masks: bool = False, views: int = 1, prior_share: float = 0.0) -> dict[str, list[dict]]:
    """Train, validation and test records from consecutive, disjoint index ranges."""
    sizes = {"train": num_train, "validation": num_val, "test": num_test}
    splits, start = {}, 0
    for split, size in sizes.items():
        splits[split] = synthetic_records(size, seed, image_size, split, start, with_masks, views, prior_share)
        start += size
    return splits


def _saved_images(images: list[dict], stem: str, out_dir: Path, written: set) -> list[dict]:
    """Write each image as ``<stem>.png`` (the first) or ``<stem>-<view>.png``; returns the
    images with paths."""
    saved = []
    for k, entry in enumerate(images):
        path = out_dir / (f"{stem}.png" if k == 0 else f"{stem}-{entry['view'].lower()}.png")
        if path not in written and not isinstance(entry["image"], (str, Path)):
            Image.fromarray(entry["image"]).save(path)
            written.add(path)
        saved.append({**entry, "image": str(path)})
    return saved


def save_png_tree(records: list[dict], out_dir) -> list[dict]:
    """Write each record's images as ``out_dir/<study_id>.png`` (the frontal one) and
    ``<study_id>-lateral.png``, and a prior's under its own study_id, once per study (so VQA
    records of one study share files); returns copies of the records whose `image`, `images` and
    prior images are those paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, saved = set(), []
    for record in records:
        images = record.get("images") or [{"image": record["image"], "view": record.get("view", "")}]
        images = _saved_images(images, record["study_id"], out_dir, written)
        copy = {**record, "image": images[0]["image"]}
        if "images" in record:
            copy["images"] = images
        if record.get("prior"):
            prior = record["prior"]
            copy["prior"] = {**prior, "images": _saved_images(prior["images"], prior["study_id"], out_dir, written)}
        saved.append(copy)
    return saved


# ================================================================== VQA

_PRESENCE_QUESTIONS = {
    "pleural_effusion": ("Is there a pleural effusion?", "Is there any pleural effusion?"),
    "cardiomegaly": ("Is the heart enlarged?", "Is there cardiomegaly?"),
    "lung_opacity": ("Is there a lung opacity?", "Is there an airspace opacity?"),
    "nodule": ("Is there a lung nodule?", "Is there a pulmonary nodule?"),
    "pneumothorax": ("Is there a pneumothorax?",),
    "edema": ("Is there pulmonary edema?",),
    "atelectasis": ("Is there atelectasis?",),
    "support_devices": ("Are there any support devices?", "Is there a medical device in the chest?"),
}
_SIDE_QUESTIONS = {
    "pleural_effusion": "Which side is the pleural effusion on?",
    "pneumothorax": "Which side is the pneumothorax on?",
    "lung_opacity": "Which lung has the opacity?",
    "nodule": "Which lung contains the nodule?",
    "atelectasis": "Which side is the atelectasis on?",
}
_SIZE_QUESTIONS = {
    "pleural_effusion": "How large is the pleural effusion?",
    "pneumothorax": "How large is the pneumothorax?",
    "cardiomegaly": "How severe is the cardiomegaly?",
    "edema": "How severe is the pulmonary edema?",
}
# The lung region (patient side, level) where each finding sits, for "what is in the ... lung?"
_OPACITY_REGION = {"right upper lobe": "upper", "right middle lobe": "middle", "right lower lobe": "lower",
                   "left upper lobe": "upper", "left lower lobe": "lower"}
_NODULE_REGION = {"upper": "upper", "mid": "middle", "lower": "lower"}
YES_NO_ANSWERS = ("yes", "no")
SIDE_ANSWERS = ("left", "right", "both")
SIZE_ANSWERS = ("small", "moderate", "large", "mild", "severe")


# How often each presence question's answer is "yes" across studies (the sampling rates above).
_NORMAL_RATE = float(np.prod([1.0 - p for p in PATHOLOGY_RATES.values()]))
_YES_RATES = {**PATHOLOGY_RATES, "support_devices": DEVICE_RATE_WITH_PATHOLOGY * (1.0 - _NORMAL_RATE),
              "normal": _NORMAL_RATE}


def _presence_pairs(meta: list[dict], rng) -> list[tuple[str, str, str]]:
    """Yes/no questions: every present finding is asked about ("yes"); an absent one only with
    probability rate / (1 - rate), so that each question is answered "yes" and "no" about
    equally often over the dataset and its answer cannot be guessed from the question."""
    kinds = {_kind_of(m["name"]) for m in meta}
    topics = {kind: questions for kind, questions in _PRESENCE_QUESTIONS.items()}
    topics["normal"] = ("Is this chest x-ray normal?",)
    present = kinds if meta else {"normal"}
    pairs = []
    for topic, questions in topics.items():
        question = _choice(rng, questions)
        rate = _YES_RATES[topic]
        if topic in present:
            pairs.append((question, "yes", "closed"))
        elif rng.random() < rate / (1.0 - rate):
            pairs.append((question, "no", "closed"))
    return pairs


def _kind_of(name: str) -> str:
    if name in _DEVICE_PHRASE:
        return "support_devices"
    return name.removesuffix("_left").removesuffix("_right")


def _finding_region(m: dict) -> tuple[str, str] | None:
    kind = _kind_of(m["name"])
    if kind == "lung_opacity":
        return m["side"], _OPACITY_REGION[m["zone"]]
    if kind == "nodule":
        return m["side"], _NODULE_REGION[m["zone"]]
    if kind in ("pleural_effusion", "atelectasis"):
        return m["side"], "lower"
    if kind == "pneumothorax":
        return m["side"], "upper"
    return None


def _region_answer_term(m: dict) -> str:
    kind = _kind_of(m["name"])
    if kind == "lung_opacity":
        return "consolidation" if m["severity"] == "dense" else "opacity"
    return kind.replace("_", " ")


def _detail_pairs(meta: list[dict]) -> list[tuple[str, str, str]]:
    """(question, answer, answer_type) about side, size, place and kind of present findings."""
    by_kind: dict[str, list[dict]] = {}
    for m in meta:
        by_kind.setdefault(_kind_of(m["name"]), []).append(m)
    pairs = []
    for kind, question in _SIDE_QUESTIONS.items():
        if kind in by_kind:
            sides = {m["side"] for m in by_kind[kind]}
            pairs.append((question, "both" if len(sides) > 1 else sides.pop(), "closed"))
    for kind, question in _SIZE_QUESTIONS.items():
        if kind in by_kind:
            pairs.append((question, by_kind[kind][0]["severity"], "open"))
    if "nodule" in by_kind:
        nodule = by_kind["nodule"][0]
        pairs.append(("How large is the nodule?", f"{nodule['size_mm']} mm", "open"))
        pairs.append(("Where is the nodule?", f"{nodule['side']} {nodule['zone']} lung", "open"))
    if "lung_opacity" in by_kind:
        pairs.append(("Where is the opacity?", by_kind["lung_opacity"][0]["zone"], "open"))
    if "support_devices" in by_kind:
        names = [_DEVICE_PHRASE[m["name"]] for m in by_kind["support_devices"]]
        pairs.append(("What support devices are present?", " and ".join(names), "open"))
    regions: dict[tuple[str, str], list[str]] = {}
    for m in meta:
        region = _finding_region(m)
        if region is not None and _region_answer_term(m) not in regions.get(region, []):
            regions.setdefault(region, []).append(_region_answer_term(m))
    for (side, level), terms in regions.items():
        pairs.append((f"What abnormality is seen in the {side} {level} lung?", " and ".join(sorted(terms)), "open"))
    return pairs


def _pick_questions(rng, presence, details, count: int) -> list[tuple[str, str, str]]:
    """Up to `count` questions without repeats: yes/no ones first (a random subset if there are
    more, which keeps their balance), the rest detail questions."""
    order = rng.permutation(len(presence))
    picked = [presence[i] for i in order[:count]]
    order = rng.permutation(len(details))
    return picked + [details[i] for i in order[: count - len(picked)]]


def synthetic_vqa_records(num_studies: int, seed: int = 0, image_size: int = 128, split: str = "train",
                          start_index: int = 0, questions_per_study: int = 4, views: int = 1,
                          prior_share: float = 0.0) -> list[dict]:
    """Questions and answers generated from each study's meta: closed yes/no presence questions
    (balanced), closed side questions (left/right/both), and open ones (size or severity, where,
    which devices, what is in a given lung region). Each record holds the study's keys (no masks)
    with `text` = the answer (the training target, as in every VQA record) and the study's report
    under `report`, plus question, answer (lower case), answer_type ("closed"/"open") and qid.
    `views` and `prior_share` are `make_study`'s (the questions are about the current study)."""
    records = []
    for index in range(start_index, start_index + num_studies):
        study = _drop_masks(make_study(index, seed=seed, image_size=image_size, views=views, prior_share=prior_share))
        study["split"] = split
        rng = np.random.default_rng([seed, index, 7])  # its own stream: the study stays as it is
        questions = _pick_questions(rng, _presence_pairs(study["meta"], rng), _detail_pairs(study["meta"]),
                                    questions_per_study)
        for k, (question, answer, answer_type) in enumerate(questions):
            # text is the training target: the answer, as in every VQA record (medvlm.data.vqa)
            records.append({**study, "text": answer.lower(), "report": study["text"], "question": question,
                            "answer": answer.lower(), "answer_type": answer_type, "qid": f"{study['study_id']}-q{k}"})
    return records
