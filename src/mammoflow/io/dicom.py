"""DICOM mammograms with pydicom: decode, display pipeline, de-identification, and a writer for test data.

tensorflow-io is not used (abandoned; its DICOM op breaks with TF 2.21, see README). pydicom decodes the
common transfer syntaxes through its pixel-data plugins: uncompressed (implicit/explicit little endian)
and RLE Lossless natively, JPEG Lossless (Process 14 / SV1), JPEG-LS and JPEG 2000 through pylibjpeg or GDCM.

**Decoding plugins.** Each compressed file is decoded with an explicit plugin order (:func:`decoding_plugins`):
pydicom's own, pylibjpeg, Pillow, pyjpegls; GDCM only for a transfer syntax none of those decodes, because
python-gdcm lets a C++ exception escape on some damaged JPEG 2000 streams and that aborts the whole process
(``terminate called after throwing ...``), where the other plugins raise a Python error that is quarantined.
A warning from the decoder (e.g. an RLE segment with non-conformant padding) means the pixels cannot be
trusted: the file is rejected (code ``corrupt``) instead of being used. Warnings while reading the header are
logged once, naming the file.

**Pixel mapping.** :func:`read_dicom` returns what a viewer would display, tissue bright, on one scale:

1. stored values (bits above ``BitsStored`` masked off);
2. Modality LUT: ``ModalityLUTSequence`` or ``RescaleSlope``/``RescaleIntercept``;
3. VOI: ``VOILUTSequence`` if present, else ``WindowCenter``/``WindowWidth`` (first of each), else none;
4. the result is mapped linearly from the full output range of the last step that applied — the stored
   range ``[0, 2**BitsStored - 1]`` (or the signed range) sent through the Modality LUT, the window's
   output range, or the VOI LUT's lowest..highest entry — onto ``[0, 65535]``, and inverted when the
   image is ``MONOCHROME1`` (or has ``PresentationLUTShape`` ``INVERSE``).

The range is the *possible* one, not the image's min/max, so the mapping depends only on the header:
a MONOCHROME1 image stored as ``2**BitsStored - 1 - v`` and its MONOCHROME2 twin ``v`` give identical arrays,
a 16-bit MONOCHROME2 image without LUTs comes back unchanged, and a 12-bit one is scaled by 65535/4095.
A linear rescale alone does not change the displayed image (as on a viewer), but a window is applied in
rescaled units, as the standard defines.

**De-identification.** :class:`DicomHeader`/:class:`DicomImage` hold no identifier: the patient is a salted
SHA-256 pseudonym, and no name, id, date, accession number, institution or UID leaves this module.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from mammoflow.errors import InputError

log = logging.getLogger(__name__)

FULL_SCALE = 65535
MG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation
# SNOMED / SRT codes of the two standard views, for files without ViewPosition.
_VIEW_CODES = {"R-10242": "CC", "399162004": "CC", "R-10226": "MLO", "399368009": "MLO"}
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR", "YBR_PARTIAL_420")
# pydicom decoding plugins in the order they are tried. GDCM is not among them on purpose: python-gdcm lets C++
# exceptions escape on some damaged JPEG 2000 streams (std::terminate aborts the process; nothing in Python can
# catch it), while pylibjpeg and Pillow reject the same bytes with an exception. It is used only as the last
# resort for a transfer syntax that no other installed plugin decodes (see decoding_plugins).
_PLUGIN_ORDER = ("pydicom", "pylibjpeg", "pillow", "pyjpegls")
_LAST_RESORT_PLUGINS = ("gdcm",)
_CODEC_FIX = "install pylibjpeg with its plugins (pylibjpeg-libjpeg, -openjpeg) or python-gdcm"

# Transfer syntax names accepted by write_dicom -> (UID, encoder). "gdcm" encoders transcode an
# uncompressed file with GDCM; "pydicom" ones use Dataset.compress with pydicom's own plugins.
_TRANSFER_SYNTAXES: dict[str, tuple[str, str]] = {
    "explicit_le": ("1.2.840.10008.1.2.1", "none"),
    "implicit_le": ("1.2.840.10008.1.2", "none"),
    "rle": ("1.2.840.10008.1.2.5", "pydicom"),
    "jpeg2000": ("1.2.840.10008.1.2.4.90", "pydicom"),
    "jpeg_lossless": ("1.2.840.10008.1.2.4.70", "gdcm"),
    "jpeg_ls": ("1.2.840.10008.1.2.4.80", "gdcm"),
}


# --------------------------------------------------------------------------- results


@dataclass(repr=False)
class DicomHeader:
    """The safe, non-identifying header fields of one DICOM image.

    ``pseudo_patient_id`` is ``p-`` + the first 16 hex digits of SHA-256(salt, PatientID); ``None`` when the
    file has no PatientID. ``transfer_syntax`` is the syntax's name, ``photometric`` the original value.
    """

    pseudo_patient_id: str | None
    laterality: str | None  # "L" / "R"
    view: str | None  # "CC" / "MLO"
    modality: str | None
    bits_allocated: int
    bits_stored: int
    photometric: str
    transfer_syntax: str
    rows: int
    cols: int
    presentation_intent: str | None  # FOR PRESENTATION / FOR PROCESSING
    voi: str  # "lut", "window" or "none": which VOI step the header asks for
    pixel_spacing_mm: tuple[float, float] | None

    def _summary(self) -> str:
        parts = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(DicomHeader)]
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"DicomHeader({self._summary()})"


@dataclass(repr=False)
class DicomImage(DicomHeader):
    """A decoded image: ``pixels`` is 2-D ``uint16``, tissue bright, on the 0..65535 scale (see module doc)."""

    pixels: np.ndarray

    def __repr__(self) -> str:
        # Never dump pixel values (huge) - shape and dtype say enough.
        px = f"pixels=<{self.pixels.dtype} {self.pixels.shape[0]}x{self.pixels.shape[1]}>"
        return f"DicomImage({self._summary()}, {px})"


def pseudonym(value: str, salt: str, prefix: str = "p-") -> str:
    """Salted SHA-256 pseudonym: ``prefix`` + 16 hex digits. The same (value, salt) always gives the same id."""
    digest = hashlib.sha256(f"{salt}\x00{value}".encode()).hexdigest()
    return prefix + digest[:16]


# --------------------------------------------------------------------------- reading


def _shown(src: str | Path | BinaryIO, shown_path: object | None) -> str:
    if shown_path is not None:
        return str(shown_path)
    return str(src) if isinstance(src, (str, Path)) else getattr(src, "name", "<bytes>")


@contextmanager
def _binary_stream(src: str | Path | BinaryIO, where: str) -> Iterator[BinaryIO]:
    from mammoflow.io.images import read_bytes, split_zip_path, unreadable_error

    if not isinstance(src, (str, Path)):
        yield src
    elif split_zip_path(src) is not None:
        yield io.BytesIO(read_bytes(src))
    else:
        try:
            fh = open(src, "rb")  # noqa: SIM115 - closed below
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise InputError(where, "file not found", "check the path and the records folder's image_root",
                             code="missing_file") from None
        except OSError as exc:  # permissions, a symlink loop, a name too long, a storage error
            raise unreadable_error(where, exc) from None
        with fh:
            yield fh


def _open_dataset(src: str | Path | BinaryIO, where: str, stop_before_pixels: bool, log_as: str | None = None) -> Any:
    """pydicom Dataset of a path, a path through a zip, or a binary stream; file errors -> InputError."""
    with _binary_stream(src, where) as fh:
        start = fh.tell()
        size = fh.seek(0, os.SEEK_END) - start
        fh.seek(start)
        if size == 0:
            raise InputError(where, "the file is empty (0 bytes)", "re-download or re-export the image",
                             code="empty")
        try:
            with pydicom_warnings() as caught:
                ds = _dcmread(fh, start, where, stop_before_pixels)
            _log_header_warnings(where, log_as, caught)
        except InputError:
            raise
        except OSError as exc:  # a read error of the storage, not of the DICOM content
            from mammoflow.io.images import unreadable_error

            raise unreadable_error(where, exc) from None
        except Exception as exc:  # pydicom raises many types on damaged files (EOFError, ValueError, ...)
            text = str(exc).lower()
            truncated = isinstance(exc, EOFError) or "end of file" in text or "prematurely" in text
            raise InputError(where, f"unreadable DICOM file ({type(exc).__name__}: {exc})",
                             "re-download or re-export the image",
                             code="truncated" if truncated else "corrupt") from None
        if not stop_before_pixels:
            _check_complete(ds, fh.tell() - start, size, where)
    return ds


def _dcmread(fh: BinaryIO, start: int, where: str, stop_before_pixels: bool) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(fh, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        # Files written without the 128-byte preamble and "DICM" are still met; accept them only if what
        # is read looks like an image header.
        fh.seek(start)
        ds = pydicom.dcmread(fh, stop_before_pixels=stop_before_pixels, force=True)
        if "Rows" not in ds or "Columns" not in ds:
            raise InputError(where, "not a DICOM file (no DICM marker and no image header)",
                             "check that this is a DICOM image; re-export it", code="corrupt") from None
        _set_transfer_syntax_from_encoding(ds)
        return ds


def _check_complete(ds: Any, consumed: int, size: int, where: str) -> None:
    """Detect a cut file: pydicom stops quietly at the end of a file (keeping a partial or empty data set)."""
    problem = None
    if len(ds) == 0:
        problem = "the file ends inside its data set (nothing after the file meta could be read)"
    elif consumed < size:
        problem = f"the file ends inside a data element ({size - consumed} stray bytes at the end)"
    else:
        last = ds.get_item(max(ds.keys()))
        length, value = getattr(last, "length", None), getattr(last, "value", None)
        if isinstance(value, bytes) and length is not None and length != 0xFFFFFFFF and len(value) < length:
            problem = f"the file ends inside element {last.tag}: {len(value)} of {length} bytes present"
    if problem:
        raise InputError(where, f"truncated DICOM file: {problem}", "re-download or re-export the image",
                         code="truncated")


def _set_transfer_syntax_from_encoding(ds: Any) -> None:
    """A raw dataset (no file meta) is uncompressed: record the encoding pydicom detected while reading."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" in ds.file_meta:
        return
    implicit, little = ds.original_encoding
    ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                      ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _int(ds: Any, keyword: str, default: int | None = None) -> int | None:
    value = ds.get(keyword, default)
    try:
        return default if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return default


