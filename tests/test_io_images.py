"""PGM / PNG / zip-member reading and writing, and every bad-input code of the image readers."""

from __future__ import annotations

import hashlib
import logging
import struct
import zipfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from mammoflow.errors import InputError
from mammoflow.io.images import (
    PNG_SIGNATURE,
    encode_pgm,
    encode_png,
    file_sha256,
    read_bytes,
    read_image,
    split_zip_path,
    write_pgm,
    write_png,
)


def _png(raw_rows: list[bytes], width: int, height: int, depth: int, colour: int,
         idat: bytes | None = None) -> bytes:
    """A minimal PNG (filter type 0 on every row), for colour types and depths OpenCV does not write."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    data = idat if idat is not None else zlib.compress(b"".join(b"\x00" + r for r in raw_rows))
    return PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)) + \
        chunk(b"IDAT", data) + chunk(b"IEND", b"")


def _code(path: Path | str) -> str:
    with pytest.raises(InputError) as info:
        read_image(path)
    assert str(path) in str(info.value) or Path(info.value.path).name in str(path)
    assert info.value.fix  # every error says what to do
    return info.value.code


@pytest.fixture
def grey8() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (37, 53), dtype=np.uint8)


@pytest.fixture
def grey16() -> np.ndarray:
    return np.random.default_rng(2).integers(0, 65536, (29, 41), dtype=np.uint16)


# --------------------------------------------------------------------------- good files


@pytest.mark.parametrize("writer", [write_pgm, write_png])
def test_round_trip_8_and_16_bit(tmp_path: Path, writer, grey8: np.ndarray, grey16: np.ndarray) -> None:
    suffix = ".pgm" if writer is write_pgm else ".png"
    for img in (grey8, grey16):
        path = tmp_path / f"img{img.dtype.itemsize}{suffix}"
        writer(path, img)
        back = read_image(path)
        assert back.dtype == img.dtype and back.ndim == 2
        np.testing.assert_array_equal(back, img)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_pgm_16_bit_is_big_endian(tmp_path: Path) -> None:
    path = tmp_path / "be.pgm"
    path.write_bytes(b"P5\n2 1\n65535\n\x01\x02\xff\x00")
    np.testing.assert_array_equal(read_image(path), np.array([[258, 65280]], np.uint16))
    assert encode_pgm(np.array([[258, 65280]], np.uint16)).endswith(b"\x01\x02\xff\x00")


def test_ascii_pgm_with_comments(tmp_path: Path) -> None:
    path = tmp_path / "ascii.pgm"
    path.write_text("P2\n# a comment\n3 2 # width height\n300\n0 1 2\n# between rows\n298 299 300\n")
    img = read_image(path)
    assert img.dtype == np.uint16
    np.testing.assert_array_equal(img, [[0, 1, 2], [298, 299, 300]])


def test_grey_stored_as_rgb_or_with_alpha_is_accepted(tmp_path: Path, grey8: np.ndarray) -> None:
    rgb = tmp_path / "grey_rgb.png"
    cv2.imwrite(str(rgb), np.dstack([grey8] * 3))
    np.testing.assert_array_equal(read_image(rgb), grey8)
    ga = tmp_path / "grey_alpha.png"
    rows = [bytes(np.dstack([r, np.full_like(r, 255)]).ravel()) for r in grey8]
    ga.write_bytes(_png(rows, grey8.shape[1], grey8.shape[0], 8, 4))
    np.testing.assert_array_equal(read_image(ga), grey8)


def test_format_is_recognised_by_signature(tmp_path: Path, grey8: np.ndarray) -> None:
    path = tmp_path / "really_a_png.pgm"
    path.write_bytes(encode_png(grey8))
    np.testing.assert_array_equal(read_image(path), grey8)


def test_zip_member_path(tmp_path: Path, grey8: np.ndarray) -> None:
    archive = tmp_path / "MIAS_ROIs.zip"
    member = "MIAS_ROIs/test/Normal (1).png"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(member, encode_png(grey8))
        zf.writestr("MIAS_ROIs/test/scan.pgm", encode_pgm(grey8))
    path = archive / "MIAS_ROIs" / "test" / "Normal (1).png"
    assert split_zip_path(path) == (archive, member)
    np.testing.assert_array_equal(read_image(path), grey8)
    np.testing.assert_array_equal(read_image(f"{archive}/MIAS_ROIs/test/scan.pgm"), grey8)
    assert file_sha256(path) == hashlib.sha256(encode_png(grey8)).hexdigest()
    assert read_bytes(path) == encode_png(grey8)
    assert _code(archive / "MIAS_ROIs" / "test" / "Tumor (9).png") == "missing_file"


def test_damaged_zip_member(tmp_path: Path, grey16: np.ndarray) -> None:
    archive = tmp_path / "rois.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.png", encode_png(grey16))
    data = bytearray(archive.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the compressed member
    archive.write_bytes(bytes(data))
    assert _code(archive / "a.png") == "corrupt"
    with pytest.raises(InputError):
        file_sha256(archive / "a.png")


@pytest.mark.realdata
def test_real_mias_roi_zip_member(mias_rois_zip: Path) -> None:
    img = read_image(mias_rois_zip / "MIAS_ROIs" / "test" / "Normal (1).png")
    assert img.shape == (120, 120) and img.dtype == np.uint8
    assert 0 < int(img.max()) <= 255


def test_file_sha256_streams_a_plain_file(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    data = np.random.default_rng(0).integers(0, 256, 3 * (1 << 20) + 17, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- bad input


def test_missing_and_empty(tmp_path: Path) -> None:
    assert _code(tmp_path / "nope.png") == "missing_file"
    assert _code(tmp_path / "no_folder" / "nope.pgm") == "missing_file"
    (tmp_path / "zero.png").write_bytes(b"")
    assert _code(tmp_path / "zero.png") == "empty"
    (tmp_path / "nopixels.pgm").write_bytes(b"P5\n0 10\n255\n")
    assert _code(tmp_path / "nopixels.pgm") == "empty"


def test_files_the_system_cannot_open_are_unreadable(tmp_path: Path, grey8: np.ndarray) -> None:
    """OS errors other than "not found" (a symlink loop, a name over the system's limit, no permission) are
    an InputError the sources quarantine, not a traceback that ends the job."""
    import os

    os.symlink(tmp_path / "b.png", tmp_path / "a.png")
    os.symlink(tmp_path / "a.png", tmp_path / "b.png")
    assert _code(tmp_path / "a.png") == "unreadable"
    assert _code(tmp_path / ("x" * 300 + ".png")) == "unreadable"
    for read in (read_bytes, file_sha256):
        with pytest.raises(InputError) as err:
            read(tmp_path / "a.png")
        assert err.value.code == "unreadable" and "permissions" in err.value.fix
    if os.geteuid() != 0:  # root reads anything: the permission case needs an ordinary user
        write_png(tmp_path / "locked.png", grey8)
        (tmp_path / "locked.png").chmod(0)
        assert _code(tmp_path / "locked.png") == "unreadable"


def test_truncated_pgm(tmp_path: Path, grey8: np.ndarray, grey16: np.ndarray) -> None:
    for img in (grey8, grey16):
        data = encode_pgm(img)
        (tmp_path / "cut.pgm").write_bytes(data[:-7])
        assert _code(tmp_path / "cut.pgm") == "truncated"
    (tmp_path / "header.pgm").write_bytes(b"P5\n53 37\n")
    assert _code(tmp_path / "header.pgm") == "truncated"
    (tmp_path / "ascii.pgm").write_text("P2\n3 2\n255\n1 2 3 4\n")
    assert _code(tmp_path / "ascii.pgm") == "truncated"


def test_truncated_png(tmp_path: Path, grey8: np.ndarray, grey16: np.ndarray) -> None:
    for img in (grey8, grey16):
        data = encode_png(img)
        for cut in (len(data) // 2, len(data) - 5, 20):
            (tmp_path / "cut.png").write_bytes(data[:cut])
            assert _code(tmp_path / "cut.png") == "truncated"


def test_corrupt_files(tmp_path: Path, grey8: np.ndarray) -> None:
    data = bytearray(encode_png(grey8))
    data[40] ^= 0xFF  # inside the first chunk after IHDR: its CRC no longer matches
    (tmp_path / "crc.png").write_bytes(bytes(data))
    assert _code(tmp_path / "crc.png") == "corrupt"
    bad_stream = _png([], 4, 4, 8, 0, idat=b"definitely not zlib")
    (tmp_path / "stream.png").write_bytes(bad_stream)
    assert _code(tmp_path / "stream.png") == "corrupt"
    (tmp_path / "header.pgm").write_bytes(b"P5\nab 12\n255\n" + bytes(100))
    assert _code(tmp_path / "header.pgm") == "corrupt"
    (tmp_path / "ascii.pgm").write_text("P2\n2 1\n255\n1 x\n")
    assert _code(tmp_path / "ascii.pgm") == "corrupt"
    (tmp_path / "notes.png").write_bytes(b"this is not an image at all")
    assert _code(tmp_path / "notes.png") == "format"


def test_colour_images_are_rejected(tmp_path: Path, grey8: np.ndarray) -> None:
    colour = np.dstack([grey8, grey8 // 2, 255 - grey8])
    cv2.imwrite(str(tmp_path / "rgb.png"), colour)
    assert _code(tmp_path / "rgb.png") == "rgb"
    ppm = b"P6\n2 1\n255\n" + bytes([10, 20, 30, 40, 50, 60])
    (tmp_path / "colour.ppm").write_bytes(ppm)
    assert _code(tmp_path / "colour.ppm") == "rgb"
    with pytest.raises(InputError, match="greyscale"):
        read_image(tmp_path / "rgb.png")


def test_unsupported_bit_depths(tmp_path: Path) -> None:
    (tmp_path / "deep.pgm").write_bytes(b"P5\n2 1\n4294967295\n" + bytes(16))  # 32-bit samples
    assert _code(tmp_path / "deep.pgm") == "bit_depth"
    (tmp_path / "bitmap.pbm").write_bytes(b"P4\n8 1\n\xaa")
    assert _code(tmp_path / "bitmap.pbm") == "bit_depth"
    one_bit = _png([b"\xaa", b"\x55"], 8, 2, 1, 0)
    (tmp_path / "one_bit.png").write_bytes(one_bit)
    assert _code(tmp_path / "one_bit.png") == "bit_depth"


def test_absurd_declared_sizes_fail_before_any_pixel_buffer_is_allocated(tmp_path: Path) -> None:
    """A damaged header that declares a huge image: a clear error at once (OpenCV's own size assertion, or a
    multi-gigabyte buffer for a 20-byte stream, never happens)."""
    huge = _png([], 100_000, 100_000, 16, 0, idat=zlib.compress(bytes(1000)))
    (tmp_path / "huge.png").write_bytes(huge)
    assert _code(tmp_path / "huge.png") == "too_large"
    big = _png([], 30_000, 30_000, 16, 0, idat=zlib.compress(bytes(1000)))  # 1.8 GB declared, 20 bytes given
    (tmp_path / "big.png").write_bytes(big)
    assert _code(tmp_path / "big.png") == "truncated"
    (tmp_path / "big.pgm").write_bytes(b"P5\n100000 100000\n65535\n" + bytes(64))
    assert _code(tmp_path / "big.pgm") in ("too_large", "truncated")
    (tmp_path / "digits.pgm").write_bytes(b"P5\n" + b"9" * 5000 + b" 1\n255\n" + bytes(8))  # int() refuses these
    assert _code(tmp_path / "digits.pgm") == "corrupt"
    (tmp_path / "sample.pgm").write_text("P2\n3 1\n255\n1 2 " + "9" * 30 + "\n")  # fits no integer type
    assert _code(tmp_path / "sample.pgm") == "corrupt"
    (tmp_path / "zero.pgm").write_bytes(b"P5\n2 1\n0\n" + bytes(4))  # maxval 0: no grey level at all
    assert _code(tmp_path / "zero.pgm") == "bit_depth"


def test_any_other_error_is_unexpected(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(InputError) as err:
        read_image(tmp_path / "DOE^JANE" / "a\x00b.png")  # open() refuses a NUL byte with ValueError
    assert err.value.code == "unexpected" and err.value.problem == "unexpected error: ValueError"
    assert [r.levelno for r in caplog.records if "Traceback" in r.getMessage()] == [logging.DEBUG]
    assert "DOE^JANE" not in caplog.text


def test_writers_refuse_what_they_cannot_write(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_png(tmp_path / "f.png", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError):
        write_pgm(tmp_path / "c.pgm", np.zeros((4, 4, 3), np.uint8))
    assert not list(tmp_path.iterdir())


def test_binary_pgm_samples_above_maxval_are_corrupt():
    """A P5 body with values above its header's maxval: the header or the pixels are damaged (the ASCII form was
    already refused; the binary one was read as if nothing were wrong)."""
    from mammoflow.io.images import decode_pnm

    body = bytes([10, 20, 200, 30])
    with pytest.raises(InputError, match="above the declared maxval 100") as err:
        decode_pnm(b"P5\n2 2\n100\n" + body, "x.pgm")
    assert err.value.code == "corrupt"
    assert decode_pnm(b"P5\n2 2\n200\n" + body, "x.pgm").max() == 200  # at maxval: fine
