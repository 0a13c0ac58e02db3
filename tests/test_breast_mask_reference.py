"""The breast mask's fused OpenCV steps (threshold into a uint8 mask, 16-bit component labels with a 32-bit retry,
the component written into a framed buffer, one flood) give what SciPy's independent implementations of the same
definitions give: the largest 8-connected component of ``image > threshold``, its 4-connected background holes
filled."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from mammoflow.preprocess import ops

EIGHT = np.ones((3, 3), dtype=bool)


def _reference(image: np.ndarray, threshold: float) -> np.ndarray:
    labels, n = ndimage.label(image > threshold, structure=EIGHT)
    if n == 0:
        return np.zeros(image.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def _blobs(seed: int, shape: tuple[int, int], dtype: type) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    small = rng.integers(0, top, size=(shape[0] // 6 + 1, shape[1] // 6 + 1))
    big = np.kron(small, np.ones((6, 6), dtype=np.int64))[: shape[0], : shape[1]]
    return (big * (rng.random(shape) > 0.05)).astype(dtype)  # speckle: holes and islands


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("seed", range(6))
def test_breast_mask_equals_the_reference_definition(dtype: type, seed: int) -> None:
    image = _blobs(seed, (97, 131), dtype)
    top = float(np.iinfo(dtype).max)
    for threshold in (None, top / 2 + 0.5, top / 3, 0.0):
        t = ops.otsu_threshold(image) if threshold is None else threshold
        got = ops.breast_mask(image, threshold)
        assert got.dtype == bool and got.shape == image.shape
        np.testing.assert_array_equal(got, _reference(image, t))


def test_more_components_than_16_bit_labels_hold() -> None:
    # 350 x 250 isolated pixels: 87,500 components, more than 16-bit labels count; plus one big block with a hole.
    mask = np.zeros((700, 500), dtype=bool)
    mask[::2, ::2] = True
    mask[100:400, 100:300] = True
    mask[200:220, 150:170] = False
    expected = np.zeros_like(mask)
    expected[100:400, 100:300] = True  # the hole filled; the isolated pixels next to the block join it
    for r, c in zip(*np.nonzero(mask), strict=True):
        if 99 <= r <= 400 and 99 <= c <= 300:
            expected[r, c] = True
    np.testing.assert_array_equal(ops.largest_component(mask), _reference(mask.view(np.uint8), 0) & mask)
    np.testing.assert_array_equal(ops.breast_mask(mask.astype(np.uint8) * 200), _reference(mask.view(np.uint8), 0))
    np.testing.assert_array_equal(ops.breast_mask(mask.astype(np.uint8) * 200), expected)


def test_fill_holes_equals_scipy_and_leaves_its_input_alone() -> None:
    rng = np.random.default_rng(3)
    mask = rng.random((64, 80)) > 0.35
    before = mask.copy()
    np.testing.assert_array_equal(ops.fill_holes(mask), ndimage.binary_fill_holes(mask))
    np.testing.assert_array_equal(mask, before)
    as_numbers = mask.astype(np.uint16) * 128  # non-boolean masks: non-zero is inside
    np.testing.assert_array_equal(ops.fill_holes(as_numbers), ndimage.binary_fill_holes(mask))
