"""Bad DICOM headers never crash a read and never leak: mutations of the project's own synthetic DICOMs.

Each damaged file must give one clear InputError (the code sources quarantine by), name the attribute at fault
and never its value, and keep real folder names and header values out of every log line and of stderr.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
import pytest

from mammoflow.errors import InputError
from mammoflow.io.dicom import read_dicom, read_dicom_header, supported_transfer_syntaxes
from mammoflow.io.images import read_image
from mammoflow.io.redact import pydicom_warnings, redactor
from mammoflow.synth.dicom_writer import write_dicom

NAME = "WINTERBOTTOM^ROSALIND"  # planted in odd attributes: must never be printed
FOLDER = "DOE^JANE"  # a patient-named folder of a site's export


def _pixels() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 4096, (48, 40)).astype(np.uint16)


def _write(path: Path, **kw) -> Path:
    args = {"patient_id": "MRN-55501234", "patient_name": NAME, "laterality": "L", "view": "CC", "bits_stored": 12,
            **kw}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_dicom(path, _pixels(), **args)
    return path


@contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Invalid values on purpose: pydicom warns and logs while they are set and saved (not under test)."""
    pydicom_log = logging.getLogger("pydicom")
    disabled, pydicom_log.disabled = pydicom_log.disabled, True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pydicom_log.disabled = disabled


def _mutate(path: Path, **attrs: object) -> Path:
    """Rewrite ``path`` with ``attrs`` set (``None`` deletes); ``TransferSyntaxUID`` goes to the file meta."""
    with _quiet_pydicom():
        ds = pydicom.dcmread(path)
        for keyword, value in attrs.items():
            if keyword == "TransferSyntaxUID":
                ds.file_meta.TransferSyntaxUID = value
            elif value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        ds.save_as(path)
    return path


def _patch(path: Path, old: bytes, new: bytes) -> Path:
    """Replace a placeholder in the file's bytes (same length, so nothing else moves): values pydicom refuses to
    write, e.g. a non-numeric Decimal String."""
    data = path.read_bytes()
    assert len(old) == len(new) and data.count(old) == 1
    path.write_bytes(data.replace(old, new))
    return path


def _error(read, path: Path, **kw) -> InputError:
    with pytest.raises(InputError) as info:
        read(path, **kw)
    assert info.value.fix
    return info.value


# --------------------------------------------------------------------------- degenerate pixel transforms


WINDOWS = {  # name -> (write_dicom kwargs, mutation, attribute named)
    "center_empty": ({"window": (2000, 3000)}, {"WindowCenter": ""}, "Window Center"),
    "center_not_a_number": ({"window": (2222.5, 3000)}, (b"2222.5", b"abcdef"), "Window Center"),
    "center_nan": ({"window": (2000, 3000)}, {"WindowCenter": "NaN"}, "Window Center"),
    "width_inf": ({"window": (2000, 3000)}, {"WindowWidth": "inf"}, "Window Width"),
    "width_zero": ({"window": (2000, 3000)}, {"WindowWidth": "0"}, "Window Width"),
    "pairs_mismatch": ({"window": (2000, 3000)}, {"WindowCenter": ["2000", "1000"]}, "Window Center"),
    "width_alone": ({"window": (2000, 3000)}, {"WindowCenter": None}, "Window Center"),
    "unknown_function": ({"window": (2000, 3000)}, {"VOILUTFunction": NAME}, "VOI LUT Function"),
    "flattens_the_image": ({"window": (90000, 10)}, {}, "Window Center"),
    "slope_zero": ({"rescale": (1, 0)}, {"RescaleSlope": "0"}, "Rescale Slope"),
    "slope_nan": ({"rescale": (1, 0)}, {"RescaleSlope": "NaN"}, "Rescale Slope"),
    "slope_two_values": ({"rescale": (1, 0)}, {"RescaleSlope": ["1", "2"]}, "Rescale Slope"),
    "intercept_inf": ({"rescale": (1, 0)}, {"RescaleIntercept": "-inf"}, "Rescale Intercept"),
    "intercept_not_a_number": ({"rescale": (1, 333.25)}, (b"333.25", b"DOE^JA"), "Rescale Intercept"),
    "slope_overflows": ({"rescale": (1, 0)}, {"RescaleSlope": "1e308"}, "Rescale Slope"),
    "range_collapses": ({"rescale": (1, 0)}, {"RescaleSlope": "1e-300", "RescaleIntercept": "1e300"}, "Rescale"),
}


