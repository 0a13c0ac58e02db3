"""DICOM reading: transfer syntaxes, the display pipeline, de-identification and every bad-input code."""

from __future__ import annotations

import dataclasses
import re
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mammoflow.errors import InputError
from mammoflow.io.dicom import DicomImage, pseudonym, read_dicom, read_dicom_header
from mammoflow.io.images import read_image
from mammoflow.synth.dicom_writer import available_transfer_syntaxes, write_dicom

ALL_SYNTAXES = ["explicit_le", "implicit_le", "rle", "jpeg2000", "jpeg_lossless", "jpeg_ls"]
SYNTAX_NAMES = {
    "explicit_le": "Explicit VR Little Endian",
    "implicit_le": "Implicit VR Little Endian",
    "rle": "RLE Lossless",
    "jpeg2000": "JPEG 2000 Image Compression (Lossless Only)",
    "jpeg_lossless": "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])",
    "jpeg_ls": "JPEG-LS Lossless Image Compression",
}
IDENTIFIERS = {
    "patient_id": "MRN-55501234",
    "patient_name": "WINTERBOTTOM^ROSALIND^Q",
    "birth_date": "19471113",
    "accession_number": "ACC7733911",
    "institution_name": "St Example Breast Centre",
    "study_uid": "1.2.826.0.1.3680043.8.498.111222333444555",
    "series_uid": "1.2.826.0.1.3680043.8.498.666777888999000",
    "sop_uid": "1.2.826.0.1.3680043.8.498.123123123123123",
}


def _image(bits: int, shape: tuple[int, int] = (48, 40), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 1 << bits, shape).astype(np.uint16)
    img[0, 0], img[0, 1] = 0, (1 << bits) - 1  # the extremes are always present
    return img


def _write(path: Path, pixels: np.ndarray, **kw) -> Path:
    args = {"patient_id": "PID-1", "patient_name": "DOE^JANE", "laterality": "L", "view": "CC", **kw}
    write_dicom(path, pixels, **args)
    return path


def _code(path: Path, **kw) -> InputError:
    with pytest.raises(InputError) as info:
        read_dicom(path, **kw)
    assert info.value.fix
    return info.value


def _full_scale(stored: np.ndarray, bits: int) -> np.ndarray:
    return np.rint(stored.astype(np.float64) / ((1 << bits) - 1) * 65535).astype(np.uint16)


# --------------------------------------------------------------------------- transfer syntaxes


def test_uncompressed_rle_and_a_jpeg_family_encoder_are_available() -> None:
    names = available_transfer_syntaxes()
    assert {"explicit_le", "implicit_le", "rle"} <= set(names)
    assert {"jpeg2000", "jpeg_lossless", "jpeg_ls"} & set(names), "no JPEG-family encoder installed"


@pytest.mark.parametrize("syntax", ALL_SYNTAXES)
@pytest.mark.parametrize("bits", [12, 14, 16])
def test_round_trip_and_photometric_invariance(tmp_path: Path, syntax: str, bits: int) -> None:
    if syntax not in available_transfer_syntaxes():
        pytest.skip(f"no encoder for {syntax} installed here")
    img = _image(bits)
    read = {}
    for photometric in ("MONOCHROME2", "MONOCHROME1"):
        path = _write(tmp_path / f"{photometric}.dcm", img, photometric=photometric, bits_stored=bits,
                      transfer_syntax=syntax)
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID.name == SYNTAX_NAMES[syntax]
        assert ds.PhotometricInterpretation == photometric and ds.BitsStored == bits
        if photometric == "MONOCHROME1":  # stored inverted, so both encode the same picture
            np.testing.assert_array_equal(ds.pixel_array, (1 << bits) - 1 - img)
        result = read_dicom(path)
        assert result.transfer_syntax == SYNTAX_NAMES[syntax]
        assert result.photometric == photometric and result.bits_stored == bits
        assert result.pixels.dtype == np.uint16 and result.pixels.shape == img.shape
        read[photometric] = result.pixels
    np.testing.assert_array_equal(read["MONOCHROME1"], read["MONOCHROME2"])
    np.testing.assert_array_equal(read["MONOCHROME2"], _full_scale(img, bits))


def test_16_bit_monochrome2_without_luts_is_returned_unchanged(tmp_path: Path) -> None:
    img = _image(16)
    np.testing.assert_array_equal(read_dicom(_write(tmp_path / "a.dcm", img)).pixels, img)


