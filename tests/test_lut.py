"""mammoflow.lut.lookup: a table applied to an integer image in row blocks gives exactly NumPy's ``table[image]``."""

from __future__ import annotations

import numpy as np
import pytest

from mammoflow.lut import ROWS_PER_BLOCK, lookup


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int8, np.int16])
@pytest.mark.parametrize("shape", [(ROWS_PER_BLOCK * 3 + 5, 17), (1, 9), (7,), (2, ROWS_PER_BLOCK + 1, 3)])
def test_lookup_equals_numpy_indexing(dtype: type, shape: tuple[int, ...]) -> None:
    info = np.iinfo(dtype)
    rng = np.random.default_rng(len(shape))
    image = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    table = rng.integers(0, 65535, size=int(info.max) - int(info.min) + 1).astype(np.uint16)
    got = lookup(table, image, first=int(info.min))
    assert got.dtype == np.uint16 and got.shape == image.shape and got.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(got, table[image.astype(np.int64) - int(info.min)])


def test_a_value_outside_the_table_is_an_error_not_a_wrapped_lookup() -> None:
    with pytest.raises(IndexError):
        lookup(np.arange(10, dtype=np.uint8), np.array([[3, 10]], dtype=np.uint16))
    with pytest.raises(ValueError, match="first"):
        lookup(np.arange(10, dtype=np.uint8), np.array([[3]], dtype=np.int16), first=-11)
    with pytest.raises(TypeError):
        lookup(np.arange(10, dtype=np.uint8), np.array([[0.5]]))


def test_empty_image() -> None:
    assert lookup(np.arange(4, dtype=np.uint8), np.zeros((0, 5), dtype=np.uint8)).shape == (0, 5)
