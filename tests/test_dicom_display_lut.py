"""The display mapping of stored DICOM values is computed once per storable value and looked up (a table of at most
65,536 entries): it must give exactly what the same steps give applied to the image's pixels one by one."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from pydicom.dataset import Dataset

from mammoflow.io.dicom_pixels import PixelTransformError, _display_values, display_pixels, stored_range

HEADERS = [
    {},
    {"RescaleSlope": "2", "RescaleIntercept": "-1024"},
    {"RescaleSlope": "-1.5", "RescaleIntercept": "100"},
    {"WindowCenter": "2000", "WindowWidth": "1500"},
    {"WindowCenter": "2000", "WindowWidth": "1500", "VOILUTFunction": "SIGMOID"},
    {"WindowCenter": "300", "WindowWidth": "1", "VOILUTFunction": "LINEAR_EXACT"},
    {"RescaleSlope": "0.5", "RescaleIntercept": "10", "WindowCenter": "800", "WindowWidth": "900"},
    {"PhotometricInterpretation": "MONOCHROME1"},
    {"PresentationLUTShape": "INVERSE", "WindowCenter": "1000", "WindowWidth": "3000"},
]


def _dataset(bits: int, signed: bool, extra: dict[str, str]) -> Dataset:
    ds = Dataset()
    ds.BitsAllocated = 16 if bits > 8 else 8
    ds.BitsStored = bits
    ds.PixelRepresentation = int(signed)
    ds.PhotometricInterpretation = "MONOCHROME2"
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def _direct(raw: np.ndarray, ds: Dataset) -> np.ndarray:
    """The steps applied to the pixels themselves (no table), as before the table existed."""
    signed = bool(ds.PixelRepresentation)
    s_lo, s_hi = stored_range(int(ds.BitsStored), signed)
    raw = np.clip(raw, s_lo, s_hi) if signed else raw & np.asarray(s_hi, dtype=raw.dtype)
    out, stage = _display_values(raw, ds, s_lo, s_hi)
    if raw.min() != raw.max() and out.min() == out.max():
        raise PixelTransformError(stage, "flat")
    return out


@pytest.mark.parametrize(("bits", "signed", "header"),
                         list(itertools.product([8, 12, 16], [False, True], HEADERS)))
def test_table_lookup_equals_the_steps_applied_pixel_by_pixel(bits: int, signed: bool, header: dict) -> None:
    ds = _dataset(bits, signed, header)
    dtype = {(8, False): np.uint8, (8, True): np.int8}.get((bits, signed), np.int16 if signed else np.uint16)
    info = np.iinfo(dtype)
    rng = np.random.default_rng(bits + 7 * signed)
    # Every storable value plus values outside BitsStored (garbage high bits / out-of-range signed values).
    raw = rng.integers(info.min, info.max, size=(64, 97), endpoint=True).astype(dtype)
    try:
        expected = _direct(raw, ds)
    except PixelTransformError as e:
        with pytest.raises(PixelTransformError) as got:
            display_pixels(raw, ds)
        assert got.value.attribute == e.attribute
        return
    got = display_pixels(raw, ds)
    assert got.dtype == np.uint16 and got.shape == raw.shape and got.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(got, expected)


def test_twelve_bit_image_maps_its_full_range_onto_sixteen_bits() -> None:
    ds = _dataset(12, False, {})
    raw = np.array([[0, 1, 2047, 4095, 4096 + 5]], dtype=np.uint16)  # the last one has a bit above BitsStored
    np.testing.assert_array_equal(display_pixels(raw, ds), np.rint(np.array([[0, 1, 2047, 4095, 5]]) * 65535 / 4095))


def test_a_window_that_flattens_the_image_is_blamed_on_the_window() -> None:
    ds = _dataset(12, False, {"WindowCenter": "4000", "WindowWidth": "2"})
    raw = np.array([[10, 20], [30, 40]], dtype=np.uint16)
    with pytest.raises(PixelTransformError) as e:
        display_pixels(raw, ds)
    assert e.value.attribute == "WindowCenter" and "flat image" in str(e.value)
