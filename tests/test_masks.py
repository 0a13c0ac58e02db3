"""Lesion masks (mammoflow.masks): the box-first functions give exactly what the same NumPy expressions give over the
whole array, for every dtype a mask or image comes in, contiguous or not."""

from __future__ import annotations

import numpy as np
import pytest

from mammoflow.masks import is_binary_mask, mask_geometry, nonzero_box


def _by_coordinates(mask: np.ndarray) -> tuple[float, float, float]:
    rows, cols = np.nonzero(mask)
    return float(rows.mean()), float(cols.mean()), float(np.sqrt(rows.size / np.pi))


def _box_by_numpy(image: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, cols = np.nonzero(image)
    if rows.size == 0:
        return None
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


def _binary_by_numpy(pixels: np.ndarray) -> bool:  # the whole-array definition
    top = pixels.max(initial=0)
    return bool(top > 0 and not np.any((pixels != 0) & (pixels != top)))


DTYPES = [np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.int32, np.int64, np.uint32, np.float16, np.float32,
          np.float64]


def _sparse(rng: np.random.Generator, dtype: type, h: int, w: int, *, binary: bool) -> np.ndarray:
    """A mostly-zero image with a blob somewhere (or nothing), binary or with a few values (negative too)."""
    img = np.zeros((h, w), dtype)
    if rng.random() < 0.15:
        return img
    r0, c0 = int(rng.integers(0, h)), int(rng.integers(0, w))
    r1, c1 = int(rng.integers(r0, h)) + 1, int(rng.integers(c0, w)) + 1
    blob = rng.random((r1 - r0, c1 - c0)) < rng.random()
    if dtype is np.bool_:
        img[r0:r1, c0:c1] = blob
        return img
    values = np.array([0, 1, 2, 100] + ([-3] if np.issubdtype(dtype, np.signedinteger) else []), dtype)
    img[r0:r1, c0:c1] = np.where(blob, values[1] if binary else rng.choice(values, blob.shape), 0)
    return img


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_box_and_binary_test_are_those_of_the_whole_array(dtype) -> None:
    rng = np.random.default_rng(11)
    for k in range(60):
        h, w = (int(v) for v in rng.integers(1, 90, 2))
        img = _sparse(rng, dtype, h, w, binary=k % 2 == 0)
        for view in (img, np.asfortranarray(img), img[::2, ::3], img[:, ::-1]):  # strided views too
            assert nonzero_box(view) == _box_by_numpy(view)
            assert is_binary_mask(view) == _binary_by_numpy(view)


def test_nan_counts_as_nonzero_and_empty_arrays_have_no_box() -> None:
    img = np.zeros((4, 5), np.float32)
    img[3, 1] = np.nan
    assert nonzero_box(img) == (3, 1, 4, 2)
    assert nonzero_box(np.zeros((0, 3), np.uint8)) is None
    assert nonzero_box(np.zeros((6, 6), np.uint16)) is None
    with pytest.raises(ValueError, match="2-D"):
        nonzero_box(np.zeros((2, 2, 2), np.uint8))


def test_binary_mask_cases() -> None:
    mask = np.zeros((50, 40), np.uint16)
    mask[10:20, 5:9] = 65535
    crop = np.arange(12, dtype=np.uint16).reshape(3, 4)
    assert is_binary_mask(mask) and not is_binary_mask(crop) and not is_binary_mask(np.zeros((4, 4)))
    signed = np.zeros((6, 6), np.int16)
    signed[2, 2] = -5  # only a negative value: not a mask (its top value is 0)
    assert not is_binary_mask(signed)
    rgb = np.zeros((5, 5, 3), np.uint8)
    rgb[1, 1] = 255
    assert is_binary_mask(rgb) == _binary_by_numpy(rgb)


@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.uint16, np.float32])
def test_geometry_equals_the_mean_of_the_pixel_coordinates(dtype) -> None:
    rng = np.random.default_rng(7)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 400, 2))
        mask = _sparse(rng, dtype, h, w, binary=True)
        for view in (mask, mask[::-1, ::2]):
            if view.any():
                assert mask_geometry(view) == _by_coordinates(view)  # the same floats, not merely close
    big = np.zeros((3000, 2000), np.uint16)
    big[1234:2987, 17:1999] = 1  # a full-size mask: coordinate sums far beyond float32's exact range
    assert mask_geometry(big) == _by_coordinates(big)


def test_an_empty_mask_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        mask_geometry(np.zeros((5, 5), np.uint8))

