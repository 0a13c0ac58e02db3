"""Greyscale image files: PGM, PNG and DICOM, also as members of a zip archive.

Every reader returns a 2-D ``uint8`` or ``uint16`` array, or raises :class:`~mammoflow.errors.InputError`
with a stable ``code`` so that sources can quarantine the file and go on:

==============  ===========================================================================
``missing_file``  the file (or the zip member) does not exist
``empty``         zero bytes, or an image with no rows or no columns
``truncated``     fewer bytes than the header promises
``corrupt``       the bytes cannot be decoded (bad signature, CRC, compressed stream, header)
``rgb``           a colour image whose channels differ (a grey image stored as RGB is accepted)
``bit_depth``     not 8- or 16-bit greyscale (1/2/4-bit, maxval above 65535, 32-bit DICOM, ...)
``format``        not a PGM, PNG or DICOM file
``too_large``     the header declares more than 2**30 pixels (no mammogram is that large)
``unreadable``    the operating system refuses to open or read it (permissions, symlink loop, I/O error)
``unexpected``    any other error (its traceback is logged once at DEBUG level, redacted)
==============  ===========================================================================

A header's declared size is checked against the bytes present before any pixel buffer is allocated, so a
damaged header that declares a huge image fails at once. DICOM files add the codes of
:func:`mammoflow.io.dicom.read_dicom`.

A path may go *through* a zip archive: ``data/MIAS_ROIs.zip/MIAS_ROIs/test/Normal (1).png`` is the member
``MIAS_ROIs/test/Normal (1).png`` of ``data/MIAS_ROIs.zip``. Records whose ``image_root`` ends in ``.zip``
rely on this (see docs/architecture.md).
"""

from __future__ import annotations

import io
import logging
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mammoflow.errors import InputError

# file_sha256 and unreadable_error: sources/ and evaluation/ still import them from here (their home is io.files)
from mammoflow.io.files import file_sha256, read_bytes, split_zip_path, unreadable_error  # noqa: F401
from mammoflow.io.redact import redactor, unexpected_error
from mammoflow.storage import atomic_write_bytes

log = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DICOM_SUFFIXES = (".dcm", ".dicom")
MAX_PIXELS = 1 << 30  # OpenCV's own limit; a full-field mammogram has about 2**25
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
_DEFLATE_MAX_RATIO = 1032  # deflate never expands fewer bytes into more than this many (RFC 1951 limit)


# --------------------------------------------------------------------------- reading


def read_image(path: str | Path, *, expect_modality: str | None = "MG", log_as: str | None = None) -> np.ndarray:
    """A 2-D greyscale ``uint8``/``uint16`` array from a PGM, PNG or DICOM file (or zip member).

    The format is recognised from the file's signature (the ``.dcm`` suffix is enough for DICOM files
    written without the 128-byte preamble). DICOM pixels come from :func:`mammoflow.io.dicom.read_dicom`:
    tissue bright, on the full 16-bit scale. ``expect_modality`` only applies to DICOM. ``log_as`` names the
    file in log lines (default: its file name; give the record id when paths are pseudonymised).
    Every failure is an :class:`InputError` (codes in the module docstring).
    """
    try:
        return _read_image(path, expect_modality, log_as)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - one file never stops a run: the type is reported, the trace logged
        raise unexpected_error(path, exc, log_as, redactor(path, None, log_as)) from None


def _read_image(path: str | Path, expect_modality: str | None, log_as: str | None) -> np.ndarray:
    name = str(path)
    if _looks_like_dicom_path(name) and split_zip_path(path) is None:
        return _read_dicom_pixels(path, expect_modality, log_as=log_as)
    data = read_bytes(path)
    if not data:
        raise InputError(path, "the file is empty (0 bytes)", "re-export or re-download the image", code="empty")
    if data.startswith(PNG_SIGNATURE):
        return decode_png(data, path)
    if data[:1] == b"P" and data[1:2] in b"1234567":
        return decode_pnm(data, path)
    if data[128:132] == b"DICM" or _looks_like_dicom_path(name):
        return _read_dicom_pixels(io.BytesIO(data), expect_modality, shown_path=path, log_as=log_as)
    raise InputError(path, "not a PGM, PNG or DICOM file (unknown signature)",
                     "convert the image to 8- or 16-bit greyscale PNG or PGM", code="format")


