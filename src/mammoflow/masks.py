"""Lesion masks as arrays (pure functions, no I/O): where their non-zero pixels lie, whether an image is one, and
the centre and size of the lesion it outlines.

One place for what ingest (telling a CBIS-DDSM ROI mask from its crop, :mod:`mammoflow.sources.cbis_images`),
preprocess (cropping to the breast, :func:`mammoflow.preprocess.ops.mask_bbox`) and build-dataset (lesions given
only as a mask, :mod:`mammoflow.dataset.rois`) all ask of a mask.

A lesion covers a small part of a full-size mask, so each function first finds the box of the non-zero pixels in
one pass (OpenCV's compare and bounding rectangle, vectorised) and does the rest of its work inside that box; the
results are those of the same NumPy expression over the whole array, exactly (the sums are integers).
"""

from __future__ import annotations

import cv2
import numpy as np

# Types OpenCV compares and bounds directly (bool is looked at as its bytes, 0 or 1). Not floats: OpenCV's vectorised
# compare does not count NaN as different from 0 for every width, NumPy does.
_CV_DTYPES = (np.uint8, np.int8, np.uint16, np.int16, np.int32)

Box = tuple[int, int, int, int]  # (r0, c0, r1, c1), half-open: :data:`mammoflow.preprocess.ops.BBox`


def nonzero_box(image: np.ndarray) -> Box | None:
    """The half-open box ``(r0, c0, r1, c1)`` holding every non-zero pixel of a 2-D array (NaN counts as
    non-zero); ``None`` when there is none."""
    if image.ndim != 2:
        raise ValueError(f"nonzero_box: expected a 2-D array, got shape {image.shape}")
    if image.size == 0:
        return None
    view = image.view(np.uint8) if image.dtype == np.bool_ else image
    if view.dtype in _CV_DTYPES and view.strides[1] == view.itemsize:
        x, y, w, h = cv2.boundingRect(cv2.compare(view, 0, cv2.CMP_NE))
        return None if w == 0 else (y, x, y + h, x + w)
    rows = np.flatnonzero((image != 0).any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero((image[rows[0]:rows[-1] + 1] != 0).any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def is_binary_mask(pixels: np.ndarray) -> bool:
    """True when the image holds at most two values, one of them 0, and is not all zero (an ROI mask)."""
    if pixels.ndim == 2:  # look inside the box of the non-zero pixels only: outside it every pixel is 0
        box = nonzero_box(pixels)
        if box is None:
            return False
        pixels = pixels[box[0]:box[2], box[1]:box[3]]
    top = pixels.max(initial=0)
    return bool(top > 0 and not np.any((pixels != 0) & (pixels != top)))


def mask_geometry(mask: np.ndarray) -> tuple[float, float, float]:
    """Centroid ``(row, col)`` and equivalent radius ``sqrt(area / pi)`` of the non-zero pixels of a 2-D mask;
    ``ValueError`` when it has none.

    From the per-row and per-column counts inside the box of the non-zero pixels, not the coordinates of every
    pixel: the sums of the coordinates are exact integers either way, so the centroid is the same float as
    ``np.nonzero(mask)[k].mean()``."""
    mask = np.asarray(mask)
    box = nonzero_box(mask)
    if box is None:
        raise ValueError("the mask is empty")
    r0, c0, r1, c1 = box
    inside = mask[r0:r1, c0:c1] != 0
    per_row, per_col = np.count_nonzero(inside, axis=1), np.count_nonzero(inside, axis=0)
    area = int(per_row.sum())
    row_sum = int(np.arange(r0, r1, dtype=np.int64) @ per_row.astype(np.int64))
    col_sum = int(np.arange(c0, c1, dtype=np.int64) @ per_col.astype(np.int64))
    return float(np.float64(row_sum) / area), float(np.float64(col_sum) / area), float(np.sqrt(area / np.pi))