def _laterality(ds: Any) -> str | None:
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword, "") or "").strip().upper()
        if value in ("L", "R"):
            return value
    return None


def _view(ds: Any) -> str | None:
    value = str(ds.get("ViewPosition", "") or "").strip().upper()
    if value in ("CC", "MLO"):
        return value
    for item in ds.get("ViewCodeSequence", []) or []:
        code = str(item.get("CodeValue", "")).strip()
        if code in _VIEW_CODES:
            return _VIEW_CODES[code]
    return None


def _pixel_spacing(ds: Any) -> tuple[float, float] | None:
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2:
            try:
                return float(value[0]), float(value[1])
            except (TypeError, ValueError):
                continue
    return None


def _header(ds: Any, where: str, salt: str, expect_modality: str | None) -> DicomHeader:
    """Validate the image header and extract the safe fields (identifiers are read, hashed, dropped)."""
    modality = str(ds.get("Modality", "") or "").strip().upper() or None
    if expect_modality is not None and modality != expect_modality.upper():
        raise InputError(where, f"modality is {modality or 'missing'}, expected {expect_modality}",
                         f"give only {expect_modality} (mammography) images, or pass expect_modality=None "
                         "(CLI: --any-modality) to accept other modalities", code="modality")
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    samples = _int(ds, "SamplesPerPixel", 1)
    if photometric in _COLOUR or (samples or 1) > 1:
        raise InputError(where, f"colour image ({photometric or 'SamplesPerPixel'} {samples})",
                         "give greyscale (MONOCHROME1/2) mammograms; convert colour images to greyscale",
                         code="rgb")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(where, f"unsupported PhotometricInterpretation {photometric or '(missing)'}",
                         "give MONOCHROME1 or MONOCHROME2 images", code="corrupt")
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    if rows is None or cols is None:
        raise InputError(where, "no Rows/Columns in the header", "re-export the image", code="corrupt")
    if rows <= 0 or cols <= 0:
        raise InputError(where, f"the image has no pixels ({cols}x{rows})", "re-export the image", code="empty")
    allocated, stored = _int(ds, "BitsAllocated"), _int(ds, "BitsStored")
    stored = stored if stored is not None else allocated
    if allocated not in (8, 16) or stored is None or not 8 <= stored <= allocated:
        raise InputError(where, f"unsupported bit depth (BitsAllocated {allocated}, BitsStored {stored})",
                         "give images with 8 to 16 bits stored in 8 or 16 allocated bits", code="bit_depth")
    frames = _int(ds, "NumberOfFrames", 1) or 1
    if frames > 1:
        raise InputError(where, f"multi-frame image ({frames} frames)",
                         "give 2-D mammograms (one frame); tomosynthesis volumes are not supported",
                         code="multiframe")
    patient = str(ds.get("PatientID", "") or "").strip()
    voi = "lut" if ds.get("VOILUTSequence") else "window" if "WindowCenter" in ds and "WindowWidth" in ds \
        else "none"
    intent = str(ds.get("PresentationIntentType", "") or "").strip().upper() or None
    return DicomHeader(
        pseudo_patient_id=pseudonym(patient, salt) if patient else None,
        laterality=_laterality(ds),
        view=_view(ds),
        modality=modality,
        bits_allocated=allocated,
        bits_stored=stored,
        photometric=photometric,
        transfer_syntax=_transfer_syntax_name(ds),
        rows=rows,
        cols=cols,
        presentation_intent=intent,
        voi=voi,
        pixel_spacing_mm=_pixel_spacing(ds),
    )