def _looks_like_dicom_path(name: str) -> bool:
    return name.lower().endswith(DICOM_SUFFIXES)


def _read_dicom_pixels(src: str | Path | BinaryIO, expect_modality: str | None,
                       shown_path: str | Path | None = None, log_as: str | None = None) -> np.ndarray:
    from mammoflow.io.dicom import read_dicom

    return read_dicom(src, expect_modality=expect_modality, shown_path=shown_path, log_as=log_as).pixels


def _check_shape(height: int, width: int, path: object) -> None:
    if height <= 0 or width <= 0:
        raise InputError(path, f"the image has no pixels ({width}x{height})", "re-export the image", code="empty")
    if height * width > MAX_PIXELS:
        raise InputError(path, f"the header declares {width}x{height} pixels, more than the {MAX_PIXELS} "
                               "supported", "check the file: its header is probably damaged; re-export the image",
                         code="too_large")


def _bit_depth_error(path: object, what: str) -> InputError:
    return InputError(path, f"unsupported bit depth: {what}",
                      "convert the image to 8- or 16-bit greyscale (e.g. PNG or PGM)", code="bit_depth")


def _collapse_channels(img: np.ndarray, path: object) -> np.ndarray:
    """One grey channel from a colour array whose colour channels are identical (alpha is dropped)."""
    if img.shape[-1] == 2:  # grey + alpha
        return np.ascontiguousarray(img[..., 0])
    colour = img[..., :3]
    first = colour[..., 0]
    if not all(np.array_equal(first, colour[..., c]) for c in range(1, colour.shape[-1])):
        raise InputError(path, "colour image (its red, green and blue channels differ)",
                         "convert it to greyscale before ingesting (mammograms are single-channel)", code="rgb")
    return np.ascontiguousarray(first)


# PGM / PNM -----------------------------------------------------------------------------------------------

_PNM_MAX_DIGITS = 20  # a width, height or maxval; longer numbers are damage (and int() refuses > 4300 digits)


def _pnm_header(data: bytes, path: object, n_fields: int) -> tuple[list[int], int]:
    """Parse the header integers after the magic number; returns them and the data offset.

    Netpbm headers are whitespace-separated ASCII integers with ``#`` comments; exactly one whitespace
    character separates the last header field from binary data.
    """
    values: list[int] = []
    pos = 2
    n = len(data)
    while len(values) < n_fields:
        while pos < n and (data[pos:pos + 1].isspace() or data[pos:pos + 1] == b"#"):
            if data[pos:pos + 1] == b"#":
                end = data.find(b"\n", pos)
                pos = n if end < 0 else end + 1
            else:
                pos += 1
        start = pos
        while pos < n and data[pos:pos + 1].isdigit():
            pos += 1
        if pos - start > _PNM_MAX_DIGITS:
            raise InputError(path, f"invalid PGM header (a number with more than {_PNM_MAX_DIGITS} digits)",
                             "re-export the image as a valid PGM", code="corrupt")
        if start == pos:
            if pos >= n:
                raise InputError(path, "the file ends inside the PGM header", "re-export or re-download the image",
                                 code="truncated")
            raise InputError(path, f"invalid PGM header (unexpected byte {data[pos:pos + 1]!r})",
                             "re-export the image as a valid PGM", code="corrupt")
        values.append(int(data[start:pos]))
    if pos < n and not data[pos:pos + 1].isspace():
        raise InputError(path, "invalid PGM header (no whitespace after the header)",
                         "re-export the image as a valid PGM", code="corrupt")
    return values, pos + 1


