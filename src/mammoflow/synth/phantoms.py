"""Synthetic mammograms with known ground truth: the built-in demo data and the test data of every stage.

A phantom is drawn in a canonical frame with the chest wall on the left, then mirrored for right breasts,
so that, as on a reading screen, a left breast (``L``) has its chest wall at column 0 and a right breast at
the last column. It has:

- a breast silhouette (a half-ellipse against the chest wall with a slightly irregular skin line) on a
  black background, darker near the skin line where the compressed breast is thinner;
- fibroglandular texture (smoothed multi-scale noise, more of it in dense breasts and near the centre);
- a pectoral muscle triangle in the upper chest-wall corner on MLO views;
- lesions, each inside the breast and outside the muscle, with a known centre and a radius that encloses
  it (as MIAS defines its radii): circumscribed masses (a smooth bright disc; lobulated when malignant),
  spiculated masses (a disc with radiating lines) and microcalcification clusters (small bright dots:
  fewer and rounder when benign, more and finer when malignant);
- a burned-in text label (``L MLO``) in the corner away from the breast, as on film scans, and noise.

Everything is drawn from one ``numpy.random.Generator``: the same seed gives the same bytes.

:func:`write_mias_dataset` and :func:`write_dicom_dataset` lay phantoms out like the MIAS mini-database and
like a CBIS-DDSM download (``mammoflow demo-data``), with a ``ground_truth.json`` listing every lesion.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from mammoflow.errors import ConfigError
from mammoflow.io.images import atomic_write_bytes, write_pgm
from mammoflow.logs import progress
from mammoflow.records import atomic_write_text
from mammoflow.sources.duplicates import PHANTOM_MANUFACTURER  # the header mark a dicom-dir ingest recognises
from mammoflow.synth.dicom_writer import available_transfer_syntaxes, write_dicom
from mammoflow.synth.layouts import (
    CALC_COLUMNS,
    CALC_DISTRIBUTIONS,
    CALC_TYPES,
    CSV_FILES,
    MASS_COLUMNS,
    MASS_MARGINS,
    MASS_SHAPES,
    MIAS_CLASS,
    PATHOLOGIES,
    case_name,
    cbis_csv_text,
    csv_uid,
    mias_header,
    mias_line,
    mias_xy,
    tcia_series_folder,
    tcia_study_folder,
)

log = logging.getLogger(__name__)

KINDS = ("circumscribed", "spiculated", "calcification")
LESION_LABELS = ("benign", "malignant")
DENSITIES = ("F", "G", "D")  # MIAS background tissue: fatty, fatty-glandular, dense-glandular
_DENSITY_BIAS = {"F": -1.2, "G": -0.4, "D": 0.5}

BACKGROUND = 0.02
TEXT_LEVEL = 0.96


@dataclass
class PhantomLesion:
    """One drawn lesion: centre in pixels (row 0 at the top), enclosing radius, kind and label."""

    center_row: int
    center_col: int
    radius: int
    kind: str  # circumscribed / spiculated / calcification
    label: str  # benign / malignant


@dataclass
class Phantom:
    """A synthetic mammogram and its ground truth (all arrays share the image's shape)."""

    image: np.ndarray  # uint8 or uint16, tissue bright
    breast_mask: np.ndarray  # bool: breast tissue, pectoral muscle included
    lesions: list[PhantomLesion]
    lesion_mask: np.ndarray  # bool: union of the lesions' enclosing discs
    laterality: str  # "L" / "R"
    view: str  # "CC" / "MLO"
    patient_index: int = 0
    density: str = "G"
    pectoral_mask: np.ndarray | None = None  # bool, MLO only
    text_box: tuple[int, int, int, int] | None = None  # burned-in label: row0, col0, row1, col1 (exclusive)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


def _rng(seed: int | np.random.Generator | Sequence[int]) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


# --------------------------------------------------------------------------- building blocks (pure)


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scales: Sequence[float],
                 weights: Sequence[float], stretch: float = 1.0) -> np.ndarray:
    """Multi-scale smooth noise with unit standard deviation (Gaussian-filtered white noise).

    ``scales`` are feature sizes as fractions of the image's shorter side (0.06 = blobs ~6% of the side).
    ``stretch`` > 1 elongates features along the columns (ducts run from the chest wall to the nipple).
    Each octave is drawn on a grid a few times coarser than its feature size and upsampled, so a large
    image costs little.
    """
    import cv2

    h, w = shape
    out = np.zeros(shape, np.float32)
    for scale, weight in zip(scales, weights, strict=True):
        size = max(1.0, scale * min(h, w))
        factor = max(1.0, size / 3.0)
        gh, gw = max(2, int(np.ceil(h / factor))), max(2, int(np.ceil(w / factor)))
        grid = rng.standard_normal((gh, gw), dtype=np.float32)
        sigma = size / factor / 2.0
        grid = cv2.GaussianBlur(grid, (0, 0), sigmaX=sigma * stretch, sigmaY=sigma,
                                borderType=cv2.BORDER_REFLECT)
        grid /= max(float(grid.std()), 1e-6)
        out += weight * cv2.resize(grid, (w, h), interpolation=cv2.INTER_LINEAR)
    std = float(out.std())
    return out / std if std > 0 else out