def _safe_header(ds: Any, where: str, salt: str, expect_modality: str | None,
                 log_as: str | None = None) -> DicomHeader:
    try:
        # Values are validated when first read: pydicom's warnings about them are logged once, naming the file.
        with pydicom_warnings() as caught:
            header = _header(ds, where, salt, expect_modality)
        _log_header_warnings(where, log_as, caught)
        return header
    except InputError:
        raise
    except Exception as exc:  # elements are converted lazily: a malformed value fails only when read
        raise InputError(where, f"malformed header value ({type(exc).__name__}: {exc})",
                         "re-export the image", code="corrupt") from None


def _transfer_syntax_name(ds: Any) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    if uid is None:
        return "Implicit VR Little Endian (assumed)"
    return str(getattr(uid, "name", uid))


def read_dicom_header(src: str | Path | BinaryIO, salt: str = "", expect_modality: str | None = "MG",
                      shown_path: object | None = None, log_as: str | None = None) -> DicomHeader:
    """Validated safe header fields without decoding pixels (stops before Pixel Data: fast for indexing)."""
    where = _shown(src, shown_path)
    ds = _open_dataset(src, where, stop_before_pixels=True, log_as=log_as)
    return _safe_header(ds, where, salt, expect_modality, log_as)


def read_dicom(src: str | Path | BinaryIO, salt: str = "", expect_modality: str | None = "MG",
               shown_path: object | None = None, log_as: str | None = None) -> DicomImage:
    """Decode one DICOM mammogram into display pixels (tissue bright, ``uint16``) and safe header fields.

    ``src`` is a path (also through a zip archive) or a binary stream; ``shown_path`` names it in errors,
    ``log_as`` in log lines (default: the file's name; a source passes its record id, which may be a pseudonym).
    Raises :class:`InputError` (codes ``missing_file``, ``unreadable``, ``empty``, ``truncated``, ``corrupt``
    (also when the decoder warns), ``codec``, ``modality``, ``rgb``, ``bit_depth``, ``multiframe``).
    """
    where = _shown(src, shown_path)
    ds = _open_dataset(src, where, stop_before_pixels=False, log_as=log_as)
    header = _safe_header(ds, where, salt, expect_modality, log_as)
    if "PixelData" not in ds:
        raise InputError(where, "no pixel data in the file", "re-export the image with its pixel data",
                         code="corrupt")
    raw = _decode(ds, where, header)
    try:
        pixels = display_pixels(raw, ds)
    except (ValueError, NotImplementedError, IndexError, KeyError) as exc:
        raise InputError(where, f"the Modality/VOI LUT cannot be applied ({exc})",
                         "fix or remove the LUT attributes of the file", code="corrupt") from None
    return DicomImage(**{f.name: getattr(header, f.name) for f in fields(DicomHeader)}, pixels=pixels)


