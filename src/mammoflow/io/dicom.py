"""DICOM mammograms with pydicom: decode, validate, de-identify.

tensorflow-io is not used (abandoned; its DICOM op breaks with TF 2.21, see README). pydicom decodes the
common transfer syntaxes through its pixel-data plugins: uncompressed (implicit/explicit little endian)
and RLE Lossless natively, JPEG Lossless (Process 14 / SV1), JPEG-LS and JPEG 2000 through pylibjpeg or GDCM.
A Transfer Syntax UID that pydicom does not know is ``unsupported_transfer_syntax``; a known one that no
installed plugin decodes is ``codec``.

**Decoding plugins.** Each compressed file is decoded with an explicit plugin order (:func:`decoding_plugins`):
pydicom's own, pylibjpeg, Pillow, pyjpegls; GDCM only for a transfer syntax none of those decodes, because
python-gdcm lets a C++ exception escape on some damaged JPEG 2000 streams and that aborts the whole process
(``terminate called after throwing ...``), where the other plugins raise a Python error that is quarantined.
A warning from the decoder (e.g. an RLE segment with non-conformant padding) means the pixels cannot be
trusted: the file is rejected (code ``corrupt``) instead of being used. Warnings while reading the header are
logged once, naming the file (its label: ``log_as``, else its file name).

**Pixel mapping.** :func:`read_dicom` returns what a viewer would display, tissue bright, on 0..65535: the
pipeline of :mod:`mammoflow.io.dicom_pixels`. A degenerate transform (Rescale Slope 0, an empty, non-numeric,
NaN or infinite Rescale or Window value, an overflow, a flat result) is ``bad_pixel_transform``.

**Native pixel data is read once, into the array returned.** pydicom is told to defer Pixel Data above
:data:`DEFER_BYTES` (it skips the value); for an explicit or implicit VR little endian file whose Pixel Data holds
exactly the image, :func:`read_dicom` reads the value from the same open file straight into a new array and maps it
to display values in place: no ``bytes`` copy of the file's pixels, no second array. Any other file (another syntax,
a length that is not the image's, a deflated data set, an Image Pixel attribute missing or out of the ordinary,
another value above the threshold) is read again whole and decoded by pydicom, as it always is below that size, so
that a file's outcome never depends on its size.

**One file never stops a run.** Every failure to read one file is an :class:`~mammoflow.errors.InputError`
with a stable ``code``; an error nobody foresaw is ``unexpected`` (its traceback logged once at DEBUG level).

**De-identification.** :class:`DicomHeader`/:class:`DicomImage` hold no identifier (:mod:`.dicom_header`): the
patient is a salted SHA-256 pseudonym, and no name, id, date, accession number, institution or UID leaves this
module. An error names the attribute that failed a check and what was expected, never its value; pydicom's own
messages pass through :class:`mammoflow.io.redact.Redactor` (no quoted value, no real path or folder name).
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from mammoflow.errors import InputError
from mammoflow.io.dicom_header import (
    MG_SOP_CLASS,
    DicomHeader,
    header_fields,
    pseudonym,
    supported_transfer_syntaxes,
    transform_error,
)
from mammoflow.io.dicom_pixels import PixelTransformError, display_pixels
from mammoflow.io.files import FileStamp, read_bytes, split_zip_path, unreadable_error
from mammoflow.io.redact import Redactor, pydicom_warnings, redactor, unexpected_error

log = logging.getLogger(__name__)

__all__ = ["DicomHeader", "DicomImage", "MG_SOP_CLASS", "decoding_plugins", "pseudonym", "pydicom_warnings",
           "read_dicom", "read_dicom_header", "supported_transfer_syntaxes"]

_CODEC_FIX = "install pylibjpeg with its plugins (pylibjpeg-libjpeg, -openjpeg, -rle) or python-gdcm"
# pydicom decoding plugins in the order they are tried. GDCM is not among them on purpose: python-gdcm lets C++
# exceptions escape on some damaged JPEG 2000 streams (std::terminate aborts the process; nothing in Python can
# catch it), while pylibjpeg and Pillow reject the same bytes with an exception. It is used only as the last
# resort for a transfer syntax that no other installed plugin decodes (see decoding_plugins). Compiled decoders
# come first: pylibjpeg (with pylibjpeg-rle, RLE Lossless in C) before pydicom's own pure-Python RLE decoder, which
# is some 30x slower and serves only when the plugin is missing.
_PLUGIN_ORDER = ("pylibjpeg", "pydicom", "pillow", "pyjpegls")
_LAST_RESORT_PLUGINS = ("gdcm",)
# Pixel Data larger than this is read into the image's array by read_dicom itself (see the module docstring). A
# data set in which anything else is that large is read again whole, so pydicom never reads a value lazily later.
DEFER_BYTES = 1 << 22


# --------------------------------------------------------------------------- results


@dataclass(repr=False)
class DicomImage(DicomHeader):
    """A decoded image: ``pixels`` is 2-D ``uint16``, tissue bright, on the 0..65535 scale (see module doc).

    ``stamp``: the file's :class:`~mammoflow.io.files.FileStamp` taken before it was read (None for a stream or a zip
    member), so that whoever keeps these pixels (:mod:`mammoflow.io.handoff`) can tell later that the file is
    unchanged without hashing it again."""

    pixels: np.ndarray
    stamp: FileStamp | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        # Never dump pixel values (huge) - shape and dtype say enough.
        px = f"pixels=<{self.pixels.dtype} {self.pixels.shape[0]}x{self.pixels.shape[1]}>"
        return f"DicomImage({self._summary()}, {px})"


# --------------------------------------------------------------------------- reading


def read_dicom_header(src: str | Path | BinaryIO, salt: str = "", expect_modality: str | None = "MG",
                      shown_path: object | None = None, log_as: str | None = None) -> DicomHeader:
    """Validated safe header fields without decoding pixels (stops before Pixel Data: fast for indexing)."""
    where, redact = _shown(src, shown_path), redactor(src, shown_path, log_as)
    with _unexpected_is_input_error(where, log_as, redact):
        ds, _ = _open_dataset(src, where, stop_before_pixels=True, log_as=log_as, redact=redact)
        return _safe_header(ds, where, salt, expect_modality, log_as, redact)


def read_dicom(src: str | Path | BinaryIO, salt: str = "", expect_modality: str | None = "MG",
               shown_path: object | None = None, log_as: str | None = None) -> DicomImage:
    """Decode one DICOM mammogram into display pixels (tissue bright, ``uint16``) and safe header fields.

    ``src`` is a path (also through a zip archive) or a binary stream; ``shown_path`` names it in errors,
    ``log_as`` in log lines (default: the file's name; a source passes its record id, which may be a pseudonym).
    Raises :class:`InputError` (codes ``missing_file``, ``unreadable``, ``empty``, ``truncated``, ``corrupt``
    (also when the decoder warns), ``codec``, ``unsupported_transfer_syntax``, ``modality``, ``rgb``,
    ``bit_depth``, ``multiframe``, ``bad_pixel_transform``, ``unexpected``).
    """
    where, redact = _shown(src, shown_path), redactor(src, shown_path, log_as)
    stamp = FileStamp.of(src) if isinstance(src, (str, Path)) else None  # before the read: a change after it shows
    with _unexpected_is_input_error(where, log_as, redact):
        ds, owned = _open_dataset(src, where, stop_before_pixels=False, log_as=log_as, redact=redact)
        header = _safe_header(ds, where, salt, expect_modality, log_as, redact)
        if "PixelData" not in ds:
            raise InputError(where, "no pixel data in the file", "re-export the image with its pixel data",
                             code="corrupt")
        raw = owned if owned is not None else _decode(ds, where, header, redact)
        pixels = _display(raw, ds, where, log_as, redact, overwrite=owned is not None)
        return DicomImage(**{f.name: getattr(header, f.name) for f in fields(DicomHeader)}, pixels=pixels,
                          stamp=stamp)


@contextmanager
def _unexpected_is_input_error(where: str, log_as: str | None, redact: Redactor) -> Iterator[None]:
    """Any error but an InputError while reading one file -> the ``unexpected`` InputError (traceback at DEBUG)."""
    try:
        yield
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - one file never stops a run; the type is reported, the trace logged
        raise unexpected_error(where, exc, log_as, redact) from None


def _shown(src: str | Path | BinaryIO, shown_path: object | None) -> str:
    if shown_path is not None:
        return str(shown_path)
    return str(src) if isinstance(src, (str, Path)) else getattr(src, "name", "<bytes>")


@contextmanager
def _binary_stream(src: str | Path | BinaryIO, where: str) -> Iterator[BinaryIO]:
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


def _open_dataset(src: str | Path | BinaryIO, where: str, stop_before_pixels: bool, log_as: str | None,
                  redact: Redactor) -> tuple[Any, np.ndarray | None]:
    """pydicom Dataset of a path, a path through a zip, or a binary stream, and the stored pixels when they were
    read here (see the module docstring; ``None``: pydicom holds them, or ``stop_before_pixels``); file errors ->
    InputError."""
    with _binary_stream(src, where) as fh:
        start = fh.tell()
        size = fh.seek(0, os.SEEK_END) - start
        fh.seek(start)
        if size == 0:
            raise InputError(where, "the file is empty (0 bytes)", "re-download or re-export the image",
                             code="empty")
        try:
            with pydicom_warnings(redact) as caught:
                ds = _dcmread(fh, start, where, stop_before_pixels, defer=not stop_before_pixels)
            layout = None
            if not stop_before_pixels and _pixels_deferred(ds):
                with pydicom_warnings(redact) as doubts:
                    layout = _native_layout(ds)
                if layout is None or doubts:  # not an image read here: pydicom reads it all, as a small one
                    fh.seek(start)
                    with pydicom_warnings(redact) as caught:  # the same header's warnings, once
                        ds = _dcmread(fh, start, where, stop_before_pixels, defer=False)
                    layout = None
            _log_header_warnings(where, log_as, caught)
            if stop_before_pixels:
                return ds, None
            _check_complete(ds, start, fh.tell() - start, size, where)
            return ds, None if layout is None else _read_native(fh, layout, where)
        except InputError:
            raise
        except OSError as exc:  # a read error of the storage, not of the DICOM content
            raise unreadable_error(where, exc) from None
        except Exception as exc:  # pydicom raises many types on damaged files (EOFError, ValueError, ...)
            text = str(exc).lower()
            truncated = isinstance(exc, EOFError) or "end of file" in text or "prematurely" in text
            raise InputError(where, f"unreadable DICOM file ({type(exc).__name__}: {redact(str(exc))})",
                             "re-download or re-export the image",
                             code="truncated" if truncated else "corrupt") from None


def _dcmread(fh: BinaryIO, start: int, where: str, stop_before_pixels: bool, defer: bool) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    defer_size = DEFER_BYTES if defer else None
    try:
        ds = pydicom.dcmread(fh, stop_before_pixels=stop_before_pixels, defer_size=defer_size)
    except InvalidDicomError:
        # Files written without the 128-byte preamble and "DICM" are still met; accept them only if what
        # is read looks like an image header.
        fh.seek(start)
        ds = pydicom.dcmread(fh, stop_before_pixels=stop_before_pixels, force=True, defer_size=defer_size)
        if "Rows" not in ds or "Columns" not in ds:
            raise InputError(where, "not a DICOM file (no DICM marker and no image header)",
                             "check that this is a DICOM image; re-export it", code="corrupt") from None
    _set_transfer_syntax_from_encoding(ds)
    return ds


def _raw_elements(ds: Any) -> Iterator[Any]:
    """The data set's top-level elements as read (a deferred one keeps ``value`` None), without converting any."""
    for tag in ds.keys():
        yield ds.get_item(tag, keep_deferred=True)


def _pixels_deferred(ds: Any) -> bool:
    """Whether pydicom skipped the Pixel Data value (it is larger than :data:`DEFER_BYTES`)."""
    if "PixelData" not in ds:
        return False
    return getattr(ds.get_item("PixelData", keep_deferred=True), "value", b"") is None


class _Layout(NamedTuple):
    """Where and how a deferred native Pixel Data value lies in the file."""

    rows: int
    cols: int
    dtype: np.dtype
    offset: int  # of the value in the stream


def _native_layout(ds: Any) -> _Layout | None:
    """The layout of a deferred Pixel Data value that holds one little-endian greyscale frame of
    exactly the image's size (odd length padded by one byte), in a data set where nothing else was deferred and the
    Image Pixel attributes are all present and plain; ``None`` for any other (pydicom reads and decodes those, so
    that every check and message stays its own)."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if ds.file_meta.TransferSyntaxUID not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        return None  # compressed, big endian, or deflated (whose offsets are those of the inflated stream)
    pixel_data = ds.get_item("PixelData", keep_deferred=True)
    if any(el is not pixel_data and getattr(el, "value", b"") is None for el in _raw_elements(ds)):
        return None  # another deferred value would be read later, from a file that may have changed since
    required = ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel",
                "PhotometricInterpretation")
    if any(ds.get(keyword) is None for keyword in required):
        return None
    try:
        rows, cols, bits, stored = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated), int(ds.BitsStored)
        representation, samples = int(ds.PixelRepresentation), int(ds.SamplesPerPixel)
        frames = int(ds.NumberOfFrames) if "NumberOfFrames" in ds else 1
    except Exception:  # noqa: BLE001 - a malformed value: pydicom's full read reports it
        return None
    if bits not in (8, 16) or not 1 <= stored <= bits or representation not in (0, 1) or samples != 1 \
            or frames != 1 or rows <= 0 or cols <= 0:
        return None
    expected = rows * cols * bits // 8
    if pixel_data.length != expected + expected % 2:
        return None
    return _Layout(rows, cols, np.dtype(f"<{'i' if representation else 'u'}{bits // 8}"), pixel_data.value_tell)


def _read_native(fh: BinaryIO, layout: _Layout, where: str) -> np.ndarray:
    """The deferred Pixel Data of an image :func:`_native_layout` accepted, read into a new array (stored values,
    bits above Bits Stored as stored); the stream is left where pydicom left it."""
    out = np.empty((layout.rows, layout.cols), dtype=layout.dtype)
    view = memoryview(out).cast("B")
    resume = fh.tell()
    fh.seek(layout.offset)
    have, readinto = 0, getattr(fh, "readinto", None)
    while have < len(view):
        if readinto is not None:
            got = readinto(view[have:]) or 0
        else:  # a stream with read() only
            chunk = fh.read(len(view) - have)
            got = len(chunk)
            view[have:have + got] = chunk
        if not got:
            raise InputError(where, f"truncated pixel data: {have} of {len(view)} bytes present",
                             "re-download or re-export the image", code="truncated")
        have += got
    fh.seek(resume)
    return out


def _check_complete(ds: Any, start: int, consumed: int, size: int, where: str) -> None:
    """Detect a cut file: pydicom stops quietly at the end of a file, keeping a partial or empty data set, a value
    shorter than its length, or (for a deferred value) having skipped past the end."""
    problem = None
    if len(ds) == 0:
        problem = "the file ends inside its data set (nothing after the file meta could be read)"
    elif consumed < size:
        problem = f"the file ends inside a data element ({size - consumed} stray bytes at the end)"
    else:
        for el in _raw_elements(ds):
            length, value = getattr(el, "length", None), getattr(el, "value", b"")
            if length is None or length == 0xFFFFFFFF:
                continue
            if isinstance(value, bytes):
                present = len(value)
            elif value is None:  # deferred: skipped, not read
                present = start + size - el.value_tell
            else:
                continue
            if present < length:
                problem = f"the file ends inside element {el.tag}: {max(present, 0)} of {length} bytes present"
                break
        else:
            if consumed > size:
                problem = f"the file ends inside a data element ({consumed - size} bytes missing)"
    if problem:
        raise InputError(where, f"truncated DICOM file: {problem}", "re-download or re-export the image",
                         code="truncated")


def _set_transfer_syntax_from_encoding(ds: Any) -> None:
    """A data set without a Transfer Syntax UID (no file meta) is uncompressed: record the encoding pydicom
    detected while reading."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" in ds.file_meta:
        return
    implicit, little = ds.original_encoding
    ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                      ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _safe_header(ds: Any, where: str, salt: str, expect_modality: str | None, log_as: str | None,
                 redact: Redactor) -> DicomHeader:
    try:
        # Values are validated when first read: pydicom's warnings about them are logged once, naming the file.
        with pydicom_warnings(redact) as caught:
            header = header_fields(ds, where, salt, expect_modality)
        _log_header_warnings(where, log_as, caught)
        return header
    except InputError:
        raise
    except PixelTransformError as exc:
        raise transform_error(where, exc) from None
    except Exception as exc:  # elements are converted lazily: a malformed value fails only when read
        raise InputError(where, f"malformed header value ({type(exc).__name__})", "re-export the image",
                         code="corrupt") from None


def _log_header_warnings(where: str, log_as: str | None, messages: list[str]) -> None:
    # Without log_as, the file's name, not its path: folder names of a site's export may hold patient names.
    # The messages are already redacted (pydicom_warnings).
    for message in messages:
        log.warning("%s: DICOM header: %s", log_as or Path(where).name, message)


# --------------------------------------------------------------------------- pixels


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


def _decode(ds: Any, where: str, header: DicomHeader, redact: Redactor) -> np.ndarray:
    """The pixel data as stored (bits above BitsStored not cleared; read-only for a native syntax): for
    :func:`display_pixels` with ``unused_bits=True``."""
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
    # The bits above BitsStored are left as stored (display_pixels ignores them in its one lookup), which spares
    # pydicom's copy and two shift passes; a little-endian native image is then a read-only view of the file's bytes.
    options = {"correct_unused_bits": False, "view_only": not uid.is_compressed and uid.is_little_endian}
    for plugin in plugins or ("",):  # "": a native syntax, decoded by pydicom itself
        # Only the warnings of the plugin that succeeds count; a plugin that fails is reported by its exception.
        with pydicom_warnings(redact) as caught:
            try:
                arr = pixel_array(ds, decoding_plugin=plugin, **options)
            except Exception as exc:  # the plugins raise many types (RuntimeError, ValueError, ...)
                failures.append((plugin, exc))
        if arr is not None:
            break
    if arr is None:
        raise _decode_error(where, header, failures, redact)
    if caught:
        # A decoder that warns has met data that breaks the standard (e.g. RLE segments longer than the image):
        # the pixels it returns cannot be trusted.
        raise InputError(where, f"the pixel data is damaged (decoder warning: {'; '.join(caught)})",
                         "re-download or re-export the image", code="corrupt")
    if arr.ndim != 2:
        raise InputError(where, f"decoded pixel array has shape {arr.shape}, expected 2-D",
                         "give single-frame greyscale images", code="corrupt")
    return arr


def _decode_error(where: str, header: DicomHeader, failures: list[tuple[str, Exception]],
                  redact: Redactor) -> InputError:
    """One InputError for the plugins that all failed: ``codec`` when none could run, else corrupt/truncated."""
    texts = [str(exc).lower() for _, exc in failures]
    said = "; ".join(f"{plugin or 'pydicom'}: {redact(_plugin_message(plugin, exc))}" for plugin, exc in failures)
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


def _display(raw: np.ndarray, ds: Any, where: str, log_as: str | None, redact: Redactor,
             overwrite: bool = False) -> np.ndarray:
    """:func:`display_pixels`, its failures as InputErrors: ``bad_pixel_transform`` (a degenerate transform,
    named by its attribute) or ``corrupt`` (a LUT that cannot be applied)."""
    try:
        with pydicom_warnings(redact) as caught:
            pixels = display_pixels(raw, ds, unused_bits=True, overwrite=overwrite)
        _log_header_warnings(where, log_as, caught)
        return pixels
    except PixelTransformError as exc:
        raise transform_error(where, exc) from None
    except (ValueError, NotImplementedError, IndexError, KeyError, AttributeError, TypeError) as exc:
        raise InputError(where, f"the Modality/VOI LUT cannot be applied ({type(exc).__name__}: "
                                f"{redact(str(exc))})", "fix or remove the LUT attributes of the file",
                         code="corrupt") from None