@pytest.mark.parametrize("kind", sorted(WINDOWS))
def test_a_degenerate_pixel_transform_is_quarantined_naming_the_attribute(tmp_path: Path, kind: str,
                                                                           caplog: pytest.LogCaptureFixture):
    written, change, attribute = WINDOWS[kind]
    path = _write(tmp_path / f"{kind}.dcm", **written)
    path = _patch(path, *change) if isinstance(change, tuple) else _mutate(path, **change)
    caplog.set_level(logging.DEBUG)
    for read in (read_dicom, read_image):  # read_image: what predict and explain use
        err = _error(read, path)
        assert err.code == "bad_pixel_transform", (read, err)
        assert attribute in err.problem and attribute.split()[0] in err.fix, err
        assert err.path == str(path)
        for value in (NAME, "DOE^JA", "abcdef", "1e308", "1e300", "NaN", "inf"):
            assert value not in err.problem + err.fix
    # The rescale and window are header attributes: a header-only read (ingest --metadata-only) rejects them too,
    # except a window that flattens this particular image, which only the pixels show.
    if kind != "flattens_the_image":
        assert _error(read_dicom_header, path).code == "bad_pixel_transform"
    else:
        assert read_dicom_header(path).voi == "window"
    assert NAME not in caplog.text and "DOE^JA" not in caplog.text


def test_a_usable_window_rescale_and_multi_valued_window_still_read(tmp_path: Path):
    """The checks reject only what cannot give an image: paired multi-valued windows use the first pair."""
    path = _mutate(_write(tmp_path / "multi.dcm", window=(2000, 3000), rescale=(2, -100)),
                   WindowCenter=["2000", "1500"], WindowWidth=["3000", "1000"])
    first = _write(tmp_path / "first.dcm", window=(2000, 3000), rescale=(2, -100))
    np.testing.assert_array_equal(read_dicom(path).pixels, read_dicom(first).pixels)
    assert len(np.unique(read_dicom(path).pixels)) > 100


def test_a_flat_stored_image_is_not_a_degenerate_transform(tmp_path: Path):
    """A uniform image stays allowed (an empty mask, a blank frame): only a transform that flattens is refused."""
    path = tmp_path / "blank.dcm"
    write_dicom(path, np.full((16, 16), 300, np.uint16), patient_id="P", patient_name="X", bits_stored=12,
                window=(90000, 10))
    assert np.unique(read_dicom(path).pixels).size == 1


# --------------------------------------------------------------------------- transfer syntax


def test_an_unknown_transfer_syntax_is_unsupported_naming_the_uid_and_the_supported_ones(tmp_path: Path):
    path = _mutate(_write(tmp_path / "ts.dcm"), TransferSyntaxUID="1.2.3.4.5")
    for read in (read_dicom, read_dicom_header, read_image):
        err = _error(read, path)
        assert err.code == "unsupported_transfer_syntax", (read, err)
        assert "1.2.3.4.5" in err.problem
        assert "Explicit VR Little Endian" in err.fix and "RLE Lossless" in err.fix
    assert "Explicit VR Little Endian" in supported_transfer_syntaxes()