def decoding_plugins(transfer_syntax: Any) -> tuple[str, ...]:
    """The pydicom decoding plugins to try for a transfer syntax UID, in order; ``()`` for native (uncompressed)
    syntaxes, which need no plugin.

    Installed plugins are tried in :data:`_PLUGIN_ORDER`; GDCM only when no other installed plugin decodes the
    syntax (it can abort the process on damaged JPEG 2000 data, see the module docstring). Raises
    ``NotImplementedError`` when pydicom has no decoder at all for the syntax.
    """
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    decoder = get_decoder(UID(str(transfer_syntax)))
    if not decoder.is_encapsulated:
        return ()
    available = decoder.available_plugins
    rank = {name: i for i, name in enumerate(_PLUGIN_ORDER)}
    safe = sorted((p for p in available if p not in _LAST_RESORT_PLUGINS), key=lambda p: (rank.get(p, len(rank)), p))
    return tuple(safe) or tuple(p for p in _LAST_RESORT_PLUGINS if p in available)


class _Collect(logging.Handler):
    """Takes the records of the ``pydicom`` logger tree while it does not propagate: warnings and errors are kept
    (reported once by the caller), anything lower goes on to the root logger as it would have."""

    def __init__(self, into: list[str]):
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.into.append(record.getMessage())
        else:
            logging.getLogger().handle(record)


