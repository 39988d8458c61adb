"""The built-in synthetic chest X-ray dataset: drawn PA radiographs with matching reports,
CheXpert labels, and masks of where each finding was drawn.

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

Determinism: `make_study(index, seed, image_size)` draws everything from
``np.random.default_rng([seed, index])`` in an order that does not depend on the image size,
so one study has the same findings, report and labels at every size; only the film grain uses
a second, size-specific stream.

Splits: a study is identified by (seed, index), one subject per study. Callers make splits from
disjoint index ranges (``start_index``); `synthetic_splits` uses train = [0, n_train),
validation = the next n_val indices, test = the next n_test, the same ranges as
`medvlm.data.sources`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
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
    """Lung markings: thin lines radiating from the hilum, fading towards the periphery."""
    hilum_x, hilum_y = _SIDE_SIGN[side] * 0.2, -0.02
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


def _draw_lung_opacity(chest: _Chest, finding: _Finding, rng) -> np.ndarray:
    frame = chest.frame
    cx, cy = _OPACITY_CENTRES[finding.zone]
    cx, cy = cx + float(rng.uniform(-0.04, 0.04)), cy + float(rng.uniform(-0.04, 0.04))
    rx, ry = float(rng.uniform(0.18, 0.23)), float(rng.uniform(0.15, 0.2))
    radius = _ellipse_radius(frame, cx, cy, rx, ry, float(rng.uniform(-0.5, 0.5)))
    squared = radius * radius
    blob = np.exp(-1.5 * squared * squared)  # flat-topped: a lobe fills, then fades at its edge
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
    half_length, half_width = 0.17, max(0.035, 1.5 * frame.pixel)
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


def _draw_findings(chest: _Chest, findings: list[_Finding], rng) -> dict[str, np.ndarray]:
    by_name = {f.name: f for f in findings}
    return {name: _DRAWERS[name](chest, by_name[name], rng) for name in _DRAWERS if name in by_name}


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


def _abnormal_report(findings: list[_Finding], rng) -> tuple[str, str, list[float]]:
    by_kind: dict[str, list[_Finding]] = {}
    for finding in findings:
        by_kind.setdefault(finding.kind, []).append(finding)
    described = {kind: _DESCRIBERS[kind](by_kind[kind], rng) for kind in _FINDINGS_ORDER if kind in by_kind}
    positives = {section: [] for section in _SECTIONS}
    for kind, (sentence, _) in described.items():
        positives[_SECTION_OF_KIND[kind]].append(sentence)
    impression = " ".join(described[kind][1] for kind in _IMPRESSION_ORDER if kind in described)
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
    findings_text = " ".join(sentence for section in _SECTIONS for sentence in positives[section])
    return findings_text, impression, labels


# ================================================================== studies and records

def _study_id(seed: int, index: int) -> str:
    return f"syn{seed}-s{index:08d}"


def make_study(index: int, seed: int = 0, image_size: int = 128) -> dict:
    """One synthetic study, deterministic in (index, seed, image_size); see the module docstring.

    Keys: image (uint8 (H, W)), text ("FINDINGS: ... IMPRESSION: ..."), findings, impression,
    labels (14 floats in CHEXPERT_OBSERVATIONS order: 1 present, 0 negated in the report, NaN not
    mentioned; No Finding is 1 for normal studies, else NaN), masks (finding name -> bool (H, W)),
    study_id, subject_id, view ("PA"), split (""), meta (one dict per drawn finding: name, side,
    zone, severity, observations, size_mm, cardiothoracic_ratio).
    """
    rng = np.random.default_rng([seed, index])
    grain_rng = np.random.default_rng([seed, index, image_size])
    findings = _sample_findings(rng)
    severity = next((f.severity for f in findings if f.kind == "cardiomegaly"), None)
    anatomy = _sample_anatomy(rng, _HEART_SCALE[severity])
    frame = _sample_frame(rng, image_size)
    chest = _draw_normal_chest(rng, frame, anatomy)
    masks = _draw_findings(chest, findings, rng)
    image = _develop(chest, rng, grain_rng)
    findings_text, impression, labels = (_abnormal_report(findings, rng) if findings else _normal_report(rng))
    return {
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
    }


def synthetic_records(num_studies: int, seed: int = 0, image_size: int = 128, split: str = "train",
                      start_index: int = 0, with_masks: bool = False) -> list[dict]:
    """Studies start_index .. start_index + num_studies - 1, with `split` set. Masks are left
    out (the key is absent) unless `with_masks`, to keep large sets small in memory.

    Splits must come from disjoint index ranges, e.g. train from 0, validation from n_train;
    `synthetic_splits` does that."""
    records = []
    for index in range(start_index, start_index + num_studies):
        study = make_study(index, seed=seed, image_size=image_size)
        study["split"] = split
        if not with_masks:
            del study["masks"]
        records.append(study)
    return records


def synthetic_splits(num_train: int, num_val: int, num_test: int, seed: int = 0, image_size: int = 128,
                     with_masks: bool = False) -> dict[str, list[dict]]:
    """Train, validation and test records from consecutive, disjoint index ranges."""
    sizes = {"train": num_train, "validation": num_val, "test": num_test}
    splits, start = {}, 0
    for split, size in sizes.items():
        splits[split] = synthetic_records(size, seed, image_size, split, start, with_masks)
        start += size
    return splits


def save_png_tree(records: list[dict], out_dir) -> list[dict]:
    """Write each record's image as ``out_dir/<study_id>.png`` (once per study, so VQA records
    of one study share a file) and return copies of the records whose `image` is that path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, saved = set(), []
    for record in records:
        path = out_dir / f"{record['study_id']}.png"
        if path not in written and not isinstance(record["image"], (str, Path)):
            Image.fromarray(record["image"]).save(path)
            written.add(path)
        saved.append({**record, "image": str(path)})
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
                          start_index: int = 0, questions_per_study: int = 4) -> list[dict]:
    """Questions and answers generated from each study's meta: closed yes/no presence questions
    (balanced), closed side questions (left/right/both), and open ones (size or severity, where,
    which devices, what is in a given lung region). Each record holds the study's keys (no masks)
    with `text` = the answer (the training target, as in every VQA record) and the study's report
    under `report`, plus question, answer (lower case), answer_type ("closed"/"open") and qid."""
    records = []
    for index in range(start_index, start_index + num_studies):
        study = make_study(index, seed=seed, image_size=image_size)
        del study["masks"]
        study["split"] = split
        rng = np.random.default_rng([seed, index, 7])  # its own stream: the study stays as it is
        questions = _pick_questions(rng, _presence_pairs(study["meta"], rng), _detail_pairs(study["meta"]),
                                    questions_per_study)
        for k, (question, answer, answer_type) in enumerate(questions):
            # text is the training target: the answer, as in every VQA record (medvlm.data.vqa)
            records.append({**study, "text": answer.lower(), "report": study["text"], "question": question,
                            "answer": answer.lower(), "answer_type": answer_type, "qid": f"{study['study_id']}-q{k}"})
    return records
