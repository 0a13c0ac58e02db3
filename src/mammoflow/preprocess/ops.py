"""Small pure image functions: numpy in, numpy out, no I/O.

Every function takes a 2-D greyscale image (``uint8`` or ``uint16``; a few also take ``float32``) and returns a new
array; the input is never modified. Intensity steps keep the dtype. Steps that move pixels (crop, resize, pad,
flip) return ``(image, Transform)`` so that lesion centres, radii and masks can follow the image
(see :class:`Transform`).

Sources of the steps:

- Yu et al. 2020 (Sci. Rep.), "Data preprocessing": median filter -> CLAHE -> remove the non-breast area.
- Jaamour et al. 2023 (PLoS ONE), "Image pre-processing": Gaussian filter (sigma 0.5) -> histogram
  equalisation; resize with padding to keep the aspect ratio; their "future work" asks for Otsu segmentation,
  label (artefact) removal and cropping to the breast, which :func:`breast_mask` and :func:`mask_bbox` provide.
- Xi et al. 2018: whole mammograms fed to a patch classifier; cropping to the breast and a fixed intensity range.

Orientation convention: after :func:`flip_horizontal` of a right-facing image, every breast lies against the
**left** image edge (chest wall on the left, nipple pointing right), as a left breast is displayed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from mammoflow.lut import lookup, min_max
from mammoflow.masks import nonzero_box

BBox = tuple[int, int, int, int]  # (r0, c0, r1, c1), half-open: rows r0..r1-1, cols c0..c1-1
Interpolation = Literal["auto", "area", "linear", "nearest"]
OutDType = Literal["uint8", "uint16", "float32"]

_INTEGER_DTYPES = (np.uint8, np.uint16)
_CV_INTERPOLATION = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR,
                     # NEAREST_EXACT uses the pixel-centre convention of Transform; plain NEAREST is shifted.
                     "nearest": cv2.INTER_NEAREST_EXACT}


# --------------------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True, eq=False)
class Transform:
    """An affine map from input pixel ``(row, col)`` to output pixel ``(row, col)``.

    ``matrix`` is 2x3: ``[row', col'] = matrix[:, :2] @ [row, col] + matrix[:, 2]``. Pixel centres sit at integer
    coordinates (pixel ``(0, 0)`` covers ``[-0.5, 0.5)``), the convention of OpenCV's resize, so a lesion centre
    given as a pixel index maps to the pixel index of the same tissue.
    """

    matrix: np.ndarray

    def __post_init__(self) -> None:
        m = np.array(self.matrix, dtype=np.float64)
        if m.shape != (2, 3) or not np.all(np.isfinite(m)):
            raise ValueError(f"a Transform needs a finite 2x3 matrix, got shape {m.shape}")
        m.setflags(write=False)
        object.__setattr__(self, "matrix", m)

    @classmethod
    def identity(cls) -> Transform:
        return cls(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))

    @classmethod
    def translation(cls, d_row: float, d_col: float) -> Transform:
        return cls(np.array([[1.0, 0.0, d_row], [0.0, 1.0, d_col]]))

    @classmethod
    def scaling(cls, s_row: float, s_col: float) -> Transform:
        """Resampling by ``s_row`` x ``s_col`` (pixel centres: ``out = (in + 0.5) * s - 0.5``)."""
        return cls(np.array([[s_row, 0.0, 0.5 * s_row - 0.5], [0.0, s_col, 0.5 * s_col - 0.5]]))

    @classmethod
    def hflip(cls, width: int) -> Transform:
        """Mirror left-right in an image ``width`` pixels wide."""
        return cls(np.array([[1.0, 0.0, 0.0], [0.0, -1.0, width - 1.0]]))

    @classmethod
    def from_list(cls, rows: list[list[float]]) -> Transform:
        return cls(np.asarray(rows, dtype=np.float64))

    def to_list(self) -> list[list[float]]:
        return [[float(v) for v in row] for row in self.matrix]

    def _homogeneous(self) -> np.ndarray:
        return np.vstack([self.matrix, [0.0, 0.0, 1.0]])

    def then(self, other: Transform) -> Transform:
        """The transform that applies ``self`` first and ``other`` second."""
        return Transform((other._homogeneous() @ self._homogeneous())[:2])

    def inverse(self) -> Transform:
        """Output -> input coordinates (e.g. to bring a CAM back onto the original image)."""
        return Transform(np.linalg.inv(self._homogeneous())[:2])

    def apply_points(self, rows: np.ndarray | float, cols: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        r = np.asarray(rows, dtype=np.float64)
        c = np.asarray(cols, dtype=np.float64)
        m = self.matrix
        return m[0, 0] * r + m[0, 1] * c + m[0, 2], m[1, 0] * r + m[1, 1] * c + m[1, 2]

    @property
    def scale(self) -> float:
        """Length scale for radii: the geometric mean of the axis scales (exact unless the resize is anisotropic)."""
        return float(np.sqrt(abs(np.linalg.det(self.matrix[:, :2]))))

    def allclose(self, other: Transform, atol: float = 1e-9) -> bool:
        return bool(np.allclose(self.matrix, other.matrix, atol=atol))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Transform) and bool(np.array_equal(self.matrix, other.matrix))

    __hash__ = None  # type: ignore[assignment]  # holds an array: not hashable

    def __repr__(self) -> str:
        return f"Transform({self.to_list()})"


# --------------------------------------------------------------------------------------------------- checks


def _check_image(img: np.ndarray, name: str, allow_float: bool = False) -> None:
    ok = (np.uint8, np.uint16, np.float32) if allow_float else _INTEGER_DTYPES
    if not isinstance(img, np.ndarray) or img.ndim != 2:
        shape = getattr(img, "shape", None)
        raise ValueError(f"{name}: expected a 2-D greyscale image, got shape {shape}")
    if img.dtype not in ok:
        raise ValueError(f"{name}: expected dtype {'/'.join(np.dtype(d).name for d in ok)}, got {img.dtype}")
    if img.size == 0:
        raise ValueError(f"{name}: the image is empty")


def _check_mask(mask: np.ndarray, shape: tuple[int, ...], name: str) -> None:
    if mask.dtype != bool or mask.shape != shape:
        raise ValueError(f"{name}: expected a boolean mask of shape {shape}, got {mask.dtype} {mask.shape}")


def _max_value(dtype: np.dtype) -> int:
    return int(np.iinfo(dtype).max)


# --------------------------------------------------------------------------------------------------- dtype


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Full-range conversion to ``uint8``: uint16 / 257 (rounded), float in [0, 1] * 255, bool -> 0/255.

    Content-independent on purpose; use :func:`normalize_intensity` to stretch contrast.
    """
    if img.dtype == np.uint8:
        return img.copy()
    if img.dtype == bool:
        return img.astype(np.uint8) * np.uint8(255)
    if img.dtype == np.uint16:
        return ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(img.dtype, np.floating):
        return np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ValueError(f"to_uint8: unsupported dtype {img.dtype}")


