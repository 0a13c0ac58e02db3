"""One synthetic mammogram with known ground truth (:func:`make_phantom`): the image of the demo data and of the tests.

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

:mod:`mammoflow.synth.phantoms` lays phantoms out as datasets (MIAS-like and CBIS-DDSM-like folders).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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