def test_8_bit_and_signed_pixels(tmp_path: Path) -> None:
    mask = (np.arange(48 * 40).reshape(48, 40) % 3 == 0).astype(np.uint8) * 255
    out = read_dicom(_write(tmp_path / "mask.dcm", mask, bits_stored=8, transfer_syntax="rle"))
    assert out.bits_allocated == 8
    np.testing.assert_array_equal(out.pixels, mask.astype(np.uint16) * 257)
    signed = np.array([[-2048, -1, 0, 2047]], np.int16)
    out = read_dicom(_write(tmp_path / "signed.dcm", signed, bits_stored=12))
    np.testing.assert_array_equal(out.pixels, _full_scale(signed.astype(np.int64) + 2048, 12))


def test_writer_is_deterministic(tmp_path: Path) -> None:
    img = _image(12)
    for syntax in {"explicit_le", "rle", "jpeg_lossless"} & set(available_transfer_syntaxes()):
        a = _write(tmp_path / "a" / "x.dcm", img, bits_stored=12, transfer_syntax=syntax)
        b = _write(tmp_path / "b" / "x.dcm", img, bits_stored=12, transfer_syntax=syntax)
        assert a.read_bytes() == b.read_bytes(), syntax


# --------------------------------------------------------------------------- display pipeline