def to_uint16(img: np.ndarray) -> np.ndarray:
    """Full-range conversion to ``uint16``: uint8 * 257, float in [0, 1] * 65535, bool -> 0/65535."""
    if img.dtype == np.uint16:
        return img.copy()
    if img.dtype == bool:
        return img.astype(np.uint16) * np.uint16(65535)
    if img.dtype == np.uint8:
        return img.astype(np.uint16) * np.uint16(257)
    if np.issubdtype(img.dtype, np.floating):
        return np.rint(np.clip(img, 0.0, 1.0) * 65535.0).astype(np.uint16)
    raise ValueError(f"to_uint16: unsupported dtype {img.dtype}")


def to_float01(img: np.ndarray) -> np.ndarray:
    """``float32`` in [0, 1]: integer images divided by their dtype's maximum; float images passed through."""
    if img.dtype in _INTEGER_DTYPES:
        return img.astype(np.float32) / np.float32(_max_value(img.dtype))
    if img.dtype == bool:
        return img.astype(np.float32)
    if np.issubdtype(img.dtype, np.floating):
        return img.astype(np.float32, copy=True)
    raise ValueError(f"to_float01: unsupported dtype {img.dtype}")


def convert_dtype(img: np.ndarray, dtype: OutDType) -> np.ndarray:
    """Full-range conversion to ``uint8``, ``uint16`` or ``float32`` (see :func:`to_uint8`)."""
    converters = {"uint8": to_uint8, "uint16": to_uint16, "float32": to_float01}
    if dtype not in converters:
        raise ValueError(f"convert_dtype: unknown dtype {dtype!r}; use one of {sorted(converters)}")
    return converters[dtype](img)