@contextmanager
def pydicom_warnings() -> Iterator[list[str]]:
    """Collect what pydicom warns about inside the block (and errors it only logs), once per message, in order.

    pydicom sends each warning both to :mod:`warnings` and to its ``pydicom`` logger (so it would be printed
    twice, without the file's name), and logs a failed decoding plugin with a traceback: all of it is caught here
    and the caller decides (reject the file, or log the messages naming it). The list is filled when the block
    ends. ``warnings.catch_warnings`` is process-global: do not decode in several threads at once (mammoflow
    parallelises with processes).
    """
    messages: list[str] = []
    logged: list[str] = []
    pydicom_log = logging.getLogger("pydicom")
    collect = _Collect(logged)
    propagate = pydicom_log.propagate
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        pydicom_log.addHandler(collect)
        pydicom_log.propagate = False  # child loggers (pydicom.pixels...) end here too
        try:
            yield messages
        finally:
            pydicom_log.removeHandler(collect)
            pydicom_log.propagate = propagate
            messages.extend(dict.fromkeys([*(str(w.message) for w in recorded), *logged]))


def _log_header_warnings(where: str, log_as: str | None, messages: list[str]) -> None:
    # Without log_as, the file's name, not its path: folder names of a site's export may hold patient names.
    for message in messages:
        log.warning("%s: DICOM header: %s", log_as or Path(where).name, message)


def _decode(ds: Any, where: str, header: DicomHeader) -> np.ndarray:
    from pydicom.pixels import pixel_array

    expected = header.rows * header.cols * header.bits_allocated // 8
    uid = ds.file_meta.TransferSyntaxUID
    if not uid.is_compressed:
        have = len(ds.PixelData)
        if have < expected:
            raise InputError(where, f"truncated pixel data: {have} of {expected} bytes present",
                             "re-download or re-export the image", code="truncated")
    try:
        plugins = decoding_plugins(uid)
    except NotImplementedError:
        raise InputError(where, f"no decoder for {header.transfer_syntax}", _CODEC_FIX, code="codec") from None
    if uid.is_compressed and not plugins:
        raise InputError(where, f"no decoder for {header.transfer_syntax} is installed", _CODEC_FIX,
                         code="codec")
    failures: list[tuple[str, Exception]] = []
    arr = None
    for plugin in plugins or ("",):  # "": a native syntax, decoded by pydicom itself
        # Only the warnings of the plugin that succeeds count; a plugin that fails is reported by its exception.
        with pydicom_warnings() as caught:
            try:
                arr = pixel_array(ds, decoding_plugin=plugin)
            except Exception as exc:  # the plugins raise many types (RuntimeError, ValueError, ...)
                failures.append((plugin, exc))
        if arr is not None:
            break
    if arr is None:
        raise _decode_error(where, header, failures)
    if caught:
        # A decoder that warns has met data that breaks the standard (e.g. RLE segments longer than the image):
        # the pixels it returns cannot be trusted.
        raise InputError(where, f"the pixel data is damaged (decoder warning: {'; '.join(caught)})",
                         "re-download or re-export the image", code="corrupt")
    if arr.ndim != 2:
        raise InputError(where, f"decoded pixel array has shape {arr.shape}, expected 2-D",
                         "give single-frame greyscale images", code="corrupt")
    return arr