def breast_geometry(rng: np.random.Generator, shape: tuple[int, int], view: str
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Canonical (chest wall at column 0) breast mask, depth map (0 at the skin line, 1 inside) and pectoral mask.

    The silhouette is a half-ellipse centred on the chest wall; its boundary radius varies slowly with the
    angle so the skin line is not a perfect ellipse.
    """
    h, w = shape
    tall = view == "MLO"
    center_row = h * (0.53 if tall else 0.5) + h * rng.uniform(-0.03, 0.03)
    semi_rows = h * rng.uniform(0.40, 0.46) if tall else h * rng.uniform(0.36, 0.44)
    semi_cols = w * rng.uniform(0.58, 0.78)
    rows = (np.arange(h, dtype=np.float32)[:, None] - center_row) / semi_rows
    cols = np.arange(w, dtype=np.float32)[None, :] / semi_cols
    rho = np.sqrt(rows * rows + cols * cols)
    theta = np.arctan2(rows, cols)
    phases = rng.uniform(0, 2 * np.pi, 3)
    edge = 1.0 + 0.025 * np.sin(3 * theta + phases[0]) + 0.015 * np.sin(5 * theta + phases[1]) \
        + 0.01 * np.sin(9 * theta + phases[2])
    breast = rho <= edge
    # Depth from the skin line inward, in units of the (normalised) radius: thickness falls off at the edge.
    depth = np.clip((edge - rho) / 0.18, 0.0, 1.0)
    pectoral = None
    if tall:
        pec_rows = h * rng.uniform(0.38, 0.6)
        pec_cols = w * rng.uniform(0.2, 0.32)
        rr = np.arange(h, dtype=np.float32)[:, None] / pec_rows
        cc = np.arange(w, dtype=np.float32)[None, :] / pec_cols
        # A slightly convex muscle edge, as on real MLO views.
        pectoral = (rr + cc + 0.12 * rr * cc) <= 1.0
        breast = breast | pectoral
        depth = np.where(pectoral, 1.0, depth)
    return breast, depth.astype(np.float32), pectoral


def disc_mask(shape: tuple[int, int], center_row: float, center_col: float, radius: float) -> np.ndarray:
    """Boolean disc (pixels whose centre lies within ``radius``)."""
    h, w = shape
    rows = (np.arange(h, dtype=np.float32)[:, None] - center_row) ** 2
    cols = (np.arange(w, dtype=np.float32)[None, :] - center_col) ** 2
    return (rows + cols) <= radius * radius


def _window(shape: tuple[int, int], row: int, col: int, half: int) -> tuple[slice, slice, int, int]:
    r0, c0 = max(0, row - half), max(0, col - half)
    r1, c1 = min(shape[0], row + half + 1), min(shape[1], col + half + 1)
    return slice(r0, r1), slice(c0, c1), r0, c0


def _local_distance(shape: tuple[int, int], row: int, col: int, half: int, r0: int, c0: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    rows = np.arange(r0, min(shape[0], row + half + 1), dtype=np.float32)[:, None] - row
    cols = np.arange(c0, min(shape[1], col + half + 1), dtype=np.float32)[None, :] - col
    return np.sqrt(rows * rows + cols * cols), np.arctan2(rows, cols)


def _ring_mean(img: np.ndarray, dist: np.ndarray, inside: np.ndarray, radius: float) -> float:
    ring = (dist > radius * 1.1) & (dist <= radius * 1.8) & inside
    return float(img[ring].mean()) if ring.any() else float(img[inside].mean())


def draw_lesion(img: np.ndarray, tissue: np.ndarray, lesion: PhantomLesion, rng: np.random.Generator) -> None:
    """Draw one lesion into ``img`` (float, in place), brighter than the tissue around it.

    The lesion's value is pulled towards the mean of the surrounding ring plus a contrast, keeping a little
    of the underlying texture, so that a lesion stands out whatever the local density.
    """
    import cv2

    scale = min(img.shape) / 1024.0
    radius = float(lesion.radius)
    half = int(np.ceil(radius)) + 2
    rs, cs, r0, c0 = _window(img.shape, lesion.center_row, lesion.center_col, half)
    local = img[rs, cs]
    dist, theta = _local_distance(img.shape, lesion.center_row, lesion.center_col, half, r0, c0)
    base = _ring_mean(tissue[rs, cs], dist, tissue[rs, cs] > BACKGROUND * 2, radius)
    malignant = lesion.label == "malignant"

    if lesion.kind == "circumscribed":
        contrast = 0.14 if malignant else 0.11
        edge = radius * np.ones_like(dist)
        if malignant:  # lobulated margin, always within the enclosing radius
            ph = rng.uniform(0, 2 * np.pi, 2)
            edge = radius * (0.86 + 0.07 * np.sin(3 * theta + ph[0]) + 0.05 * np.sin(5 * theta + ph[1]))
        soft = max(1.5, 0.18 * radius)
        weight = np.clip((edge - dist) / soft, 0.0, 1.0)
        target = min(0.95, base + contrast) + 0.03 * np.sqrt(np.clip(1 - (dist / radius) ** 2, 0, 1))
        local[...] = local * (1 - 0.8 * weight) + 0.8 * weight * target
    elif lesion.kind == "spiculated":
        core = radius * rng.uniform(0.38, 0.48)
        weight = np.clip((core - dist) / max(1.5, 0.2 * core), 0.0, 1.0)
        target = min(0.95, base + 0.14)
        local[...] = local * (1 - 0.8 * weight) + 0.8 * weight * target
        lines = np.zeros_like(local)
        n_spicules = int(rng.integers(10, 18))
        thickness = max(1, int(round(2 * scale)))
        for angle in rng.uniform(0, 2 * np.pi, n_spicules):
            length = radius * rng.uniform(0.75, 0.97)
            end = (int(round(lesion.center_col - c0 + length * np.cos(angle))),
                   int(round(lesion.center_row - r0 + length * np.sin(angle))))
            start = (lesion.center_col - c0, lesion.center_row - r0)
            cv2.line(lines, start, end, 1.0, thickness, lineType=cv2.LINE_AA)
        lines = cv2.GaussianBlur(lines, (0, 0), max(0.6, 0.8 * scale))
        lines[dist > radius] = 0.0
        local += 0.09 * lines * (1 - weight)
    elif lesion.kind == "calcification":
        n_dots = int(rng.integers(12, 26)) if malignant else int(rng.integers(5, 11))
        dot_radius = (1.0, 2.2) if malignant else (1.8, 3.5)
        dots = np.zeros_like(local)
        spread = radius * 0.45
        placed = 0
        while placed < n_dots:
            dr, dc = rng.normal(0.0, spread, 2)
            size = max(1, int(round(rng.uniform(*dot_radius) * max(scale, 0.35))))
            if np.hypot(dr, dc) + size > radius * 0.95:
                continue
            centre = (int(round(lesion.center_col - c0 + dc)), int(round(lesion.center_row - r0 + dr)))
            cv2.circle(dots, centre, size, 1.0, -1, lineType=cv2.LINE_AA)
            placed += 1
        dots = cv2.GaussianBlur(dots, (0, 0), 0.6)
        target = min(1.0, base + 0.35)
        local[...] = np.maximum(local, local * (1 - dots) + dots * target)
    else:
        raise ValueError(f"unknown lesion kind {lesion.kind!r}; use one of {KINDS}")
    np.clip(local, 0.0, 1.0, out=local)


def place_lesion(rng: np.random.Generator, allowed: np.ndarray, radius: int, taken: list[PhantomLesion]
                 ) -> tuple[int, int, int] | None:
    """A centre whose whole disc lies in ``allowed`` and away from earlier lesions (shrinks if needed)."""
    import cv2

    dist = cv2.distanceTransform(np.pad(allowed, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    for _ in range(6):
        ok = dist > radius + 1
        for other in taken:
            ok &= ~disc_mask(allowed.shape, other.center_row, other.center_col, other.radius + radius + 2)
        candidates = np.flatnonzero(ok)
        if candidates.size:
            flat = int(candidates[rng.integers(candidates.size)])
            return flat // allowed.shape[1], flat % allowed.shape[1], radius
        radius = max(3, int(radius * 0.8))
    return None


def lesion_radius(rng: np.random.Generator, kind: str, shape: tuple[int, int]) -> int:
    """An enclosing radius in pixels, in the range MIAS lists for the kind (scaled to the image size)."""
    side = min(shape)
    low, high = {"circumscribed": (0.025, 0.065), "spiculated": (0.04, 0.08),
                 "calcification": (0.025, 0.055)}[kind]
    return max(4, int(round(side * rng.uniform(low, high))))


def burn_in_label(img: np.ndarray, text: str, far_side_left: bool) -> tuple[int, int, int, int]:
    """Draw ``text`` in the top corner on the side away from the chest wall; returns its box."""
    import cv2

    h, w = img.shape
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = max(0.3, 1.2 * min(h, w) / 1024)
    thickness = max(1, int(round(2.5 * min(h, w) / 1024)))
    (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
    margin = max(2, int(0.025 * min(h, w)))
    col = margin if far_side_left else w - margin - tw
    row = margin + th
    ink = np.zeros((h, w), np.uint8)  # OpenCV draws text on 8-bit images only
    cv2.putText(ink, text, (col, row), font, scale, 255, thickness, lineType=cv2.LINE_AA)
    np.maximum(img, ink.astype(np.float32) * (TEXT_LEVEL / 255.0), out=img)
    return max(0, row - th - thickness), max(0, col - thickness), min(h, row + base + thickness), \
        min(w, col + tw + thickness)


def quantize(img: np.ndarray, bits: int) -> np.ndarray:
    """Float image in [0, 1] -> ``uint8`` (bits <= 8) or ``uint16`` using ``2**bits - 1`` levels."""
    top = (1 << bits) - 1
    out = np.rint(np.clip(img, 0.0, 1.0) * top)
    return out.astype(np.uint8 if bits <= 8 else np.uint16)


# --------------------------------------------------------------------------- the phantom


def make_phantom(
    seed: int | np.random.Generator | Sequence[int] = 0,
    *,
    shape: tuple[int, int] = (1024, 1024),
    laterality: str = "L",
    view: str = "MLO",
    lesions: Sequence[tuple[str, str]] = (),
    density: str = "G",
    bits: int = 8,
    patient_index: int = 0,
    label_text: str | None = None,
) -> Phantom:
    """One synthetic mammogram with known lesions.

    ``lesions`` lists ``(kind, label)`` pairs (kinds in :data:`KINDS`, labels ``benign``/``malignant``);
    a lesion that cannot be placed (breast too small) is left out with a warning. ``bits`` is the number
    of grey levels of the output (8 gives ``uint8``, 9..16 give ``uint16``). ``label_text`` defaults to
    ``"<laterality> <view>"``.
    """
    if laterality not in ("L", "R"):
        raise ValueError(f"laterality must be 'L' or 'R', got {laterality!r}")
    if view not in ("CC", "MLO"):
        raise ValueError(f"view must be 'CC' or 'MLO', got {view!r}")
    if density not in DENSITIES:
        raise ValueError(f"density must be one of {DENSITIES}, got {density!r}")
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be 1..16, got {bits}")
    if min(shape) < 32:
        raise ValueError(f"phantoms need at least 32x32 pixels, got {shape}")
    for kind, label in lesions:
        if kind not in KINDS or label not in LESION_LABELS:
            raise ValueError(f"unknown lesion {(kind, label)}; kinds {KINDS}, labels {LESION_LABELS}")
    import cv2

    rng = _rng(seed)
    h, w = shape
    breast, depth, pectoral = breast_geometry(rng, shape, view)

    # Tissue: a fatty base that thins towards the skin line, plus fibroglandular texture.
    # Fibroglandular tissue gathers behind the nipple and towards the chest wall, less near the skin.
    centrality = np.exp(-((np.arange(w, dtype=np.float32)[None, :] / (0.55 * w)) ** 2))
    centrality = centrality * np.ones((h, 1), np.float32)
    texture = smooth_noise(rng, shape, (0.10, 0.04, 0.012, 0.004), (1.0, 0.7, 0.35, 0.2), stretch=2.0)
    glandular = 1.0 / (1.0 + np.exp(-1.8 * (texture + _DENSITY_BIAS[density] + 1.2 * (centrality - 0.5))))
    tissue = (0.30 + 0.16 * depth + 0.32 * glandular * depth) * (0.35 + 0.65 * np.sqrt(depth))
    if pectoral is not None:
        muscle = 0.72 + 0.03 * smooth_noise(rng, shape, (0.03,), (1.0,))
        soft = cv2.GaussianBlur(pectoral.astype(np.float32), (0, 0), max(1.0, 0.004 * min(h, w)))
        tissue = tissue * (1 - soft) + muscle * soft
    img = np.where(breast, tissue, BACKGROUND).astype(np.float32)
    tissue_only = img.copy()

    # Lesions: inside the breast, outside the muscle, not overlapping.
    allowed = breast & ~pectoral if pectoral is not None else breast.copy()
    allowed &= depth > 0.6  # away from the thin skin-line zone
    placed: list[PhantomLesion] = []
    for kind, label in lesions:
        spot = place_lesion(rng, allowed, lesion_radius(rng, kind, shape), placed)
        if spot is None:
            log.warning("no room for a %s lesion in a %dx%d phantom: left out", kind, h, w)
            continue
        lesion = PhantomLesion(center_row=int(spot[0]), center_col=int(spot[1]), radius=int(spot[2]),
                               kind=kind, label=label)
        draw_lesion(img, tissue_only, lesion, rng)
        placed.append(lesion)

    # Imaging: a little blur (detector/film resolution), then quantum/film noise.
    img = cv2.GaussianBlur(img, (0, 0), max(0.5, 0.7 * min(h, w) / 1024))
    img += rng.normal(0.0, 0.012, img.shape).astype(np.float32)
    img = np.where(breast, img, BACKGROUND + np.abs(img - BACKGROUND))

    lesion_mask = np.zeros(shape, bool)
    for lesion in placed:
        lesion_mask |= disc_mask(shape, lesion.center_row, lesion.center_col, lesion.radius)

    if laterality == "R":  # mirror: the chest wall goes to the last column
        img, breast, lesion_mask = img[:, ::-1], breast[:, ::-1], lesion_mask[:, ::-1]
        pectoral = pectoral[:, ::-1] if pectoral is not None else None
        for lesion in placed:
            lesion.center_col = w - 1 - lesion.center_col
    img = np.ascontiguousarray(img)
    text = label_text if label_text is not None else f"{laterality} {view}"
    box = burn_in_label(img, text, far_side_left=laterality == "R") if text else None
    if box is not None and breast[box[0]:box[2], box[1]:box[3]].any():
        log.warning("the burned-in label overlaps the breast in a %dx%d phantom", h, w)

    return Phantom(
        image=quantize(img, bits),
        breast_mask=np.ascontiguousarray(breast),
        lesions=placed,
        lesion_mask=np.ascontiguousarray(lesion_mask),
        laterality=laterality,
        view=view,
        patient_index=patient_index,
        density=density,
        pectoral_mask=np.ascontiguousarray(pectoral) if pectoral is not None else None,
        text_box=box,
    )


# --------------------------------------------------------------------------- datasets

GROUND_TRUTH_FILE = "ground_truth.json"
# Bumped whenever the drawing changes, so an old demo folder is not mistaken for a finished new one.
GENERATOR_VERSION = 1


def _lesion_dict(lesion: PhantomLesion, **more: Any) -> dict[str, Any]:
    return {**asdict(lesion), **more}


def _resume_or_start(out: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    """The finished ground truth if ``out`` already holds this very dataset; ``None`` to (re)generate.

    Generation is deterministic, so an interrupted run is simply redone; a folder holding a *different*
    demo dataset is refused rather than mixed.
    """
    path = out / GROUND_TRUTH_FILE
    if not path.exists():
        return None
    try:
        done = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if done.get("params") == params:
        log.info("%s already holds this demo dataset: nothing to do", out)
        return done
    raise ConfigError(f"{out} already holds a different demo dataset ({done.get('params')}). "
                      "Fix: choose another --out folder or delete this one")


def _write_ground_truth(out: Path, truth: dict[str, Any]) -> None:
    atomic_write_text(out / GROUND_TRUTH_FILE, json.dumps(truth, indent=1, sort_keys=True) + "\n")


def write_mias_dataset(out: str | Path, n_images: int = 24, seed: int = 0, size: int = 1024) -> dict[str, Any]:
    """A MIAS-like folder: ``mdb001.pgm``... (8-bit P5, MLO views), ``Info.txt`` and ``ground_truth.json``.

    Consecutive pairs are the two breasts of one patient; as the MIAS notes say, even numbers are left
    breasts and odd numbers right ones. About a third of the images have lesions (some several); their
    ``Info.txt`` lines use the MIAS origin at the bottom-left (``x = col``, ``y = size - row``).
    ``ground_truth.json`` gives the same lesions in row/col. Returns the ground truth.
    """
    if n_images < 1:
        raise ValueError("n_images must be at least 1")
    out = Path(out)
    params = {"format": "mias", "n_images": n_images, "seed": seed, "size": size, "version": GENERATOR_VERSION}
    done = _resume_or_start(out, params)
    if done is not None:
        return done
    out.mkdir(parents=True, exist_ok=True)
    plan = np.random.default_rng([seed, 0])
    abnormal = set(plan.choice(n_images, size=max(1, round(n_images / 3)), replace=False).tolist())
    densities = plan.choice(DENSITIES, size=(n_images + 1) // 2, p=[0.35, 0.35, 0.3])
    lines: list[str] = []
    images: list[dict[str, Any]] = []
    for k in progress(range(1, n_images + 1), desc="MIAS phantoms", total=n_images, unit="img"):
        refnum, patient = f"mdb{k:03d}", (k - 1) // 2
        laterality = "L" if k % 2 == 0 else "R"
        wanted: list[tuple[str, str]] = []
        if k - 1 in abnormal:
            for _ in range(2 if plan.random() < 0.15 else 1):
                wanted.append((str(plan.choice(KINDS, p=[0.4, 0.3, 0.3])),
                               str(plan.choice(LESION_LABELS, p=[0.55, 0.45]))))
        density = str(densities[patient])
        phantom = make_phantom([seed, k], shape=(size, size), laterality=laterality, view="MLO", lesions=wanted,
                               density=density, bits=8, patient_index=patient)
        write_pgm(out / f"{refnum}.pgm", phantom.image)
        lesions = []
        for lesion in phantom.lesions:
            x, y = mias_xy(lesion.center_row, lesion.center_col, size)
            lines.append(mias_line(refnum, density, lesion.kind, lesion.label, x, y, lesion.radius))
            lesions.append(_lesion_dict(lesion, mias_class=MIAS_CLASS[lesion.kind], x=x, y=y))
        if not phantom.lesions:
            lines.append(mias_line(refnum, density))
        images.append({"refnum": refnum, "file": f"{refnum}.pgm", "patient_index": patient,
                       "laterality": laterality, "view": "MLO", "background": density, "height": size,
                       "width": size, "lesions": lesions, "text_box": list(phantom.text_box or ())})
    info = mias_header(seed, n_images, size) + "\n".join(lines) + "\n\n" + "=" * 65 + "\n"
    atomic_write_text(out / "Info.txt", info)
    truth = {"params": params, "coordinates": "row/col, row 0 at the top", "images": images}
    _write_ground_truth(out, truth)
    return truth


@dataclass
class _Breast:
    patient_id: str
    patient_number: int
    laterality: str
    abnormality: str  # mass / calc
    split: str  # Training / Test
    density: int  # BI-RADS breast density 1..4
    findings: list[dict[str, Any]]  # per abnormality: kind, label, pathology and the CSV attributes
    views: tuple[str, ...]


def _finding(rng: np.random.Generator, abnormality: str) -> dict[str, Any]:
    pathology = str(rng.choice(PATHOLOGIES, p=[0.4, 0.4, 0.2]))
    label = "malignant" if pathology == "MALIGNANT" else "benign"
    if abnormality == "mass":
        kind = "spiculated" if rng.random() < (0.65 if label == "malignant" else 0.15) else "circumscribed"
        attributes = {"mass shape": str(rng.choice(MASS_SHAPES[kind])),
                      "mass margins": str(rng.choice(MASS_MARGINS[kind]))}
    else:
        kind = "calcification"
        attributes = {"calc type": str(rng.choice(CALC_TYPES[label])),
                      "calc distribution": str(rng.choice(CALC_DISTRIBUTIONS))}
    assessment = int(rng.choice([4, 5])) if label == "malignant" else int(rng.choice([2, 3, 4]))
    return {"kind": kind, "label": label, "pathology": pathology, "assessment": assessment,
            "subtlety": int(rng.integers(1, 6)), **attributes}


def _plan_cbis(rng: np.random.Generator, n_images: int) -> list[_Breast]:
    """Patients with one or both breasts, each breast seen in CC and MLO, one abnormality type per breast.

    Splits are drawn per patient and abnormality type (so each type's split is patient-disjoint); some
    patients have a mass in one breast and calcifications in the other, and the first such patient is put
    in different splits for the two types, as happens in the real CSVs.
    """
    breasts: list[_Breast] = []
    remaining, number, both_seen = n_images, 0, False
    while remaining > 0:
        number += int(rng.integers(1, 4))
        pid = f"P_{number:05d}"
        both = remaining >= 4 and (not both_seen and n_images >= 8 or rng.random() < 0.15)
        if both:
            types = ["mass", "calc"] if rng.random() < 0.5 else ["calc", "mass"]
        else:  # the rarer type so far, so that both types (and so all four CSVs) fill up
            count = {t: len({b.patient_id for b in breasts if b.abnormality == t}) for t in ("mass", "calc")}
            rarer = min(count, key=count.get) if count["mass"] != count["calc"] else str(rng.choice(["mass", "calc"]))
            types = [rarer] * (2 if remaining >= 4 and rng.random() < 0.4 else 1)
        sides = ["L", "R"] if rng.random() < 0.5 else ["R", "L"]
        splits = {t: ("Test" if rng.random() < 0.3 else "Training") for t in set(types)}
        if both and not both_seen:
            splits = {"mass": "Training", "calc": "Test"} if rng.random() < 0.5 else \
                {"mass": "Test", "calc": "Training"}
            both_seen = True
        for abnormality, side in zip(types, sides, strict=False):
            views = ("CC", "MLO") if remaining >= 2 else ("CC",)
            remaining -= len(views)
            n_findings = 2 if rng.random() < 0.2 else 1
            findings = [_finding(rng, abnormality) for _ in range(n_findings)]
            breasts.append(_Breast(pid, number, side, abnormality, splits[abnormality],
                                   int(rng.integers(1, 5)), findings, views))
            if remaining <= 0:
                break
    _cover_both_splits(breasts)
    return breasts


def _cover_both_splits(breasts: list[_Breast]) -> None:
    """Move a patient to the other split when all of a type's patients fell in one (fills all four CSVs)."""
    for abnormality in ("mass", "calc"):
        mine = [b for b in breasts if b.abnormality == abnormality]
        patients = sorted({b.patient_id for b in mine})
        if len(patients) >= 2 and len({b.split for b in mine}) == 1:
            # Prefer a patient with only this type, so the mass/calc split mismatch of another stays.
            single = [p for p in patients
                      if all(b.abnormality == abnormality for b in breasts if b.patient_id == p)]
            chosen = (single or patients)[-1]
            moved = "Test" if mine[0].split == "Training" else "Training"
            for breast in mine:
                if breast.patient_id == chosen:
                    breast.split = moved


def _patient_identity(rng: np.random.Generator, used: set[str]) -> dict[str, str]:
    """Fake but realistic identifiers for one patient (what de-identification must remove)."""
    surnames = ("HUGHES", "OKAFOR", "LINDQVIST", "MORENO", "TANAKA", "KOWALSKI", "BRENNAN", "HADDAD",
                "NGUYEN", "SCHMIDT", "OYELARAN", "FITZGERALD", "PETROVA", "ALVAREZ", "MACLEOD", "DUBOIS")
    given = ("MARGARET", "AMARA", "INGRID", "LUCIA", "YUKI", "HELENA", "SIOBHAN", "LAYLA", "MAI", "GRETA")
    while True:
        name = f"{rng.choice(surnames)}^{rng.choice(given)}^{chr(65 + int(rng.integers(26)))}"
        if name not in used:
            used.add(name)
            break

    def date(first_year: int, last_year: int) -> str:
        year = int(rng.integers(first_year, last_year + 1))
        return f"{year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"

    return {"PatientName": name, "PatientID": f"MRN-{int(rng.integers(10**7, 10**8))}",
            "PatientBirthDate": date(1935, 1975), "StudyDate": date(1998, 2007),
            "AccessionNumber": f"ACC{int(rng.integers(10**6, 10**7))}",
            "InstitutionName": "Phantom General Hospital Breast Unit"}


def _dicom_header(identity: dict[str, str], laterality: str, view: str) -> dict[str, str]:
    """Keyword arguments of :func:`mammoflow.synth.dicom_writer.write_dicom` for one image of a patient."""
    return {"patient_id": identity["PatientID"], "patient_name": identity["PatientName"],
            "birth_date": identity["PatientBirthDate"], "accession_number": identity["AccessionNumber"],
            "institution_name": identity["InstitutionName"], "study_date": identity["StudyDate"],
            "laterality": laterality, "view": view}


def _csv_row(breast: _Breast, view: str, number: int, finding: dict[str, Any], paths: tuple[str, str, str]
             ) -> dict[str, Any]:
    """One CSV line (one abnormality seen in one view), with the column names of its abnormality type."""
    full, crop, mask = paths
    row = {"patient_id": breast.patient_id,
           ("breast_density" if breast.abnormality == "mass" else "breast density"): breast.density,
           "left or right breast": {"L": "LEFT", "R": "RIGHT"}[breast.laterality], "image view": view,
           "abnormality id": number,
           "abnormality type": "mass" if breast.abnormality == "mass" else "calcification",
           "assessment": finding["assessment"], "pathology": finding["pathology"],
           "subtlety": finding["subtlety"], "image file path": full, "cropped image file path": crop,
           "ROI mask file path": mask}
    row.update({k: v for k, v in finding.items() if k in MASS_COLUMNS or k in CALC_COLUMNS})
    return row


def _csv_roi_paths(rng: np.random.Generator, roi_case: str) -> tuple[str, str]:
    """Crop and mask paths as the CSVs give them: shared UID folders, ``000000``/``000001`` in either order,
    and usually an embedded newline after the ``000001`` one."""
    folder = f"{roi_case}/{csv_uid(rng)}/{csv_uid(rng)}"
    names = ["000000.dcm", "000001.dcm"] if rng.random() < 0.5 else ["000001.dcm", "000000.dcm"]
    newline = "\n" if rng.random() < 0.75 else ""
    crop, mask = (f"{folder}/{n}" + (newline if n == "000001.dcm" else "") for n in names)
    return crop, mask


def _write_abnormality(out: Path, rng: np.random.Generator, roi_case: str, phantom: Phantom,
                       lesion: PhantomLesion, write: Callable[..., None]) -> dict[str, Any]:
    """Write the crop and the ROI mask of one lesion into one series folder, as ``1-1``/``1-2`` in random order.

    ``write(path, pixels, **kw)`` writes one DICOM with the full image's header. Returns the file names and
    the crop box (row0, col0, row1, col1; end exclusive) in the full image.
    """
    folder = Path("CBIS-DDSM", roi_case, tcia_study_folder(rng), tcia_series_folder(rng, "ROI mask images"))
    names = ["1-1.dcm", "1-2.dcm"] if rng.random() < 0.5 else ["1-2.dcm", "1-1.dcm"]
    crop_rel, mask_rel = folder / names[0], folder / names[1]
    height, width = phantom.image.shape
    half = int(lesion.radius * 1.25) + 4
    r0, c0 = max(0, lesion.center_row - half), max(0, lesion.center_col - half)
    r1, c1 = min(height, lesion.center_row + half + 1), min(width, lesion.center_col + half + 1)
    write(out / crop_rel, np.ascontiguousarray(phantom.image[r0:r1, c0:c1]), transfer_syntax="explicit_le",
          series_description="cropped images")
    mask = disc_mask((height, width), lesion.center_row, lesion.center_col, lesion.radius)
    write(out / mask_rel, mask.astype(np.uint8) * np.uint8(255), bits_stored=8, photometric="MONOCHROME2",
          transfer_syntax="rle" if rng.random() < 0.5 else "explicit_le", series_description="ROI mask images")
    return {"crop_file": crop_rel.as_posix(), "mask_file": mask_rel.as_posix(), "crop_box": [r0, c0, r1, c1]}


def _write_dicom_with(defaults: dict[str, Any], path: Path, pixels: np.ndarray, **kw: Any) -> None:
    write_dicom(path, pixels, **{**defaults, **kw})


def write_dicom_dataset(out: str | Path, n_images: int = 16, seed: int = 0,
                        size: tuple[int, int] = (640, 480)) -> dict[str, Any]:
    """A CBIS-DDSM-like folder of MG DICOMs, the four description CSVs and ``ground_truth.json``.

    Layout as a TCIA download writes it::

        out/CBIS-DDSM/Mass-Training_P_00001_LEFT_CC/<study>/<series>/1-1.dcm     full mammogram
        out/CBIS-DDSM/Mass-Training_P_00001_LEFT_CC_1/<study>/<series>/1-1.dcm   crop or ROI mask
        out/CBIS-DDSM/Mass-Training_P_00001_LEFT_CC_1/<study>/<series>/1-2.dcm   the other one
        out/mass_case_description_train_set.csv  (and the three other CSVs)

    Crop and mask are ``1-1``/``1-2`` in random order (tell them apart by content: the mask has the full
    image's size and only 0/255). The CSVs have the real headers, CRLF line ends, UID-style folder names
    that differ from the ones on disk (only the case folder matches) and ``000000.dcm``/``000001.dcm``
    names, the ``000001`` path often with an embedded trailing newline. Full images are 16-bit (BitsStored
    12, 14 or 16 per patient), some MONOCHROME1, in a mix of transfer syntaxes; headers carry fake
    identifiers (listed per image in the ground truth so that tests can check none leaks) and the Manufacturer
    ``mammoflow demo-data phantom``: the mark with which ``ingest --source dicom-dir`` reads phantoms without a
    site salt (with the public demo salt, said in records_meta.json); real images always need one.
    Returns the ground truth.
    """
    if n_images < 1:
        raise ValueError("n_images must be at least 1")
    height, width = int(size[0]), int(size[1])
    out = Path(out)
    params = {"format": "dicom", "n_images": n_images, "seed": seed, "size": [height, width],
              "version": GENERATOR_VERSION}
    done = _resume_or_start(out, params)
    if done is not None:
        return done
    rng = np.random.default_rng([seed, 1])
    breasts = _plan_cbis(rng, n_images)
    share = {"explicit_le": 5.0, "rle": 2.0, "jpeg2000": 1.5, "jpeg_lossless": 1.5}
    syntaxes = [t for t in share if t in available_transfer_syntaxes()]
    weights = np.array([share[t] for t in syntaxes]) / sum(share[t] for t in syntaxes)
    identities: dict[str, dict[str, str]] = {}
    bits_of: dict[str, int] = {}
    used_names: set[str] = set()
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {key: [] for key in CSV_FILES}
    images: list[dict[str, Any]] = []
    jobs = [(breast, view) for breast in breasts for view in breast.views]
    bar = progress(jobs, desc="DICOM phantoms", total=len(jobs), unit="img")
    for index, (breast, view) in enumerate(bar):
        pid = breast.patient_id
        if pid not in identities:
            identities[pid] = _patient_identity(rng, used_names)
            bits_of[pid] = int(rng.choice([12, 14, 16]))  # one scanner per patient
        bits = bits_of[pid]
        photometric = "MONOCHROME1" if rng.random() < 0.25 else "MONOCHROME2"
        syntax = str(rng.choice(syntaxes, p=weights))
        case = case_name(breast.abnormality, breast.split, pid, breast.laterality, view)
        phantom = make_phantom([seed, 2, index], shape=(height, width), laterality=breast.laterality,
                               view=view, lesions=[(f["kind"], f["label"]) for f in breast.findings],
                               density={1: "F", 2: "G", 3: "G", 4: "D"}[breast.density], bits=bits,
                               patient_index=breast.patient_number)
        write = partial(_write_dicom_with, {"photometric": photometric, "bits_stored": bits,
                                            **_dicom_header(identities[pid], breast.laterality, view),
                                            "extra": {"Manufacturer": PHANTOM_MANUFACTURER}})

        full_rel = Path("CBIS-DDSM", case, tcia_study_folder(rng),
                        tcia_series_folder(rng, "full mammogram images"), "1-1.dcm")
        write(out / full_rel, phantom.image, transfer_syntax=syntax,
              series_description="full mammogram images")
        csv_full = f"{case}/{csv_uid(rng)}/{csv_uid(rng)}/000000.dcm"
        lesions = []
        for number, (lesion, finding) in enumerate(zip(phantom.lesions, breast.findings, strict=False), 1):
            files = _write_abnormality(out, rng, f"{case}_{number}", phantom, lesion, write)
            csv_crop, csv_mask = _csv_roi_paths(rng, f"{case}_{number}")
            rows[(breast.abnormality, breast.split)].append(
                _csv_row(breast, view, number, finding, (csv_full, csv_crop, csv_mask)))
            lesions.append(_lesion_dict(lesion, abnormality_id=number, pathology=finding["pathology"], **files))
        if len(phantom.lesions) < len(breast.findings):
            log.warning("%s: only %d of %d lesions fit the image", case, len(phantom.lesions),
                        len(breast.findings))
        images.append({"case": case, "file": full_rel.as_posix(), "patient_id": pid,
                       "abnormality": breast.abnormality, "split": breast.split,
                       "laterality": breast.laterality, "view": view, "photometric": photometric,
                       "transfer_syntax": syntax, "bits_stored": bits, "height": height, "width": width,
                       "lesions": lesions, "header_identifiers": dict(identities[pid])})
    for (abnormality, split), name in CSV_FILES.items():
        ordered = sorted(rows[(abnormality, split)], key=lambda r: (
            r["patient_id"], r["left or right breast"], r["image view"], r["abnormality id"]))
        columns = MASS_COLUMNS if abnormality == "mass" else CALC_COLUMNS
        atomic_write_bytes(out / name, cbis_csv_text(columns, ordered).encode("utf-8"))
    truth = {"params": params, "coordinates": "row/col, row 0 at the top", "images": images,
             "csv_files": sorted(CSV_FILES.values())}
    _write_ground_truth(out, truth)
    return truth