def _linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR) onto [0, 1]."""
    c, w = center - 0.5, width - 1
    return np.clip((values - c) / w + 0.5, 0.0, 1.0)


def test_window_is_applied_in_rescaled_units(tmp_path: Path) -> None:
    stored = np.array([[0, 100, 400, 500, 600, 700, 1000, 4095]], np.uint16)
    slope, intercept, center, width = 2.0, -1000.0, 100.0, 801.0
    path = _write(tmp_path / "w.dcm", stored, bits_stored=12, rescale=(slope, intercept), window=(center, width))
    got = read_dicom(path)
    assert got.voi == "window"
    expected = np.rint(_linear_window(stored * slope + intercept, center, width) * 65535).astype(np.uint16)
    np.testing.assert_array_equal(got.pixels, expected)
    # Without the rescale the same window would select different values: the rescale really is honoured.
    plain = read_dicom(_write(tmp_path / "p.dcm", stored, bits_stored=12, window=(center, width))).pixels
    assert not np.array_equal(plain, expected)


def test_linear_rescale_alone_does_not_change_the_displayed_image(tmp_path: Path) -> None:
    img = _image(12)
    plain = read_dicom(_write(tmp_path / "a.dcm", img, bits_stored=12)).pixels
    rescaled = read_dicom(_write(tmp_path / "b.dcm", img, bits_stored=12, rescale=(0.5, 300))).pixels
    np.testing.assert_array_equal(rescaled, plain)
    flipped = read_dicom(_write(tmp_path / "c.dcm", img, bits_stored=12, rescale=(-1, 4095))).pixels
    np.testing.assert_array_equal(flipped, 65535 - plain)
    # A negative slope with a window gives what the flipped stored values give with the same window.
    neg = read_dicom(_write(tmp_path / "d.dcm", img, bits_stored=12, rescale=(-1, 4095), window=(2048, 1000)))
    twin = read_dicom(_write(tmp_path / "e.dcm", 4095 - img, bits_stored=12, window=(2048, 1000)))
    np.testing.assert_array_equal(neg.pixels, twin.pixels)


def test_voi_lut_sequence_is_applied(tmp_path: Path) -> None:
    stored = np.array([[0, 10, 1000, 2047, 2048, 4095]], np.uint16)
    lut = np.minimum(np.arange(4096) * 2, 4095).astype(np.uint16)  # a contrast stretch
    got = read_dicom(_write(tmp_path / "v.dcm", stored, bits_stored=12, voi_lut=(0, 16, lut),
                            window=(9999, 10)))  # the LUT wins over the window
    assert got.voi == "lut"
    np.testing.assert_array_equal(got.pixels, _full_scale(lut[stored], 12))


def test_window_then_monochrome1_inversion(tmp_path: Path) -> None:
    stored = np.array([[0, 1000, 2000, 3000, 4095]], np.uint16)
    m2 = read_dicom(_write(tmp_path / "m2.dcm", stored, bits_stored=12, window=(2048, 2049))).pixels
    # MONOCHROME1: same stored values and window, but displayed inverted.
    ds = pydicom.dcmread(tmp_path / "m2.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "m1.dcm")
    np.testing.assert_array_equal(read_dicom(tmp_path / "m1.dcm").pixels, 65535 - m2)
    shape = _write(tmp_path / "inv.dcm", stored, bits_stored=12, window=(2048, 2049),
                   extra={"PresentationLUTShape": "INVERSE"})
    np.testing.assert_array_equal(read_dicom(shape).pixels, 65535 - m2)


def test_high_bits_above_bits_stored_are_ignored(tmp_path: Path) -> None:
    img = _image(12)
    path = _write(tmp_path / "a.dcm", img, bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.PixelData = (img | 0xF000).astype("<u2").tobytes()  # overlay bits set above bit 11
    ds.save_as(path)
    np.testing.assert_array_equal(read_dicom(path).pixels, _full_scale(img, 12))


# --------------------------------------------------------------------------- header and de-identification


def test_safe_fields_and_no_identifier_leaks(tmp_path: Path) -> None:
    path = _write(tmp_path / "id.dcm", _image(14), bits_stored=14, transfer_syntax="rle", laterality="R",
                  view="MLO", **{k: v for k, v in IDENTIFIERS.items() if k not in ("patient_id", "patient_name")},
                  patient_id=IDENTIFIERS["patient_id"], patient_name=IDENTIFIERS["patient_name"])
    ds = pydicom.dcmread(path)
    assert ds.PatientName == IDENTIFIERS["patient_name"] and ds.StudyInstanceUID == IDENTIFIERS["study_uid"]
    img = read_dicom(path, salt="site-secret")
    header = read_dicom_header(path, salt="site-secret")
    assert (img.laterality, img.view, img.modality, img.rows, img.cols) == ("R", "MLO", "MG", 48, 40)
    assert re.fullmatch(r"p-[0-9a-f]{16}", img.pseudo_patient_id)
    assert header.pseudo_patient_id == img.pseudo_patient_id
    assert not hasattr(header, "pixels")
    texts = [repr(img), str(img), repr(header)]
    texts += [repr(getattr(img, f.name)) for f in dataclasses.fields(img) if f.name != "pixels"]
    secrets = list(IDENTIFIERS.values()) + ["WINTERBOTTOM", "ROSALIND", "55501234"]
    for text in texts:
        for secret in secrets:
            assert secret not in text
    assert len(repr(img)) < 1000  # pixels are summarised, not dumped


def test_pseudonym_is_salted_and_stable(tmp_path: Path) -> None:
    a = read_dicom(_write(tmp_path / "a.dcm", _image(12), bits_stored=12, view="CC"), salt="s1")
    b = read_dicom(_write(tmp_path / "b.dcm", _image(12, seed=3), bits_stored=12, view="MLO"), salt="s1")
    c = read_dicom(tmp_path / "a.dcm", salt="s2")
    assert a.pseudo_patient_id == b.pseudo_patient_id == pseudonym("PID-1", "s1")
    assert c.pseudo_patient_id != a.pseudo_patient_id


def test_laterality_and_view_fallbacks(tmp_path: Path) -> None:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "399368009", "SCT", "medio-lateral oblique"
    path = _write(tmp_path / "f.dcm", _image(12), bits_stored=12, laterality=None, view=None,
                  extra={"Laterality": "R", "ViewCodeSequence": Sequence([code])})
    header = read_dicom_header(path)
    assert (header.laterality, header.view) == ("R", "MLO")
    bare = read_dicom_header(_write(tmp_path / "g.dcm", _image(12), bits_stored=12, laterality=None, view=None))
    assert (bare.laterality, bare.view) == (None, None)


def test_zip_member_and_read_image(tmp_path: Path) -> None:
    img = _image(16)
    path = _write(tmp_path / "x.dcm", img, transfer_syntax="rle")
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(path, "case/1-1.dcm")
    member = archive / "case" / "1-1.dcm"
    np.testing.assert_array_equal(read_dicom(member).pixels, img)
    np.testing.assert_array_equal(read_image(member), img)
    np.testing.assert_array_equal(read_image(path), img)
    assert read_dicom_header(member).rows == 48


def test_file_without_preamble_is_read(tmp_path: Path) -> None:
    img = _image(12)
    ds = pydicom.dcmread(_write(tmp_path / "a.dcm", img, bits_stored=12, transfer_syntax="implicit_le"))
    raw = tmp_path / "raw.dcm"
    del ds.preamble
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.save_as(raw, implicit_vr=True, little_endian=True)  # a bare data set: no preamble, no "DICM", no meta
    assert b"DICM" not in raw.read_bytes()[:200]
    np.testing.assert_array_equal(read_dicom(raw).pixels, _full_scale(img, 12))


# --------------------------------------------------------------------------- bad input


def test_missing_empty_and_not_dicom(tmp_path: Path) -> None:
    assert _code(tmp_path / "none.dcm").code == "missing_file"
    (tmp_path / "empty.dcm").write_bytes(b"")
    assert _code(tmp_path / "empty.dcm").code == "empty"
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom file " * 40)
    assert _code(tmp_path / "junk.dcm").code == "corrupt"


@pytest.mark.filterwarnings("ignore:End of file reached:UserWarning")  # pydicom's own note on the cut
@pytest.mark.parametrize("syntax", ["explicit_le", "rle", "jpeg2000", "jpeg_lossless"])
def test_truncated_files(tmp_path: Path, syntax: str) -> None:
    if syntax not in available_transfer_syntaxes():
        pytest.skip(f"no encoder for {syntax} installed here")
    data = _write(tmp_path / "full.dcm", _image(16, (64, 64)), transfer_syntax=syntax).read_bytes()
    for keep in (0.5, 0.9):
        cut = tmp_path / f"cut{keep}.dcm"
        cut.write_bytes(data[: int(len(data) * keep)])
        err = _code(cut)
        assert err.code == "truncated", (keep, err)
        assert str(cut) in str(err)


def test_truncated_inside_the_header(tmp_path: Path) -> None:
    data = _write(tmp_path / "full.dcm", _image(12), bits_stored=12).read_bytes()
    name_at = data.index(b"DOE^JANE")
    (tmp_path / "cut.dcm").write_bytes(data[: name_at + 3])
    assert _code(tmp_path / "cut.dcm").code == "truncated"


def test_no_pixel_data(tmp_path: Path) -> None:
    ds = pydicom.dcmread(_write(tmp_path / "a.dcm", _image(12), bits_stored=12))
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    assert _code(tmp_path / "nopix.dcm").code == "corrupt"
    assert read_dicom_header(tmp_path / "nopix.dcm").rows == 48  # the header alone is still fine


def test_wrong_modality(tmp_path: Path) -> None:
    path = _write(tmp_path / "ct.dcm", _image(12), bits_stored=12, modality="CT")
    err = _code(path)
    assert err.code == "modality" and "MG" in err.fix and "expect_modality=None" in err.fix
    assert read_dicom(path, expect_modality=None).modality == "CT"
    with pytest.raises(InputError, match="modality"):
        read_dicom_header(path)


def test_colour_bit_depth_and_multiframe(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.dcm", _image(12), bits_stored=12)
    rgb = pydicom.dcmread(path)
    rgb.set_pixel_data(np.zeros((8, 8, 3), np.uint8), "RGB", 8)
    rgb.save_as(tmp_path / "rgb.dcm")
    assert _code(tmp_path / "rgb.dcm").code == "rgb"
    deep = pydicom.dcmread(path)
    deep.Rows, deep.Columns, deep.BitsAllocated, deep.BitsStored, deep.HighBit = 8, 8, 32, 32, 31
    deep.PixelData = np.zeros((8, 8), np.uint32).tobytes()  # 32-bit samples (pydicom cannot set these)
    deep.save_as(tmp_path / "deep.dcm")
    assert _code(tmp_path / "deep.dcm").code == "bit_depth"
    small = pydicom.dcmread(path)
    small.BitsStored, small.HighBit = 4, 3
    small.save_as(tmp_path / "small.dcm")
    assert _code(tmp_path / "small.dcm").code == "bit_depth"
    frames = pydicom.dcmread(path)
    frames.set_pixel_data(np.zeros((3, 8, 8), np.uint16), "MONOCHROME2", 12)
    frames.save_as(tmp_path / "frames.dcm")
    assert _code(tmp_path / "frames.dcm").code == "multiframe"


def test_dicom_image_is_a_dicom_header() -> None:
    names = {f.name for f in dataclasses.fields(DicomImage)}
    assert {"pixels", "pseudo_patient_id", "laterality", "view", "modality", "bits_stored", "photometric",
            "transfer_syntax", "rows", "cols"} <= names
    forbidden = {"patient_id", "patient_name", "birth_date", "accession_number", "institution", "study_uid"}
    assert not names & forbidden