def _decode_error(where: str, header: DicomHeader, failures: list[tuple[str, Exception]]) -> InputError:
    """One InputError for the plugins that all failed: ``codec`` when none could run, else corrupt/truncated."""
    texts = [str(exc).lower() for _, exc in failures]
    said = "; ".join(f"{plugin or 'pydicom'}: {_plugin_message(plugin, exc)}" for plugin, exc in failures)
    if all(isinstance(exc, (ImportError, NotImplementedError)) or "no pixel data decoders" in text
           or "missing required dependencies" in text or "missing dependencies" in text
           for (_, exc), text in zip(failures, texts, strict=True)):
        return InputError(where, f"no decoder for {header.transfer_syntax} ({said})", _CODEC_FIX, code="codec")
    truncated = any("truncat" in t or "end of" in t or "insufficient" in t or "too short" in t for t in texts)
    return InputError(where, f"the pixel data cannot be decoded ({said})", "re-download or re-export the image",
                      code="truncated" if truncated else "corrupt")


def _plugin_message(plugin: str, exc: Exception) -> str:
    """The plugin's own words: pydicom wraps them in "Unable to decode as exceptions were raised by all available
    plugins:\n  <plugin>: <message>"; object reprs (``<_io.BytesIO object at 0x7f...>``) vary between runs."""
    text = str(exc)
    marker = f"\n  {plugin}: "
    if plugin and marker in text:
        text = text.split(marker, 1)[1]
    else:
        text = f"{type(exc).__name__}: {text}"
    return re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "<data>", " ".join(text.split()))


# --------------------------------------------------------------------------- display pipeline


def stored_range(bits_stored: int, signed: bool) -> tuple[int, int]:
    """Lowest and highest value ``bits_stored`` bits can hold."""
    if signed:
        return -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
    return 0, (1 << bits_stored) - 1


def _lut_bits(ds: Any, keyword: str) -> int:
    return int(ds[keyword][0].LUTDescriptor[2])


def display_pixels(raw: np.ndarray, ds: Any) -> np.ndarray:
    """Stored values -> display values on 0..65535, tissue bright (the mapping in the module docstring)."""
    from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

    bits = int(ds.BitsStored)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    s_lo, s_hi = stored_range(bits, signed)
    if not signed:
        # Bits above BitsStored may hold overlays or garbage: they are not part of the pixel value.
        raw = raw & np.asarray(s_hi, dtype=raw.dtype)
    else:
        raw = np.clip(raw, s_lo, s_hi)

    has_mlut = bool(ds.get("ModalityLUTSequence"))
    slope = float(ds.get("RescaleSlope", 1) or 1) if "RescaleSlope" in ds else 1.0
    intercept = float(ds.get("RescaleIntercept", 0) or 0) if "RescaleIntercept" in ds else 0.0
    if has_mlut:
        values: np.ndarray = apply_modality_lut(raw, ds)
        lo, hi = 0.0, float((1 << _lut_bits(ds, "ModalityLUTSequence")) - 1)
    elif slope != 1.0 or intercept != 0.0:
        values = raw.astype(np.float64) * slope + intercept
        lo, hi = sorted((s_lo * slope + intercept, s_hi * slope + intercept))
    else:
        values = raw
        lo, hi = float(s_lo), float(s_hi)

    if ds.get("VOILUTSequence"):
        item = ds.VOILUTSequence[0]
        n_entries = int(item.LUTDescriptor[0]) or 65536
        lut = np.asarray(apply_voi(np.arange(n_entries) + int(item.LUTDescriptor[1]), ds))
        values = apply_voi(np.rint(values).astype(np.int64), ds)
        # The LUT's own output range: files often declare 16-bit entries that only reach 4095.
        lo, hi = float(lut.min()), float(lut.max())
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        # pydicom sends values below the window to the rescaled stored minimum and values above it to the
        # rescaled maximum: those are 0 and 65535 here, whatever the sign of the slope.
        values = apply_windowing(values, ds)
        if not has_mlut:
            lo, hi = s_lo * slope + intercept, s_hi * slope + intercept

    invert = str(ds.PhotometricInterpretation).upper() == "MONOCHROME1" or \
        str(ds.get("PresentationLUTShape", "") or "").upper() == "INVERSE"
    return to_full_scale(values, lo, hi, invert)