# --------------------------------------------------------------------------------------------------- intensity


def median_filter(img: np.ndarray, ksize: int = 3) -> np.ndarray:
    """Median filter with a ``ksize`` x ``ksize`` window (Yu et al. 2020, "Data preprocessing": noise removal).

    Borders replicate the edge pixels. OpenCV handles 16-bit images only up to 5x5; larger 16-bit windows fall
    back to SciPy (same result, slower).
    """
    _check_image(img, "median_filter")
    if ksize < 3 or ksize % 2 == 0:
        raise ValueError(f"median_filter: ksize must be an odd integer >= 3, got {ksize}")
    if img.dtype == np.uint16 and ksize > 5:
        from scipy import ndimage

        return ndimage.median_filter(img, size=ksize, mode="nearest")
    return cv2.medianBlur(img, ksize)


def clahe(img: np.ndarray, clip_limit: float = 2.0, tile_grid: tuple[int, int] = (8, 8)) -> np.ndarray:
    """Contrast limited adaptive histogram equalisation (Yu et al. 2020, "Data preprocessing", ref. 20).

    ``tile_grid`` is (rows, cols) of tiles; ``clip_limit`` is OpenCV's (relative to the mean bin height).
    Works on 8- and 16-bit images.
    """
    _check_image(img, "clahe")
    if clip_limit <= 0:
        raise ValueError(f"clahe: clip_limit must be > 0, got {clip_limit}")
    rows, cols = (int(v) for v in tile_grid)
    if rows < 1 or cols < 1:
        raise ValueError(f"clahe: tile_grid must be two positive integers, got {tile_grid}")
    # OpenCV sizes are (width, height): (cols, rows).
    return cv2.createCLAHE(clipLimit=float(clip_limit), tileGridSize=(cols, rows)).apply(img)


def gaussian_filter(img: np.ndarray, sigma: float = 0.5) -> np.ndarray:
    """Gaussian smoothing, ``sigma`` in pixels (Jaamour et al. 2023, "Image pre-processing": sigma = 0.5)."""
    _check_image(img, "gaussian_filter", allow_float=True)
    if sigma <= 0:
        raise ValueError(f"gaussian_filter: sigma must be > 0, got {sigma}")
    return cv2.GaussianBlur(img, (0, 0), sigmaX=float(sigma), sigmaY=float(sigma),
                            borderType=cv2.BORDER_REPLICATE)


