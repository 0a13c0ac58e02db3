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


@pytest.mark.parametrize("change", [("PixelRepresentation", 2), ("PixelRepresentation", None), ("SamplesPerPixel", None),
                                    ("SamplesPerPixel", 0), ("NumberOfFrames", 0), ("BitsStored", None)])
def test_an_odd_image_pixel_attribute_gets_pydicoms_verdict_on_both_routes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: tuple[str, int | None]) -> None:
    # A file's outcome must not depend on its size: whatever pydicom's decoder says of a missing or invalid Image
    # Pixel attribute on a small file, it says on a large one (the large one is read again whole, not here).
    keyword, value = change
    path = _write(tmp_path / "odd.dcm", _image())
    ds = pydicom.dcmread(path)
    if value is None:
        del ds[keyword]
    else:
        setattr(ds, keyword, value)
    ds.save_as(path)
    small, large, _ = _both(path, monkeypatch)
    assert small == large and small[0] == "corrupt", (small, large)


class _ReadOnly:
    """A stream with read, seek and tell only (no readinto)."""

    def __init__(self, data: bytes):
        self._inner = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._inner.read(n)

    def seek(self, *args: int) -> int:
        return self._inner.seek(*args)

    def tell(self) -> int:
        return self._inner.tell()


class _FailsInside(io.BytesIO):
    """A stream whose storage fails (EIO) when the bytes ``[lo, hi)`` are read."""

    def __init__(self, data: bytes, lo: int, hi: int):
        super().__init__(data)
        self.lo, self.hi = lo, hi

    def _check(self, n: int | None) -> None:
        here = self.tell()
        if here < self.hi and here + (n if n is not None and n >= 0 else 1 << 30) > self.lo:
            raise OSError(5, "Input/output error")

    def read(self, n: int | None = -1) -> bytes:
        self._check(n)
        return super().read(n)

    def readinto(self, buffer) -> int:
        self._check(len(memoryview(buffer).cast("B")))
        return super().readinto(buffer)


def _outcomes(make, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    out = []
    for threshold in (SMALL, LARGE):
        monkeypatch.setattr(dicom_module, "DEFER_BYTES", threshold)
        try:
            out.append(read_dicom(make(), shown_path="stream.dcm").pixels)
        except InputError as err:
            out.append((err.code, err.problem))
    return out


def test_streams_without_readinto_a_storage_error_and_a_prefix_are_treated_alike(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img = _image()
    data = _write(tmp_path / "one.dcm", img).read_bytes()
    expected = read_dicom(tmp_path / "one.dcm").pixels
    for pixels in _outcomes(lambda: _ReadOnly(data), monkeypatch):
        _same(pixels, expected)
    failing = _outcomes(lambda: _FailsInside(data, len(data) - 1000, len(data) - 900), monkeypatch)
    assert failing[0] == failing[1] and failing[0][0] == "unreadable"  # the storage's fault, not the file's

    def after_prefix() -> io.BytesIO:  # the data set starts 200 bytes into the stream; cut 100 bytes short
        stream = io.BytesIO(bytes(200) + data[:-100])
        stream.seek(200)
        return stream

    cut = _outcomes(after_prefix, monkeypatch)
    assert cut[0] == cut[1] and cut[0][0] == "truncated" and "3740 of 3840 bytes present" in cut[0][1]


def test_a_cut_element_after_the_pixel_data_is_found_whatever_its_tag(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # The data set is out of order: a private element with a lower tag follows Pixel Data and the file ends inside
    # it. pydicom keeps what it could read; the check must look at every element, not the highest tag.
    import struct

    data = _write(tmp_path / "one.dcm", _image()).read_bytes()
    tail = struct.pack("<HH2sHI", 0x0009, 0x0010, b"OB", 0, 100_000) + bytes(50)
    small, large = _outcomes(lambda: io.BytesIO(data + tail), monkeypatch)
    assert small == large and small[0] == "truncated"
    assert "(0009,0010): 50 of 100000 bytes present" in small[1]


def test_a_full_size_image_takes_the_direct_read_at_the_real_threshold(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    img = _image((1100, 2000))  # 4.4 MB of Pixel Data, above the 4 MiB threshold
    assert img.nbytes > dicom_module.DEFER_BYTES
    path = _write(tmp_path / "full.dcm", img)
    decodes = _Decodes(monkeypatch)
    pixels = read_dicom(path).pixels
    assert decodes.calls == 0
    expected = np.rint(img.astype(np.float64) * 65535 / 4095).astype(np.uint16)
    np.testing.assert_array_equal(pixels, expected)


def test_a_data_set_with_another_large_value_is_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A second deferred value would be read by pydicom later, from the path, after the file was closed (or, for a
    # stream, not at all): such a file is read again whole, and pydicom decodes it.
    img = _image()
    path = _write(tmp_path / "blob.dcm", img)
    ds = pydicom.dcmread(path)
    ds.add_new(0x00091010, "OB", bytes(SMALL + 100))
    ds.add_new(0x00090010, "LO", "MAMMOFLOW TEST")
    ds.save_as(path)
    small, large, decoded = _both(path, monkeypatch)
    _same(small, large)
    assert decoded == 1