def to_full_scale(values: np.ndarray, lo: float, hi: float, invert: bool) -> np.ndarray:
    """Map ``lo``..``hi`` linearly onto 0..65535 as ``uint16`` (``lo`` -> 0), optionally inverted."""
    if hi == lo:
        raise ValueError(f"empty output range [{lo}, {hi}]")
    if values.dtype.kind in "ui" and lo == 0 and hi == FULL_SCALE:
        out = values.astype(np.uint16)  # 16-bit data without LUTs: exact, no float round trip
    else:
        frac = (values.astype(np.float64) - lo) / (hi - lo)
        out = np.rint(np.clip(frac, 0.0, 1.0) * FULL_SCALE).astype(np.uint16)
    if invert:
        out = np.uint16(FULL_SCALE) - out
    return np.ascontiguousarray(out)


# --------------------------------------------------------------------------- writing (test and demo data)


def available_transfer_syntaxes() -> list[str]:
    """Names :func:`write_dicom` can write here (compressed ones depend on the installed plugins)."""
    from pydicom.pixels import get_encoder

    names = []
    for name, (uid, how) in _TRANSFER_SYNTAXES.items():
        if how == "none":
            names.append(name)
        elif how == "pydicom":
            if get_encoder(uid).is_available:
                names.append(name)
        elif how == "gdcm":
            try:
                import gdcm  # noqa: F401
            except ImportError:
                continue
            names.append(name)
    return names


