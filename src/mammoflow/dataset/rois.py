"""Cutting model inputs out of a mammogram: lesion ROIs, normal ROIs, whole images and lesion crops.

Pure numpy functions (no I/O). Each returns the example image and the box it was cut from, as an
``(r0, c0, r1, c1)`` half-open box in the source image's pixel coordinates (:data:`mammoflow.preprocess.ops.BBox`);
the box lies inside the image except when the image is smaller than the ROI, where it extends past the border
and the outside is zero-padded. :func:`box_transform` maps source coordinates (lesion centres, masks) into the
example.

Methods:

- Yu et al. 2020, "Data preprocessing": a 120x120 square centred on the annotated lesion centre; normal ROIs of
  the same size inside the breast (the authors clicked them by hand; here they are sampled, seeded, see
  :func:`sample_normal_centres`); the non-breast area removed; rescaled to 120x120.
- Jaamour et al. 2023, "Image pre-processing": the whole image resized to a square, optionally with padding to
  keep the aspect ratio (:func:`whole_image`).
- Xi et al. 2018, "Datasets": patches cropped around each lesion's ROI mask (:func:`lesion_crop`).

An ROI that cannot be an example raises :class:`~mammoflow.errors.InputError` (code ``empty_roi``, see
:func:`check_roi`) instead of becoming an all-black "tumour": its box lies mostly outside the image (a huge
radius with ``scale_to_radius``), or almost none of its pixels is non-zero (a lesion centre in the image's black
background, zeroed by the breast mask). ``build-dataset`` quarantines the record with that reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mammoflow.errors import InputError
from mammoflow.preprocess import ops
from mammoflow.preprocess.ops import BBox, Transform

# (row, col, radius) of a lesion to keep away from; radius may be 0 when unknown.
LesionDisk = tuple[float, float, float]

# An ROI needs at least half of its box inside the image and 1% of its pixels non-zero (see check_roi).
MIN_INSIDE_FRACTION = 0.5
MIN_CONTENT_FRACTION = 0.01


def example_id(record_id: str, kind: str, k: int | None = None) -> str:
    """Stable id of one example: ``{record_id}#lesion{k}``, ``{record_id}#normal{k}`` or ``{record_id}#image``."""
    if kind not in ("lesion", "normal", "image"):
        raise ValueError(f"example_id: kind must be lesion, normal or image, got {kind!r}")
    if kind == "image":
        return f"{record_id}#image"
    if k is None or k < 0:
        raise ValueError(f"example_id: a {kind} example needs an index k >= 0")
    return f"{record_id}#{kind}{k}"


# --------------------------------------------------------------------------------------------------- geometry


