"""The ROI mask's geometry from row and column counts is exactly the mean of the non-zero pixels' coordinates."""

from __future__ import annotations

import numpy as np
import pytest

from mammoflow.sources.cbis_images import mask_geometry


def _by_coordinates(mask: np.ndarray) -> tuple[float, float, float]:
    rows, cols = np.nonzero(mask)
    return float(rows.mean()), float(cols.mean()), float(np.sqrt(rows.size / np.pi))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_geometry_equals_the_mean_of_the_pixel_coordinates(dtype) -> None:
    rng = np.random.default_rng(7)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(1, 400, 2))
        mask = (rng.random((h, w)) < rng.random()).astype(dtype) * np.iinfo(dtype).max
        if mask.any():
            assert mask_geometry(mask) == _by_coordinates(mask)  # the same floats, not merely close
    big = np.zeros((3000, 2000), dtype)
    big[1234:2987, 17:1999] = 1  # a full-size mask: coordinate sums far beyond float32's exact range
    assert mask_geometry(big) == _by_coordinates(big)


def test_an_empty_mask_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        mask_geometry(np.zeros((5, 5), np.uint8))