def test_a_transfer_syntax_uid_holding_a_name_is_not_echoed(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    path = _mutate(_write(tmp_path / "ts.dcm"), TransferSyntaxUID=NAME)
    caplog.set_level(logging.DEBUG)
    err = _error(read_dicom, path)
    assert err.code == "unsupported_transfer_syntax" and "not a valid UID" in err.problem
    assert NAME not in str(err) and NAME not in caplog.text


# --------------------------------------------------------------------------- FOR PROCESSING


@pytest.mark.parametrize("attrs", [{"PresentationIntentType": "FOR PROCESSING"},
                                   {"ImageType": ["ORIGINAL", "PRIMARY", "FOR PROCESSING"]},
                                   {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.2.1"}],
                         ids=["presentation_intent", "image_type", "sop_class"])
def test_for_processing_images_are_flagged(tmp_path: Path, attrs: dict):
    plain = _write(tmp_path / "plain.dcm")
    assert read_dicom(plain).for_processing is False and read_dicom_header(plain).for_processing is False
    raw = _mutate(_write(tmp_path / "raw.dcm"), **attrs)
    assert read_dicom(raw).for_processing is True and read_dicom_header(raw).for_processing is True


# --------------------------------------------------------------------------- no value echoed


@pytest.mark.parametrize("keyword, code", [("Modality", "modality"), ("PhotometricInterpretation", "corrupt")])
def test_a_value_that_fails_a_check_is_never_printed(tmp_path: Path, keyword: str, code: str,
                                                     caplog: pytest.LogCaptureFixture):
    path = _mutate(_write(tmp_path / "odd.dcm"), **{keyword: NAME})
    caplog.set_level(logging.DEBUG)
    for read in (read_dicom, read_dicom_header, read_image):
        err = _error(read, path)
        assert err.code == code
        assert NAME not in str(err) and "WINTERBOTTOM" not in str(err)
    assert "WINTERBOTTOM" not in caplog.text


def test_safe_fields_keep_no_odd_value(tmp_path: Path):
    """With any modality accepted, an odd Modality or Presentation Intent is not copied into the header."""
    path = _mutate(_write(tmp_path / "odd.dcm"), Modality=NAME, PresentationIntentType=NAME)
    header = read_dicom(path, expect_modality=None)
    assert header.modality == "unrecognised" and header.presentation_intent is None
    assert NAME not in repr(header)
    ct = _mutate(_write(tmp_path / "ct.dcm"), Modality="CT")
    assert read_dicom_header(ct, expect_modality=None).modality == "CT"


# --------------------------------------------------------------------------- pydicom's output


def test_pydicom_output_never_names_the_real_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                    capfd: pytest.CaptureFixture[str]):
    """pydicom's debug mode prints every file name and header byte to stderr: during a read nothing of it gets
    out, and pydicom's warnings are logged under the shown name with the value they quote redacted."""
    path = _mutate(_write(tmp_path / FOLDER / f"{FOLDER}.dcm"), SOPClassUID=NAME)  # pydicom quotes it when read
    bad = _mutate(_write(tmp_path / FOLDER / "bad.dcm"), Modality=NAME)
    pydicom_log = logging.getLogger("pydicom")
    handlers, level = list(pydicom_log.handlers), pydicom_log.level
    caplog.set_level(logging.DEBUG)
    pydicom.config.debug(True)  # adds a StreamHandler on stderr to the "pydicom" logger
    try:
        image = read_dicom(path, shown_path="dicom-dir:img-0001")
        with pytest.raises(InputError) as err:
            read_dicom(bad, shown_path="dicom-dir:img-0002")
    finally:
        pydicom.config.debug(False, default_handler=False)
        pydicom_log.handlers, pydicom_log.level = handlers, level
    out, errs = capfd.readouterr()
    for text in (caplog.text, out, errs, str(err.value)):
        assert FOLDER not in text and "DOE" not in text and "WINTERBOTTOM" not in text
    assert image.pixels.shape == (48, 40) and err.value.code == "modality"
    lines = [r.getMessage() for r in caplog.records if "DICOM header" in r.getMessage()]
    assert lines and all(line.startswith("dicom-dir:img-0001: DICOM header: ") for line in lines), lines
    assert any("Invalid value for VR UI: <value>" in line for line in lines), lines


def test_captured_messages_are_rewritten_to_the_shown_name(tmp_path: Path):
    """Whatever pydicom (or a plugin) says through warnings or its loggers: real path -> label, folders hidden."""
    path = tmp_path / "site" / FOLDER / "scan.dcm"
    with pydicom_warnings(redactor(path, "dicom-dir:img-0002", None)) as caught:
        logging.getLogger("pydicom").warning("cannot use %s", path)
        logging.getLogger("pydicom.pixels.decoders").error("decoder failed in %s", path.parent)
        warnings.warn(f"odd element in '{path}' of {FOLDER}", UserWarning, stacklevel=1)
    assert sorted(caught) == ["cannot use dicom-dir:img-0002", "decoder failed in <folder>",
                              "odd element in <value> of <folder>"]


# --------------------------------------------------------------------------- unexpected errors


def test_any_other_error_is_unexpected_with_its_type_and_a_debug_traceback(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture):
    closed = io.BytesIO(_write(tmp_path / "a.dcm").read_bytes())
    closed.close()
    caplog.set_level(logging.DEBUG)
    for read in (read_dicom, read_dicom_header):
        with pytest.raises(InputError) as err:
            read(closed)
        assert err.value.code == "unexpected" and err.value.problem == "unexpected error: ValueError"
    nul = tmp_path / FOLDER / "a\x00b.dcm"  # no system call takes a NUL byte: ValueError, not OSError
    for read in (read_dicom, read_image):
        with pytest.raises(InputError) as err:
            read(nul)
        assert err.value.code == "unexpected" and "ValueError" in err.value.problem
    traces = [r for r in caplog.records if "Traceback" in r.getMessage()]
    assert len(traces) == 4 and all(r.levelno == logging.DEBUG for r in traces)  # once per failed read
    assert all("ValueError" in r.getMessage() for r in traces)
    assert FOLDER not in caplog.text


# --------------------------------------------------------------------------- a source goes on


def test_a_dicom_folder_quarantines_bad_headers_and_keeps_the_good_file(tmp_path: Path):
    from mammoflow.sources.dicom_dir import read_dicom_dir

    root = tmp_path / "site"
    _write(root / "good.dcm", patient_id="P-1")
    _mutate(_write(root / "window.dcm", patient_id="P-2", window=(2000, 3000)), WindowCenter="")
    _mutate(_write(root / "syntax.dcm", patient_id="P-3"), TransferSyntaxUID="1.2.3.4.5")
    _mutate(_write(root / "slope.dcm", patient_id="P-4", rescale=(1, 0)), RescaleSlope="0")
    table = read_dicom_dir(root, salt="test-salt", find_labels=False)
    assert [r.image_path for r in table.records] == ["good.dcm"]
    codes = {Path(q.path).name: q.code for q in table.quarantine}
    assert codes == {"window.dcm": "bad_pixel_transform", "syntax.dcm": "unsupported_transfer_syntax",
                     "slope.dcm": "bad_pixel_transform"}
