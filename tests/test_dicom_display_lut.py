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


@pytest.mark.parametrize("bits", range(8, 17))
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_full_scale_route_equals_the_table_for_every_storable_value(bits: int, photometric: str) -> None:
    # A header without window, LUT or rescale: the arithmetic route in row blocks. Every storable value, at every
    # position of a row (SIMD body and scalar tail), in rows of several widths and more than one block.
    ds = _dataset(bits, False, {"PhotometricInterpretation": photometric})
    ds.BitsAllocated = 16
    values = np.arange(1 << bits, dtype=np.uint16)
    for width in (1, 7, 333, 3000):
        raw = np.resize(np.roll(values, width), (-(-values.size // width) + 70, width))
        np.testing.assert_array_equal(display_pixels(raw, ds, unused_bits=True), _direct(raw, ds))


@pytest.mark.parametrize("signed", [False, True])
def test_bits_above_bits_stored_are_ignored_as_pydicoms_correction_would(signed: bool) -> None:
    # unused_bits=True: the data as stored (pydicom's correct_unused_bits=False). The result equals pydicom's
    # corrected values (masked, or sign-extended from bit 11) sent through the mapping.
    ds = _dataset(12, signed, {"WindowCenter": "100", "WindowWidth": "3000"} if signed else {})
    rng = np.random.default_rng(5)
    stored = rng.integers(-2048 if signed else 0, 2048 if signed else 4096, size=(150, 41))
    garbage = rng.integers(0, 16, size=stored.shape) << 12  # bits 12-15 set at random
    raw = ((stored & 0xFFF) | garbage).astype(np.uint16)
    raw = raw.view(np.int16) if signed else raw
    corrected = stored.astype(np.int16 if signed else np.uint16)
    np.testing.assert_array_equal(display_pixels(raw, ds, unused_bits=True), _direct(corrected, ds))
    clean = corrected.view(np.uint16) & 0xFFF if not signed else corrected
    np.testing.assert_array_equal(display_pixels(clean, ds, unused_bits=True), _direct(corrected, ds))


def test_a_flat_result_of_an_image_with_garbage_bits_only_is_not_an_error() -> None:
    # One stored value everywhere, but different bits above BitsStored: one grey level is the right answer.
    ds = _dataset(12, False, {"WindowCenter": "4000", "WindowWidth": "2"})
    raw = np.array([[5, 5 | 0x1000], [5 | 0x8000, 5]], dtype=np.uint16)
    assert len(np.unique(display_pixels(raw, ds, unused_bits=True))) == 1
    with pytest.raises(PixelTransformError):
        display_pixels(raw + 1 - np.array([[0, 0], [0, 1]], dtype=np.uint16), ds, unused_bits=True)