def square_box(center_row: float, center_col: float, side: int, shape: tuple[int, int]) -> BBox:
    """A ``side`` x ``side`` box centred on ``(center_row, center_col)``, shifted (not cut) to fit the image.

    Near a border the box slides inwards so that the ROI keeps its size and holds only image pixels (the
    lesion is then off-centre). Along an axis where the image is smaller than ``side`` the box is centred on
    the image and extends past both borders (those pixels are padded with zeros by :func:`crop_padded`).
    """
    if side < 1:
        raise ValueError(f"square_box: side must be >= 1, got {side}")
    h, w = shape[:2]

    def start(center: float, length: int) -> int:
        if length < side:
            return -((side - length) // 2)
        # Pixel ``center`` sits at index side // 2 of the box (exact centre for odd sides).
        return int(min(max(round(center) - side // 2, 0), length - side))

    r0, c0 = start(center_row, h), start(center_col, w)
    return r0, c0, r0 + side, c0 + side


def crop_padded(img: np.ndarray, box: BBox) -> np.ndarray:
    """The pixels of ``box`` (half-open, may extend past the image); pixels outside the image are zero."""
    r0, c0, r1, c1 = (int(v) for v in box)
    if r1 <= r0 or c1 <= c0:
        raise ValueError(f"crop_padded: empty box {box}")
    h, w = img.shape[:2]
    out = np.zeros((r1 - r0, c1 - c0), dtype=img.dtype)
    sr0, sc0, sr1, sc1 = max(r0, 0), max(c0, 0), min(r1, h), min(c1, w)
    if sr1 > sr0 and sc1 > sc0:
        out[sr0 - r0:sr1 - r0, sc0 - c0:sc1 - c0] = img[sr0:sr1, sc0:sc1]
    return out


def box_transform(box: BBox, size: int | tuple[int, int]) -> Transform:
    """Source pixel coordinates -> coordinates in the example cut from ``box`` and resized to ``size``."""
    out_h, out_w = (size, size) if isinstance(size, int) else size
    r0, c0, r1, c1 = box
    return Transform.translation(-r0, -c0).then(Transform.scaling(out_h / (r1 - r0), out_w / (c1 - c0)))


def _cut(img: np.ndarray, box: BBox, size: int, breast_mask: np.ndarray | None) -> np.ndarray:
    """Crop ``box`` (zero-padded), zero the non-breast area, resize to ``size`` x ``size``."""
    roi = crop_padded(img, box)
    if breast_mask is not None:
        if breast_mask.shape != img.shape[:2]:
            raise ValueError(f"breast mask shape {breast_mask.shape} differs from the image's {img.shape[:2]}")
        roi = ops.remove_background(roi, crop_padded(breast_mask.astype(bool), box))
    if roi.shape != (size, size):
        roi, _ = ops.resize(roi, (size, size))
    return roi


def inside_fraction(box: BBox, shape: tuple[int, ...]) -> float:
    """The share of ``box``'s pixels that lie inside an image of ``shape``."""
    r0, c0, r1, c1 = box
    h, w = shape[:2]
    inside = max(0, min(r1, h) - max(r0, 0)) * max(0, min(c1, w) - max(c0, 0))
    return inside / float(max((r1 - r0) * (c1 - c0), 1))


def check_roi(roi: np.ndarray, box: BBox, shape: tuple[int, ...], what: str = "ROI", path: object = "",
              min_inside: float = MIN_INSIDE_FRACTION, min_content: float = MIN_CONTENT_FRACTION) -> None:
    """Refuse an ROI that would be a meaningless example (InputError, code ``empty_roi``).

    ``box`` must have at least ``min_inside`` of its pixels inside the image (the rest is zero padding), and the
    cut ROI at least ``min_content`` of its pixels non-zero (after the non-breast area is zeroed).
    """
    inside = inside_fraction(box, shape)
    fix = ("check the annotation's centre and radius (and their origin); a lesion in the image's background or "
           "larger than the image cannot be cut as an ROI")
    if inside < min_inside:
        raise InputError(path, f"{what}: only {inside:.0%} of its box {tuple(int(v) for v in box)} lies inside the "
                         f"{shape[0]}x{shape[1]} image (the rest would be zero padding)", fix, code="empty_roi")
    content = float(np.count_nonzero(roi)) / max(roi.size, 1)
    if content < min_content:
        raise InputError(path, f"{what}: {content:.1%} of its pixels are non-zero (it lies in the black background or "
                         "outside the breast), so it would be an empty example", fix, code="empty_roi")


# --------------------------------------------------------------------------------------------------- Yu et al.


def lesion_roi(image: np.ndarray, center_row: float, center_col: float, size: int = 120,
               breast_mask: np.ndarray | None = None, radius: float | None = None,
               scale_to_radius: bool = False, margin: float = 1.2, what: str | None = None,
               path: object = "") -> tuple[np.ndarray, BBox]:
    """A ``size`` x ``size`` ROI centred on a lesion (Yu et al. 2020: 120x120 around the annotated centre).

    The square is clamped inside the image (shifted, not padded, near a border), the non-breast area is zeroed
    when ``breast_mask`` is given, and the result is resized to ``size``. With ``scale_to_radius`` the side is
    ``max(size, 2 * radius * margin)`` so that a large lesion fits whole, then resized down to ``size``;
    Yu et al. used the fixed side (a radius of 60 covers >= 70% of the MIAS lesions). An empty ROI raises
    InputError ``empty_roi`` (:func:`check_roi`), named by ``what`` (e.g. ``"lesion mias:mdb001:1"``).
    """
    if size < 1:
        raise ValueError(f"lesion_roi: size must be >= 1, got {size}")
    side = size
    if scale_to_radius and radius is not None and radius > 0:
        side = max(size, math.ceil(2.0 * radius * margin))
    box = square_box(center_row, center_col, side, image.shape)
    roi = _cut(image, box, size, breast_mask)
    check_roi(roi, box, image.shape, what or f"the {side}x{side} ROI centred at row {center_row:.0f}, col "
              f"{center_col:.0f}", path)
    return roi, box


def _window_counts(mask: np.ndarray, side: int) -> np.ndarray:
    """Number of True pixels in every ``side`` x ``side`` window lying fully inside ``mask``.

    Entry ``[r0, c0]`` is the window with top-left corner ``(r0, c0)``; computed with an integral image
    (int32 when it fits: a 4000x3000 CBIS-DDSM mask then needs 48 MB, not 96).
    """
    dtype = np.int32 if mask.size < 2**31 else np.int64
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=dtype)
    np.cumsum(np.cumsum(mask, axis=0, dtype=dtype), axis=1, out=integral[1:, 1:])
    return integral[side:, side:] - integral[:-side, side:] - integral[side:, :-side] + integral[:-side, :-side]


def sample_normal_centres(breast_mask: np.ndarray, n: int, size: int, rng: np.random.Generator,
                          avoid: Sequence[LesionDisk] = (), min_distance: float = 0.0,
                          min_breast_fraction: float = 0.9, min_separation: float = 0.0,
                          stride: int | None = None, path: object = "") -> list[tuple[int, int]]:
    """Seeded random centres for ``n`` normal ROIs of side ``size`` (Yu et al. 2020, "normal ROIs").

    A centre is valid when it is a breast pixel, the ``size`` x ``size`` ROI around it (the same box
    :func:`lesion_roi` cuts) lies inside the image with at least ``min_breast_fraction`` of its pixels in the
    breast, and it is at least ``min_distance`` pixels from the edge of every lesion in ``avoid``
    (``distance to the lesion centre - radius``). Chosen centres are at least ``min_separation`` apart.
    Candidates lie on a grid of step ``stride`` (default: 1 up to about 1 megapixel, coarser above, so that a
    full-resolution CBIS-DDSM image does not need hundreds of MB of candidate coordinates).

    Returns up to ``n`` centres ``(row, col)`` (fewer only if ``min_separation`` leaves too few), in sampling
    order. The same mask, arguments and generator state give the same centres.
    Raises :class:`InputError` (code ``no_normal_roi``) when no valid centre exists.
    """
    if n < 0 or size < 1:
        raise ValueError(f"sample_normal_centres: need n >= 0 and size >= 1, got n={n}, size={size}")
    if not 0.0 <= min_breast_fraction <= 1.0:
        raise ValueError(f"sample_normal_centres: min_breast_fraction must be in [0, 1], got {min_breast_fraction}")
    if n == 0:
        return []
    mask = np.asarray(breast_mask, dtype=bool)
    h, w = mask.shape
    half = size // 2
    if h < size or w < size:
        raise InputError(path, f"the {h}x{w} image is smaller than one {size}x{size} normal ROI",
                         "use a smaller roi_size or whole_image mode for this dataset", code="no_normal_roi")
    # Window with top-left (r0, c0) <-> centre (r0 + half, c0 + half), as in square_box.
    valid = _window_counts(mask, size) >= math.ceil(min_breast_fraction * size * size - 1e-9)
    valid &= mask[half:half + valid.shape[0], half:half + valid.shape[1]]
    if stride is None:
        stride = max(1, round(math.sqrt(h * w / float(1 << 20))))
    rows, cols = np.nonzero(valid[::stride, ::stride])
    rows, cols = rows * stride + half, cols * stride + half
    for lr, lc, radius in avoid:
        keep = np.hypot(rows - lr, cols - lc) - (radius or 0.0) >= min_distance
        rows, cols = rows[keep], cols[keep]
    if rows.size == 0:
        raise InputError(
            path,
            f"no {size}x{size} normal ROI fits with >= {min_breast_fraction:.0%} breast pixels"
            + (f" and >= {min_distance:g} px from the {len(avoid)} lesion(s)" if avoid else ""),
            "lower min_breast_fraction / min_distance_from_lesion or roi_size, or check the breast mask",
            code="no_normal_roi")
    chosen: list[tuple[int, int]] = []
    if min_separation <= 0:
        picks = rng.choice(rows.size, size=min(n, rows.size), replace=False)
        return [(int(rows[i]), int(cols[i])) for i in picks]
    for i in rng.permutation(rows.size):
        r, c = int(rows[i]), int(cols[i])
        if all(math.hypot(r - pr, c - pc) >= min_separation for pr, pc in chosen):
            chosen.append((r, c))
            if len(chosen) == n:
                break
    return chosen


# --------------------------------------------------------------------------------------------------- Jaamour et al.


def whole_image(image: np.ndarray, size: int | tuple[int, int], pad: bool = True,
                breast_mask: np.ndarray | None = None) -> tuple[np.ndarray, Transform]:
    """The whole mammogram resized to ``size`` (Jaamour et al. 2023: 512x512 baseline).

    ``pad=True`` keeps the aspect ratio and pads with zeros ("resize with padding", their Fig 4); ``pad=False``
    stretches. Returns the image and the source -> output :class:`Transform`.
    """
    out_size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if breast_mask is not None:
        image = ops.remove_background(image, breast_mask.astype(bool))
    if pad:
        return ops.resize_with_padding(image, out_size)
    return ops.resize(image, out_size)


# --------------------------------------------------------------------------------------------------- Xi et al.


def lesion_crop(image: np.ndarray, size: int, mask: np.ndarray | None = None,
                center: tuple[float, float] | None = None, radius: float | None = None,
                context: float = 0.2, min_side: int = 32, breast_mask: np.ndarray | None = None,
                what: str | None = None, path: object = "") -> tuple[np.ndarray, BBox]:
    """A square crop around one lesion, resized to ``size`` (Xi et al. 2018: patches around the ROI masks).

    The lesion's extent is the bounding box of ``mask`` (its True pixels), else the disk ``center``/``radius``.
    The square side is ``max(extent height, extent width) * (1 + 2 * context)`` (at least ``min_side``), centred
    on the extent and clamped inside the image like :func:`lesion_roi`; square so that resizing does not
    distort the lesion's shape.
    """
    if mask is not None:
        if mask.shape != image.shape[:2]:
            raise ValueError(f"lesion_crop: mask shape {mask.shape} differs from the image's {image.shape[:2]}")
        r0, c0, r1, c1 = ops.mask_bbox(mask.astype(bool))
        extent = max(r1 - r0, c1 - c0)
        cr, cc = (r0 + r1 - 1) / 2.0, (c0 + c1 - 1) / 2.0
    elif center is not None and radius is not None and radius > 0:
        cr, cc = center
        extent = 2.0 * radius
    else:
        raise ValueError("lesion_crop: give a lesion mask, or a centre and a positive radius")
    side = max(int(math.ceil(extent * (1.0 + 2.0 * context))), min_side)
    box = square_box(cr, cc, side, image.shape)
    roi = _cut(image, box, size, breast_mask)
    check_roi(roi, box, image.shape, what or f"the {side}x{side} lesion crop centred at row {cr:.0f}, col {cc:.0f}",
              path)
    return roi, box


def disk_mask(shape: tuple[int, int], center_row: float, center_col: float, radius: float) -> np.ndarray:
    """Boolean disk (a lesion given as centre + radius, as in MIAS) of the given image shape."""
    rr, cc = np.ogrid[:shape[0], :shape[1]]
    return (rr - center_row) ** 2 + (cc - center_col) ** 2 <= radius ** 2