def decode_pnm(data: bytes, path: object = "") -> np.ndarray:
    """Decode a PGM (P2 ASCII / P5 binary); PPM (P3/P6) only when its channels are identical.

    ``maxval <= 255`` gives ``uint8``, ``<= 65535`` gives ``uint16`` (big-endian samples, as Netpbm specifies).
    Values are returned as stored (a ``maxval`` below the type's maximum is not stretched).
    """
    magic = data[:2].decode("ascii")
    if magic in ("P1", "P4"):
        raise _bit_depth_error(path, "1-bit bitmap (PBM)")
    if magic == "P7":
        raise InputError(path, "PAM images are not supported", "convert the image to PGM or PNG", code="format")
    channels = 3 if magic in ("P3", "P6") else 1
    (width, height, maxval), offset = _pnm_header(data, path, 3)
    _check_shape(height, width, path)
    if maxval == 0 or maxval > 65535:
        raise _bit_depth_error(path, f"maxval {maxval} (PGM allows 1..65535)")
    dtype = np.dtype(np.uint8) if maxval <= 255 else np.dtype(">u2")
    count = width * height * channels
    if magic in ("P5", "P6"):
        need = count * dtype.itemsize
        have = len(data) - offset
        if have < need:
            raise InputError(path, f"truncated PGM: {have} of {need} pixel bytes present",
                             "re-export or re-download the image", code="truncated")
        arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
        if maxval not in (255, 65535) and count and int(arr.max()) > maxval:  # the ASCII path checks as it parses
            raise InputError(path, f"pixel values above the declared maxval {maxval}: the header or the pixels are "
                             "damaged", "re-export the image (or correct maxval in its header)", code="corrupt")
    else:
        tokens = _ascii_samples(data[offset - 1:], path, maxval)
        if tokens.size < count:
            raise InputError(path, f"truncated PGM: {tokens.size} of {count} pixel values present",
                             "re-export or re-download the image", code="truncated")
        arr = tokens[:count]
    out_dtype = np.uint8 if maxval <= 255 else np.uint16
    img = arr.astype(out_dtype).reshape(height, width, channels) if channels > 1 else \
        arr.astype(out_dtype).reshape(height, width)
    return _collapse_channels(img, path) if channels > 1 else img


def _ascii_samples(body: bytes, path: object, maxval: int) -> np.ndarray:
    text = b" ".join(line.split(b"#", 1)[0] for line in body.splitlines())
    words = text.split()
    if not all(w.isdigit() for w in words):
        raise InputError(path, "non-numeric pixel value in an ASCII PGM", "re-export the image", code="corrupt")
    # Compared as text first: a sample of thousands of digits fits no integer type (nor Python's int()).
    if any(len(w.lstrip(b"0")) > len(str(maxval)) for w in words) or any(int(w) > maxval for w in words):
        raise InputError(path, f"a pixel value exceeds maxval {maxval}", "re-export the image", code="corrupt")
    return np.array([int(w) for w in words], dtype=np.int64)


# PNG -----------------------------------------------------------------------------------------------------


def _png_chunks(data: bytes, path: object) -> tuple[bytes | None, int | None]:
    """Walk the chunk list, checking lengths and CRCs; returns the IHDR data and the image data's size in bytes
    (``None`` when absent).

    This catches truncation and damage precisely (OpenCV only reports "cannot decode").
    """
    pos = len(PNG_SIGNATURE)
    n = len(data)
    ihdr: bytes | None = None
    idat: int | None = None
    while True:
        if pos + 8 > n:
            raise InputError(path, "truncated PNG: the file ends before the IEND chunk",
                             "re-export or re-download the image", code="truncated")
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        if pos + 12 + length > n:
            raise InputError(path, f"truncated PNG: chunk {ctype!r} needs {length} bytes, "
                                   f"{max(0, n - pos - 12)} present", "re-export or re-download the image",
                             code="truncated")
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        if zlib.crc32(ctype + body) != crc:
            raise InputError(path, f"corrupt PNG: CRC mismatch in chunk {ctype!r}",
                             "re-download the image or re-export it", code="corrupt")
        name = ctype.decode("latin-1")
        if name == "IHDR" and ihdr is None:
            ihdr = body
        elif name == "IDAT":
            idat = (idat or 0) + length
        elif name == "IEND":
            return ihdr, idat
        pos += 12 + length


