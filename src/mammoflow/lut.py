"""Look-up tables applied to integer images: ``table[image]``, done in row blocks.

NumPy's gather converts the whole index array to 64-bit integers before it looks anything up (eight bytes per pixel
of a 12-megapixel mammogram, then a pass over them); a block of rows at a time keeps that copy in the cache and is
several times faster with the same result. Its bounds-checking mode (``raise``) also buffers the output: the range is
checked once instead (not at all when the table covers every value of the image's dtype), and the gather runs
unchecked. An 8-bit image with a 256-entry table goes through OpenCV's ``LUT``. Used wherever a per-value mapping
of an 8- or 16-bit image is computed once and looked up: the DICOM display mapping, intensity normalisation,
histogram equalisation. :func:`min_max` gives the range such a table spans.
"""

from __future__ import annotations

import cv2
import numpy as np

ROWS_PER_BLOCK = 64
_CV_LUT_DTYPES = (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.float32, np.float64)


def lookup(table: np.ndarray, image: np.ndarray, first: int = 0) -> np.ndarray:
    """``table[image - first]``: ``table[k]`` is the output for the value ``first + k`` (``first <= 0``, e.g. the
    lowest value of a signed image), and every value of the integer ``image`` lies in
    ``[first, first + len(table) - 1]`` (else ``IndexError``). The result has the image's shape and the table's
    dtype, C-contiguous.

    A signed image is looked up without a shifted copy: negative indices wrap around the table's end, so the table
    is rolled by ``first`` instead.
    """
    if image.dtype.kind not in "ui":
        raise TypeError(f"lookup: expected an integer image, got {image.dtype}")
    if table.ndim != 1:
        raise ValueError(f"lookup: expected a 1-D table, got shape {table.shape}")
    if image.size == 0:
        return np.empty(image.shape, dtype=table.dtype)
    if first > 0 or -first > table.size:
        raise ValueError(f"lookup: first must be in [-{table.size}, 0], got {first}")
    last = first + table.size - 1
    info = np.iinfo(image.dtype)
    if info.min < first or info.max > last:  # the dtype can hold values the table lacks: are any present?
        lo, hi = min_max(image)
        if lo < first or hi > last:
            raise IndexError(f"lookup: the image holds values {lo}..{hi}, the table covers {first}..{last}")
    if first:
        table = np.roll(table, first)
    if image.dtype == np.uint8 and image.ndim == 2 and table.size == 256 and table.dtype in _CV_LUT_DTYPES:
        return cv2.LUT(image, np.ascontiguousarray(table))
    out = np.empty(image.shape, dtype=table.dtype)
    if image.ndim < 2:
        np.take(table, image, out=out, mode="wrap")
        return out
    for start in range(0, image.shape[0], ROWS_PER_BLOCK):
        np.take(table, image[start:start + ROWS_PER_BLOCK], out=out[start:start + ROWS_PER_BLOCK], mode="wrap")
    return out


def min_max(values: np.ndarray) -> tuple[int, int]:
    """Lowest and highest value, in one pass for a 2-D image of a type OpenCV reads (two with NumPy otherwise)."""
    if values.size == 0:
        return 0, 0
    if values.ndim == 2 and values.dtype in (np.uint8, np.int8, np.uint16, np.int16, np.int32):
        lo, hi = cv2.minMaxLoc(values)[:2]
        return int(lo), int(hi)
    return int(values.min()), int(values.max())
