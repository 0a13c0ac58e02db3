"""Native DICOM pixel data read straight into the returned array (``mammoflow.io.dicom.DEFER_BYTES``).

Each test reads the same file twice: once with a threshold below the test image's size (the array is filled from
the open file and mapped in place, pydicom never decodes it) and once with a threshold above it (pydicom reads and
decodes the value, as it does for any image below 4 MiB). Both must give the same pixels, or the same error.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pydicom.pixels
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian

import mammoflow.io.dicom as dicom_module
from mammoflow.errors import InputError
from mammoflow.io.dicom import read_dicom
from mammoflow.synth.dicom_writer import write_dicom

SMALL, LARGE = 256, 1 << 40  # below / above every test image's Pixel Data


def _write(path: Path, pixels: np.ndarray, **kw) -> Path:
    bits = {np.dtype(np.uint8): 8, np.dtype(np.int16): 12}.get(pixels.dtype, 12)
    write_dicom(path, pixels, **{"patient_id": "PID-7", "patient_name": "DOE^JANE", "bits_stored": bits, **kw})
    return path


def _image(shape: tuple[int, int] = (48, 40), top: int = 4096, dtype: type = np.uint16, low: int = 0) -> np.ndarray:
    return np.random.default_rng(11).integers(low, top, shape).astype(dtype)


class _Decodes:
    """Counts pydicom's pixel decodes (a call of ``pydicom.pixels.pixel_array``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.calls = 0
        real = pydicom.pixels.pixel_array

        def spy(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(pydicom.pixels, "pixel_array", spy)


def _both(path_or_bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[object, object, int]:
    """(outcome with the small threshold, outcome with the large one, pydicom decodes during the first); an
    outcome is the pixels or ``(code, problem)`` of the InputError."""
    decodes = _Decodes(monkeypatch)

    def outcome(threshold: int):
        monkeypatch.setattr(dicom_module, "DEFER_BYTES", threshold)
        src = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
        try:
            return read_dicom(src).pixels
        except InputError as err:
            return err.code, err.problem

    small = outcome(SMALL)
    decoded = decodes.calls
    return small, outcome(LARGE), decoded


def _same(a: object, b: object) -> None:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        assert isinstance(a, np.ndarray) and isinstance(b, np.ndarray), (a, b)
        assert a.dtype == b.dtype == np.uint16 and a.flags.c_contiguous and a.flags.writeable
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("case", ["explicit_12bit", "implicit_le", "monochrome1", "bits_stored_16", "window",
                                  "uint8_odd_size", "signed", "rescale"])
def test_a_native_little_endian_image_is_read_once_with_the_pixels_pydicom_gives(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    kw: dict = {}
    pixels = _image()
    if case == "implicit_le":
        kw["transfer_syntax"] = "implicit_le"
    elif case == "monochrome1":
        kw["photometric"] = "MONOCHROME1"
    elif case == "bits_stored_16":
        pixels, kw["bits_stored"] = _image(top=65536), 16
    elif case == "window":
        kw["window"] = (1500.0, 2000.0)
    elif case == "uint8_odd_size":
        pixels = _image((47, 41), top=256, dtype=np.uint8)  # an odd number of bytes: padded by one in the file
    elif case == "signed":
        pixels = _image(top=2048, low=-2048, dtype=np.int16)
    elif case == "rescale":
        kw["rescale"] = (-1.0, 4095.0)
    path = _write(tmp_path / f"{case}.dcm", pixels, **kw)
    small, large, decoded = _both(path, monkeypatch)
    _same(small, large)
    assert decoded == 0  # read from the file into the array: pydicom decoded nothing


def test_bits_above_bits_stored_are_masked_and_nothing_is_mapped_in_place_before_the_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the last row has overlay bits: an in-place mapping that checked row block by row block would already
    # have overwritten the first rows when it met them, and the table it falls back to would see mapped values.
    img = _image((200, 40))
    path = _write(tmp_path / "overlay.dcm", img)
    ds = pydicom.dcmread(path)
    stored = img.copy()
    stored[-1] |= 0xF000
    ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(path)
    small, large, decoded = _both(path, monkeypatch)
    _same(small, large)
    clean = _write(tmp_path / "clean.dcm", img)
    np.testing.assert_array_equal(small, read_dicom(clean).pixels)  # the overlay bits change nothing
    assert decoded == 0


def test_a_file_cut_inside_its_pixel_data_is_truncated_with_the_same_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "cut.dcm", _image())
    path.write_bytes(path.read_bytes()[:-100])
    small, large, _ = _both(path, monkeypatch)
    assert small == large
    assert small[0] == "truncated" and "3740 of 3840 bytes present" in small[1]


@pytest.mark.parametrize("extra", [2, 200])
def test_pixel_data_longer_than_the_image_is_left_to_pydicom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             extra: int) -> None:
    img = _image()
    path = _write(tmp_path / "long.dcm", img)
    ds = pydicom.dcmread(path)
    ds.PixelData = img.astype("<u2").tobytes() + bytes(extra)
    ds.save_as(path)
    small, large, decoded = _both(path, monkeypatch)
    _same(small, large)
    assert decoded == 1  # the whole file was read again, and pydicom's checks spoke


def test_a_deflated_data_set_is_read_again_and_decoded_by_pydicom(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # The offsets pydicom records in a deflated data set are those of the inflated stream, not of the file.
    img = _image()
    path = _write(tmp_path / "deflated.dcm", img)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    small, large, decoded = _both(path, monkeypatch)
    _same(small, large)
    np.testing.assert_array_equal(small, read_dicom(_write(tmp_path / "plain.dcm", img)).pixels)
    assert decoded == 1


def test_streams_and_zip_members_take_the_same_route(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path / "one.dcm", _image())
    expected = read_dicom(path).pixels
    data = path.read_bytes()
    small, large, decoded = _both(data, monkeypatch)
    _same(small, expected)
    _same(large, expected)
    assert decoded == 0
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("inner/one.dcm", data)
    small, large, decoded = _both(archive / "inner" / "one.dcm", monkeypatch)
    _same(small, expected)
    assert decoded == 0 and not isinstance(large, tuple)