def _check_png_data_size(compressed: int, width: int, height: int, depth: int, colour: int,
                         path: object) -> None:
    """Refuse image data too short for the declared size, before OpenCV allocates the declared image."""
    row_bytes = 1 + (width * _PNG_CHANNELS[colour] * depth + 7) // 8  # a filter byte, then the samples
    if height * row_bytes > compressed * _DEFLATE_MAX_RATIO + 1024:
        raise InputError(path, f"truncated PNG: {compressed} bytes of image data cannot hold the declared "
                               f"{width}x{height} pixels", "re-export or re-download the image", code="truncated")


def decode_png(data: bytes, path: object = "") -> np.ndarray:
    """Decode an 8- or 16-bit greyscale PNG (also grey stored as RGB/palette/with alpha) to a 2-D array."""
    import cv2

    ihdr, idat = _png_chunks(data, path)
    if ihdr is None or len(ihdr) != 13:
        raise InputError(path, "corrupt PNG: no valid IHDR chunk", "re-export the image", code="corrupt")
    width, height, depth, colour = struct.unpack(">IIBB", ihdr[:10])
    _check_shape(height, width, path)
    if idat is None:
        raise InputError(path, "corrupt PNG: no image data (IDAT) chunk", "re-export the image", code="corrupt")
    if colour in (0, 4) and depth not in (8, 16):
        raise _bit_depth_error(path, f"{depth}-bit greyscale PNG")
    if colour not in (0, 2, 3, 4, 6):
        raise InputError(path, f"corrupt PNG: unknown colour type {colour}", "re-export the image", code="corrupt")
    _check_png_data_size(idat, width, height, depth, colour, path)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError(path, "the PNG image data cannot be decoded", "re-export or re-download the image",
                         code="corrupt")
    if img.shape[:2] != (height, width):
        raise InputError(path, f"decoded size {img.shape[:2]} differs from the header's {(height, width)}",
                         "re-export the image", code="corrupt")
    if img.ndim == 3:
        img = _collapse_channels(img, path)
    return np.ascontiguousarray(img)


# --------------------------------------------------------------------------- writing


def _check_writable(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 2 or img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected a 2-D uint8 or uint16 array, got {img.dtype} with shape {img.shape}")
    if img.size == 0:
        raise ValueError("cannot write an empty image")
    return img


def encode_png(img: np.ndarray) -> bytes:
    """PNG bytes of a 2-D ``uint8`` (8-bit) or ``uint16`` (16-bit) greyscale image."""
    import cv2

    img = _check_writable(img)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img))
    if not ok:  # pragma: no cover - OpenCV only fails on types rejected above
        raise ValueError("OpenCV could not encode the image as PNG")
    return buf.tobytes()


def encode_pgm(img: np.ndarray) -> bytes:
    """Binary PGM (P5) bytes: maxval 255 for ``uint8``, 65535 (big-endian samples) for ``uint16``."""
    img = _check_writable(img)
    maxval = 255 if img.dtype == np.uint8 else 65535
    header = f"P5\n{img.shape[1]} {img.shape[0]}\n{maxval}\n".encode("ascii")
    body = img.astype(">u2").tobytes() if img.dtype == np.uint16 else img.tobytes()
    return header + body


def write_png(path: str | Path, img: np.ndarray) -> None:
    """Write an 8- or 16-bit greyscale PNG atomically (temporary file, then rename)."""
    atomic_write_bytes(path, encode_png(img))


def write_pgm(path: str | Path, img: np.ndarray) -> None:
    """Write an 8- or 16-bit binary PGM atomically (temporary file, then rename)."""
    atomic_write_bytes(path, encode_pgm(img))