def write_dicom(
    path: str | Path,
    pixels: np.ndarray,
    *,
    patient_id: str,
    patient_name: str,
    laterality: str | None = None,
    view: str | None = None,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 16,
    transfer_syntax: str = "explicit_le",
    modality: str = "MG",
    birth_date: str = "19600101",
    accession_number: str = "A0000001",
    institution_name: str = "Synthetic Breast Clinic",
    study_date: str = "20000101",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    series_description: str = "",
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    voi_lut: tuple[int, int, np.ndarray] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write a valid single-frame MG DICOM file atomically (for tests and demo data).

    ``pixels`` is the image as it should be *displayed* in stored-value units (``uint8``/``uint16``,
    or ``int16`` for signed data) with values within ``bits_stored`` bits; for ``MONOCHROME1`` the stored
    values are inverted (``max + min - v``) so both photometrics encode the same picture. The header carries
    realistic identifiers (name, id, birth date, accession number, institution, UIDs) so that tests can
    check none leaks. ``rescale`` = (slope, intercept); ``window`` = (center, width); ``voi_lut`` =
    (first mapped value, bits per entry, entries); ``extra`` sets any further keyword = value.
    UIDs not given are derived from the other identifiers, so the same call writes the same bytes.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import UID, generate_uid

    if transfer_syntax not in _TRANSFER_SYNTAXES:
        raise ValueError(f"unknown transfer syntax {transfer_syntax!r}; use one of {sorted(_TRANSFER_SYNTAXES)}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError("photometric must be MONOCHROME1 or MONOCHROME2")
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16, np.int16):
        raise ValueError(f"expected a 2-D uint8/uint16/int16 array, got {pixels.dtype} {pixels.shape}")
    signed = pixels.dtype == np.int16
    allocated = 8 if pixels.dtype == np.uint8 else 16
    if not 1 <= bits_stored <= allocated:
        raise ValueError(f"bits_stored {bits_stored} does not fit {pixels.dtype}")
    s_lo, s_hi = stored_range(bits_stored, signed)
    if pixels.size and (int(pixels.min()) < s_lo or int(pixels.max()) > s_hi):
        raise ValueError(f"pixel values must lie in [{s_lo}, {s_hi}] for {bits_stored} bits stored")
    stored = pixels
    if photometric == "MONOCHROME1":
        stored = (s_hi + s_lo - pixels.astype(np.int64)).astype(pixels.dtype)

    path = Path(path)
    entropy = [patient_id, patient_name, str(laterality), str(view), accession_number, path.name]
    study_uid = study_uid or generate_uid(entropy_srcs=[*entropy[:2], accession_number, "study"])
    series_uid = series_uid or generate_uid(entropy_srcs=[*entropy, "series"])
    sop_uid = sop_uid or generate_uid(entropy_srcs=[*entropy, "instance"])

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(MG_SOP_CLASS)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = UID(_TRANSFER_SYNTAXES["explicit_le"][0])
    ds.SOPClassUID = UID(MG_SOP_CLASS)
    ds.SOPInstanceUID = UID(sop_uid)
    ds.StudyInstanceUID = UID(study_uid)
    ds.SeriesInstanceUID = UID(series_uid)
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = "F"
    ds.AccessionNumber = accession_number
    ds.InstitutionName = institution_name
    ds.ReferringPhysicianName = "Referrer^Synthetic"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "090000"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = modality
    ds.PresentationIntentType = "FOR PRESENTATION"
    if series_description:
        ds.SeriesDescription = series_description
    if laterality:
        ds.ImageLaterality = laterality
        ds.Laterality = laterality
    if view:
        ds.ViewPosition = view
    ds.ImagerPixelSpacing = [0.1, 0.1]
    ds.set_pixel_data(np.ascontiguousarray(stored), photometric, bits_stored, generate_instance_uid=False)
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = (f"{float(v):g}" for v in rescale)
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = (f"{float(v):g}" for v in window)
    if voi_lut is not None:
        first, lut_bits, entries = voi_lut
        item = Dataset()
        entries = np.asarray(entries, dtype=np.uint16)
        # Both attributes have an ambiguous VR (US/SS, US/OW): give it explicitly.
        n_entries = len(entries) if len(entries) < 65536 else 0  # 0 means 65536 entries
        item.add_new("LUTDescriptor", "US", [n_entries, int(first), int(lut_bits)])
        item.add_new("LUTData", "US", entries.tolist())
        ds.VOILUTSequence = Sequence([item])
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)

    uid, how = _TRANSFER_SYNTAXES[transfer_syntax]
    if how == "pydicom":
        ds.compress(UID(uid), np.ascontiguousarray(stored), generate_instance_uid=False)
    elif how == "none":
        ds.file_meta.TransferSyntaxUID = UID(uid)
    data = _dataset_bytes(ds)
    if how == "gdcm":
        data = _gdcm_transcode(data, uid, path)
    _atomic_write(path, data)


def _dataset_bytes(ds: Any) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _gdcm_transcode(data: bytes, uid: str, path: Path) -> bytes:
    """Re-encode an uncompressed DICOM byte string with GDCM (JPEG Lossless SV1, JPEG-LS)."""
    import gdcm

    syntax = {"1.2.840.10008.1.2.4.70": gdcm.TransferSyntax.JPEGLosslessProcess14_1,
              "1.2.840.10008.1.2.4.80": gdcm.TransferSyntax.JPEGLSLossless}[uid]
    with tempfile.TemporaryDirectory(prefix=".gdcm-", dir=path.parent if path.parent.exists() else None) as tmp:
        src, dst = os.path.join(tmp, "in.dcm"), os.path.join(tmp, "out.dcm")
        with open(src, "wb") as fh:
            fh.write(data)
        reader = gdcm.ImageReader()
        reader.SetFileName(src)
        if not reader.Read():
            raise RuntimeError("GDCM could not read the uncompressed file it was given")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(syntax))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise RuntimeError(f"GDCM could not encode transfer syntax {uid}")
        writer = gdcm.ImageWriter()
        writer.SetFileName(dst)
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError(f"GDCM could not write transfer syntax {uid}")
        with open(dst, "rb") as fh:
            return fh.read()


def _atomic_write(path: Path, data: bytes) -> None:
    from mammoflow.io.images import atomic_write_bytes

    atomic_write_bytes(path, data)
