"""Decoding damaged DICOM pixel data: explicit plugin order (GDCM last), decoder warnings rejected, OS errors."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000, UID, ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from mammoflow.errors import InputError
from mammoflow.io.dicom import decoding_plugins, read_dicom, read_dicom_header
from mammoflow.io.images import read_image
from mammoflow.synth.dicom_writer import write_dicom

REPO = Path(__file__).resolve().parents[1]
# A JPEG 2000 codestream that starts like a real one (SOC and SIZ markers) and goes on with noise: python-gdcm
# throws an uncaught C++ exception on it (the process aborts), pylibjpeg and Pillow raise a Python error.
J2K_START = bytes.fromhex("ff4fff510029")


def _write(path: Path, pixels: np.ndarray | None = None, **kw) -> Path:
    pixels = np.random.default_rng(0).integers(0, 4096, (48, 40)).astype(np.uint16) if pixels is None else pixels
    args = {"patient_id": "PID-1", "patient_name": "DOE^JANE", "laterality": "L", "view": "CC",
            "bits_stored": 8 if pixels.dtype == np.uint8 else 12}
    write_dicom(path, pixels, **{**args, **kw})
    return path


def _encapsulated(path: Path, frame: bytes, syntax: str, pixels: np.ndarray | None = None) -> Path:
    """A valid header whose pixel data is ``frame``, encapsulated under transfer syntax ``syntax``."""
    _write(path, pixels)
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    ds.save_as(path, enforce_file_format=True)
    return path


def _rle_with_padding(rows: int, cols: int) -> bytes:
    """An 8-bit RLE frame whose one segment decodes to 128 bytes more than the image holds ("non-conformant
    padding"): pydicom only warns, and returns pixels."""
    header = np.zeros(16, "<u4")
    header[:2] = 1, 64  # one segment, starting after the 64-byte header
    runs = -(-rows * cols // 128) + 1  # one replicate run (128 copies of a byte) too many
    return header.tobytes() + b"\x81\x10" * runs


def test_gdcm_is_only_a_last_resort():
    from pydicom.pixels import get_decoder

    assert decoding_plugins(ExplicitVRLittleEndian) == ()  # native: pydicom itself, no plugin
    # RLE: the compiled decoder (pylibjpeg-rle, pinned in the lock) first, pydicom's pure-Python one after it.
    assert decoding_plugins(RLELossless)[:2] == ("pylibjpeg", "pydicom")
    for uid in (JPEG2000Lossless, JPEG2000, UID("1.2.840.10008.1.2.4.70"), UID("1.2.840.10008.1.2.4.80")):
        available = set(get_decoder(uid).available_plugins)
        plugins = decoding_plugins(uid)
        assert set(plugins) <= available and plugins
        if available - {"gdcm"}:
            assert "gdcm" not in plugins, (uid.name, plugins)
        else:
            assert plugins == ("gdcm",)
    if "pylibjpeg" in get_decoder(JPEG2000Lossless).available_plugins:
        assert decoding_plugins(JPEG2000Lossless)[0] == "pylibjpeg"


def test_corrupt_jpeg2000_is_quarantined_and_the_rest_of_the_folder_ingested(tmp_path: Path):
    """Run in a child process: a regression (GDCM tried first) aborts the process, which would end pytest."""
    root = tmp_path / "site"
    rng = np.random.default_rng(7)
    _write(root / "good.dcm")
    other = np.random.default_rng(1).integers(0, 4096, (48, 40)).astype(np.uint16)  # not a duplicate of good.dcm
    _write(root / "good_j2k.dcm", other, transfer_syntax="jpeg2000")
    _encapsulated(root / "bad_lossless.dcm", J2K_START + rng.bytes(3000), JPEG2000Lossless)
    _encapsulated(root / "bad_lossy.dcm", J2K_START + rng.bytes(3000), JPEG2000)
    script = ("import json, sys\nfrom mammoflow.sources.dicom_dir import read_dicom_dir\n"
              "t = read_dicom_dir(sys.argv[1], salt='s')\n"
              "print(json.dumps({'used': sorted(r.image_path for r in t.records),"
              " 'quarantined': {q.record_id: [q.code, q.path, q.problem] for q in t.quarantine}}))\n")
    done = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["used"] == ["good.dcm", "good_j2k.dcm"]
    assert set(out["quarantined"]) == {"dicom-dir:bad_lossless.dcm", "dicom-dir:bad_lossy.dcm"}
    for rid, (code, path, problem) in out["quarantined"].items():
        assert code == "corrupt" and path.endswith(rid.split(":", 1)[1])
        assert "cannot be decoded" in problem and "gdcm" not in problem


def test_a_syntax_without_any_decoder_is_a_codec_error(tmp_path: Path):
    path = _encapsulated(tmp_path / "video.dcm", bytes(64), "1.2.840.10008.1.2.4.100")  # MPEG2: no decoder
    with pytest.raises(InputError) as err:
        read_dicom(path)
    assert err.value.code == "codec" and "MPEG2" in err.value.problem and "pylibjpeg" in err.value.fix


def test_rle_is_decoded_by_the_compiled_plugin_to_the_same_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pixels = np.random.default_rng(3).integers(0, 4096, (48, 40)).astype(np.uint16)
    path = _write(tmp_path / "rle.dcm", pixels, transfer_syntax="rle")
    import pydicom.pixels

    used = []
    real = pydicom.pixels.pixel_array

    def spy(ds, **kwargs):
        used.append(kwargs.get("decoding_plugin"))
        return real(ds, **kwargs)

    monkeypatch.setattr(pydicom.pixels, "pixel_array", spy)
    fast = read_dicom(path).pixels
    assert used[0] == "pylibjpeg"
    monkeypatch.setattr("mammoflow.io.dicom._PLUGIN_ORDER", ("pydicom",))
    np.testing.assert_array_equal(read_dicom(path).pixels, fast)  # pydicom's own decoder: the same image


def test_a_decoder_warning_rejects_the_image_naming_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch):
    # pydicom's own RLE decoder warns about non-conformant padding (the compiled plugin decodes the frame silently):
    # the decoder used when pylibjpeg-rle is missing.
    monkeypatch.setattr("mammoflow.io.dicom._PLUGIN_ORDER", ("pydicom",))
    pixels = np.full((48, 40), 16, np.uint8)
    bad = _encapsulated(tmp_path / "padded_rle.dcm", _rle_with_padding(48, 40), RLELossless, pixels)
    with warnings.catch_warnings(record=True) as escaped, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        with pytest.raises(InputError) as err:
            read_dicom(bad)
    assert err.value.code == "corrupt" and err.value.path == str(bad)
    assert "non-conformant padding" in err.value.problem and "padded_rle.dcm" in str(err.value)
    # Reported once, by the error: no Python warning and no pydicom log line escapes.
    assert escaped == [] and "non-conformant" not in caplog.text
    # The same frame without the extra run is a good image: the rejection is about the padding only.
    header = _rle_with_padding(48, 40)[:-2]
    good = _encapsulated(tmp_path / "good_rle.dcm", header, RLELossless, pixels)
    assert read_dicom(good).pixels.shape == (48, 40)


def test_header_warnings_are_logged_once_naming_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the writer's own validation warning is not under test
        path = _write(tmp_path / "long_id.dcm", patient_id="X" * 70)
    caplog.clear()
    with warnings.catch_warnings(record=True) as escaped, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        image = read_dicom(path)
        read_dicom_header(path, log_as="dicom-dir:img-0123")
    assert image.pixels.shape == (48, 40) and escaped == []
    lines = [r.getMessage() for r in caplog.records if "exceeds the maximum length" in r.getMessage()]
    assert lines == ["long_id.dcm: DICOM header: The value length (70) exceeds the maximum length of 64 allowed "
                     "for VR LO.", "dicom-dir:img-0123: DICOM header: The value length (70) exceeds the maximum "
                     "length of 64 allowed for VR LO."]
    assert "X" * 70 not in caplog.text


def test_files_the_system_cannot_open_are_unreadable(tmp_path: Path):
    loop = tmp_path / "loop.dcm"
    os.symlink(tmp_path / "loop2.dcm", loop)
    os.symlink(loop, tmp_path / "loop2.dcm")  # a symbolic link loop: OSError ELOOP, not FileNotFoundError
    for read in (read_dicom, read_dicom_header, read_image):
        with pytest.raises(InputError) as err:
            read(loop)
        assert err.value.code == "unreadable" and err.value.path == str(loop), read
        assert "permissions" in err.value.fix
    if os.geteuid() != 0:  # root reads anything: the permission case needs an ordinary user
        locked = _write(tmp_path / "locked.dcm")
        locked.chmod(0)
        with pytest.raises(InputError) as err:
            read_dicom(locked)
        assert err.value.code == "unreadable"


def test_setup_logging_sends_warnings_through_logging_once():
    """In a child process: setup_logging configures the process's root logger and warning machinery."""
    script = ("import warnings\nfrom mammoflow.logs import setup_logging\nsetup_logging()\n"
              "warnings.warn('a library warning')\n"
              "from pydicom.valuerep import validate_value\nvalidate_value('LO', 'X' * 70, 1)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"})
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert [line for line in lines if "a library warning" in line][0].split(" ", 1)[1].startswith(
        "WARNING py.warnings: ")
    # pydicom logs and warns each message: only the logged copy is printed.
    assert sum("exceeds the maximum length" in line for line in lines) == 1