def _histogram(img: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    bins = _max_value(img.dtype) + 1
    cv_mask = None if mask is None else mask.astype(np.uint8)
    return cv2.calcHist([img], [0], cv_mask, [bins], [0, bins]).ravel().astype(np.float64)


def equalize_histogram(img: np.ndarray) -> np.ndarray:
    """Global histogram equalisation over the dtype's full range (Jaamour et al. 2023, "Image pre-processing").

    ``lut(v) = round((cdf(v) - cdf_min) / (N - cdf_min) * max)``, the textbook mapping; 8-bit images use OpenCV's
    ``equalizeHist`` (the same mapping), 16-bit images the same formula over 65,536 bins.
    """
    _check_image(img, "equalize_histogram")
    if img.dtype == np.uint8:
        return cv2.equalizeHist(img)
    hist = _histogram(img)
    cdf = np.cumsum(hist)
    cdf_min = cdf[np.flatnonzero(hist)[0]]
    if cdf[-1] == cdf_min:  # a constant image has nothing to spread
        return img.copy()
    top = _max_value(img.dtype)
    lut = np.rint(np.clip((cdf - cdf_min) / (cdf[-1] - cdf_min), 0.0, 1.0) * top).astype(img.dtype)
    return lookup(lut, img)


def _percentile_values(img: np.ndarray, pcts: tuple[float, float], mask: np.ndarray | None) -> tuple[float, float]:
    """Lower/upper percentiles; exact order statistics for integer images (from the histogram, fast)."""
    if img.dtype in _INTEGER_DTYPES and mask is None and pcts[0] == 0.0 and pcts[1] == 100.0:
        lo, hi = min_max(img)
        return float(lo), float(hi)
    if img.dtype in _INTEGER_DTYPES:
        cdf = np.cumsum(_histogram(img, mask))
        n = cdf[-1]
        if n == 0:
            return 0.0, 0.0
        # The smallest value whose cumulative count reaches the target (p=0 -> minimum, p=100 -> maximum).
        targets = [max(np.ceil(p / 100.0 * n), 1.0) for p in pcts]
        lo, hi = (float(np.searchsorted(cdf, t, side="left")) for t in targets)
        return lo, hi
    values = img[mask] if mask is not None else img
    if values.size == 0:
        return 0.0, 0.0
    lo, hi = np.percentile(values, pcts)
    return float(lo), float(hi)


def normalize_intensity(img: np.ndarray, low_pct: float = 0.0, high_pct: float = 100.0,
                        out_dtype: OutDType = "uint8", mask: np.ndarray | None = None) -> np.ndarray:
    """Linear map of the ``[low_pct, high_pct]`` percentile range to the full range of ``out_dtype``, clipped.

    ``float32`` output lies in [0, 1]. With ``mask``, percentiles are taken inside it only (e.g. the breast, so the
    black background does not set the lower bound). A constant image maps to zeros.
    """
    _check_image(img, "normalize_intensity", allow_float=True)
    if not 0.0 <= low_pct < high_pct <= 100.0:
        raise ValueError(f"normalize_intensity: need 0 <= low_pct < high_pct <= 100, got {low_pct}, {high_pct}")
    if mask is not None:
        _check_mask(mask, img.shape, "normalize_intensity")
    lo, hi = _percentile_values(img, (low_pct, high_pct), mask)
    if hi <= lo:
        return np.zeros(img.shape, dtype=np.dtype(out_dtype))

    def stretch(values: np.ndarray) -> np.ndarray:
        return convert_dtype(np.clip((values.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0),
                             out_dtype)

    if img.dtype in _INTEGER_DTYPES:  # a lookup table over every possible value: same result, 2x faster
        return lookup(stretch(np.arange(_max_value(img.dtype) + 1, dtype=img.dtype)), img)
    return stretch(img)


# --------------------------------------------------------------------------------------------------- breast mask


def otsu_threshold(img: np.ndarray) -> float:
    """Otsu's threshold (the between-class-variance maximum) of an 8- or 16-bit image."""
    _check_image(img, "otsu_threshold")
    value, _ = cv2.threshold(img, 0, _max_value(img.dtype), cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    return float(value)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean mask (all False when the mask is empty)."""
    padded = _largest_component_padded(mask.view(np.uint8) if mask.dtype == bool else mask.astype(np.uint8))
    return padded[1:-1, 1:-1] != 0


def _largest_component_padded(foreground: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a ``uint8`` foreground (non-zero) as 255, in a frame of one background
    pixel (for :func:`_fill_outside`): ``(h + 2) x (w + 2)``, ``uint8``, written in one pass over the labels."""
    h, w = foreground.shape
    padded = np.zeros((h + 2, w + 2), dtype=np.uint8)
    n, labels, stats = _components(foreground)
    if n > 1:
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        inside = padded[1:-1, 1:-1]
        written = cv2.compare(labels, largest, cv2.CMP_EQ, dst=inside)
        if not np.shares_memory(written, padded):  # OpenCV wrote elsewhere (it does not for a uint8 view)
            inside[...] = written
    return padded


def _components(foreground: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """8-connected components of a ``uint8`` foreground: their count (background included), labels and stats.

    16-bit labels (half the memory traffic of 32-bit ones, a third faster) unless there are 65,535 components or
    more, when OpenCV refuses them: then 32-bit, the same labels."""
    try:
        n, labels, stats, _ = cv2.connectedComponentsWithStats(foreground, connectivity=8, ltype=cv2.CV_16U)
    except cv2.error:
        n, labels, stats, _ = cv2.connectedComponentsWithStats(foreground, connectivity=8, ltype=cv2.CV_32S)
    return n, labels, stats


_OUTSIDE = 128  # the value the flood from the frame gives the background connected to the image's border


def _fill_outside(padded: np.ndarray) -> np.ndarray:
    """The mask with its holes filled, from a framed ``uint8`` mask (background 0, mask neither 0 nor
    :data:`_OUTSIDE`): every background pixel 4-connected to the frame is outside, all else inside."""
    cv2.floodFill(padded, None, (0, 0), _OUTSIDE)
    return padded[1:-1, 1:-1] != _OUTSIDE


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions not 4-connected to the image border (holes inside the breast)."""
    padded = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), dtype=np.uint8)
    np.copyto(padded[1:-1, 1:-1], mask if mask.dtype == bool else mask != 0, casting="unsafe")
    return _fill_outside(padded)


def _above(img: np.ndarray, threshold: float) -> np.ndarray:
    """``img > threshold`` as a ``uint8`` mask (255 above), in one OpenCV pass."""
    if not math.isfinite(threshold):
        return (img > threshold).view(np.uint8)
    return cv2.compare(img, float(threshold), cv2.CMP_GT)


def breast_mask(img: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Boolean mask of the breast: Otsu threshold -> largest connected component -> holes filled.

    Burned-in labels, markers and scanner artefacts are separate bright components, so keeping only the
    largest one removes them (Jaamour et al. 2023, "Future work": Otsu segmentation and artefact removal).
    ``threshold`` overrides Otsu (pixels strictly above it are foreground). Blank images give an empty mask.
    The steps run on ``uint8`` masks in place (threshold, component and frame in one buffer, one flood); only the
    result is boolean.
    """
    _check_image(img, "breast_mask")
    if len(set(min_max(img))) == 1:  # nothing to separate (Otsu would put every pixel above 0)
        return np.zeros(img.shape, dtype=bool)
    t = otsu_threshold(img) if threshold is None else float(threshold)
    return _fill_outside(_largest_component_padded(_above(img, t)))


def remove_background(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Zero every pixel outside ``mask`` (Yu et al. 2020: "the non-breast area is removed")."""
    _check_image(img, "remove_background", allow_float=True)
    _check_mask(mask, img.shape, "remove_background")
    if img.ndim == 2 and img.dtype != np.float64:  # OpenCV copies under a mask in one pass; NumPy's where takes three
        return cv2.copyTo(img, mask.view(np.uint8)) if mask.dtype == bool else np.where(mask, img, 0).astype(img.dtype)
    return np.where(mask, img, np.zeros((), dtype=img.dtype))


def mask_bbox(mask: np.ndarray, margin: int = 0) -> BBox:
    """Bounding box ``(r0, c0, r1, c1)`` (half-open) of the True pixels, grown by ``margin`` and clipped."""
    if mask.ndim != 2:
        raise ValueError(f"mask_bbox: expected a 2-D mask, got shape {mask.shape}")
    if margin < 0:
        raise ValueError(f"mask_bbox: margin must be >= 0, got {margin}")
    box = nonzero_box(mask)
    if box is None:
        raise ValueError("mask_bbox: the mask is empty")
    h, w = mask.shape
    return (max(box[0] - margin, 0), max(box[1] - margin, 0), min(box[2] + margin, h), min(box[3] + margin, w))


# --------------------------------------------------------------------------------------------------- geometry ops


def crop(img: np.ndarray, bbox: BBox) -> tuple[np.ndarray, Transform]:
    """The ``(r0, c0, r1, c1)`` window (half-open) of ``img``, and the shift that maps coordinates into it."""
    r0, c0, r1, c1 = (int(v) for v in bbox)
    h, w = img.shape[:2]
    if not (0 <= r0 < r1 <= h and 0 <= c0 < c1 <= w):
        raise ValueError(f"crop: box {bbox} is empty or outside the {h}x{w} image")
    return img[r0:r1, c0:c1].copy(), Transform.translation(-r0, -c0)


def _cv_resize(img: np.ndarray, size: tuple[int, int], interpolation: Interpolation) -> np.ndarray:
    h, w = size
    if interpolation == "auto":
        shrinking = h <= img.shape[0] and w <= img.shape[1]
        # Area averaging when shrinking avoids aliasing of fine structure (calcifications); linear when enlarging.
        interpolation = "area" if shrinking else "linear"
    if interpolation not in _CV_INTERPOLATION:
        raise ValueError(f"resize: unknown interpolation {interpolation!r}; use auto, area, linear or nearest")
    if img.dtype == bool:
        return cv2.resize(img.astype(np.uint8), (w, h), interpolation=_CV_INTERPOLATION[interpolation]) > 0
    return cv2.resize(img, (w, h), interpolation=_CV_INTERPOLATION[interpolation])


def _check_size(size: tuple[int, int], name: str) -> tuple[int, int]:
    h, w = (int(v) for v in size)
    if h < 1 or w < 1:
        raise ValueError(f"{name}: size must be two positive integers (height, width), got {size}")
    return h, w


def resize(img: np.ndarray, size: tuple[int, int], interpolation: Interpolation = "auto",
           ) -> tuple[np.ndarray, Transform]:
    """Resize to ``size`` = (height, width), ignoring the aspect ratio (Jaamour et al. 2023, baseline).

    ``auto`` uses area interpolation when shrinking, linear when enlarging; use ``nearest`` for label masks.
    """
    h, w = _check_size(size, "resize")
    out = _cv_resize(img, (h, w), interpolation)
    return out, Transform.scaling(h / img.shape[0], w / img.shape[1])


def resize_with_padding(img: np.ndarray, size: tuple[int, int], interpolation: Interpolation = "auto",
                        align: Literal["center", "start"] = "center") -> tuple[np.ndarray, Transform]:
    """Resize to fit inside ``size`` keeping the aspect ratio, then pad with zeros (Jaamour et al. 2023, Fig 4).

    ``align="center"`` centres the image; ``"start"`` puts it at the top-left, so a breast against the left
    edge stays against it.
    """
    h, w = _check_size(size, "resize_with_padding")
    if align not in ("center", "start"):
        raise ValueError(f"resize_with_padding: align must be 'center' or 'start', got {align!r}")
    in_h, in_w = img.shape[:2]
    s = min(h / in_h, w / in_w)
    new_h, new_w = min(max(round(in_h * s), 1), h), min(max(round(in_w * s), 1), w)
    scaled = _cv_resize(img, (new_h, new_w), interpolation)
    top, left = ((h - new_h) // 2, (w - new_w) // 2) if align == "center" else (0, 0)
    out = np.zeros((h, w), dtype=img.dtype)
    out[top:top + new_h, left:left + new_w] = scaled
    t = Transform.scaling(new_h / in_h, new_w / in_w).then(Transform.translation(top, left))
    return out, t


def is_right_facing(img_or_mask: np.ndarray) -> bool:
    """True when the breast lies against the right edge (chest wall on the right, nipple pointing left).

    Decided by which half holds more intensity (or more mask pixels): the breast outweighs the background.
    """
    if img_or_mask.ndim != 2:
        raise ValueError(f"is_right_facing: expected a 2-D image or mask, got shape {img_or_mask.shape}")
    col_mass = img_or_mask.sum(axis=0, dtype=np.float64)
    half = img_or_mask.shape[1] // 2
    return bool(col_mass[img_or_mask.shape[1] - half:].sum() > col_mass[:half].sum())


def flip_horizontal(img: np.ndarray) -> tuple[np.ndarray, Transform]:
    """Mirror left-right (a right-facing breast becomes left-facing: chest wall on the left)."""
    return np.ascontiguousarray(img[:, ::-1]), Transform.hflip(img.shape[1])
