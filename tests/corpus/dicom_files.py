"""DICOM mutations: the project's own phantom written by ``write_dicom`` with planted identifiers, then damaged.

Damage is done the way it happens in the field: bytes cut or overwritten in place (a value patched to the same
length, so nothing else in the file moves), or one attribute rewritten with pydicom.
"""

from __future__ import annotations

import logging
import struct
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from tests.corpus.model import PLANT, Build

SHAPE = (96, 80)  # small phantoms: fast to write, decode and shard
BITS = 12
#: Placeholder values written by write_dicom (``f"{v:g}"``) and patched in place to the bad value.
WINDOW_CENTER, WINDOW_WIDTH = "2047.5", "4093.5"
SLOPE = "3.1416"  # six characters: room for NaN, 0 and 1e+308


@contextmanager
def quiet() -> Iterator[None]:
    """Invalid values are written on purpose (a name in a CS attribute): pydicom's warnings and log are muted."""
    logger = logging.getLogger("pydicom")
    disabled, logger.disabled = logger.disabled, True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.disabled = disabled


def phantom(seed: int, *, laterality: str = "L", view: str = "CC", shape: tuple[int, int] = SHAPE,
            bits: int = BITS) -> np.ndarray:
    """A phantom mammogram (``make_phantom``), made unique by its seed."""
    from mammoflow.synth.phantoms import make_phantom

    return make_phantom([77, seed], shape=shape, laterality=laterality, view=view, bits=bits,
                        label_text="").image


def identifiers(b: Build, patient_id: str | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """``write_dicom`` identifier arguments and odd attributes carrying the current kind's planted strings."""
    tag = b.tag
    ids = {"patient_name": f"{PLANT}NAME^{tag}", "patient_id": patient_id or f"{PLANT}ID{tag}",
           "accession_number": f"{PLANT}ACC{tag}", "institution_name": f"{PLANT}INST {tag}"}
    odd = {"StudyDescription": f"{PLANT}STUDY {tag}", "ReferringPhysicianName": f"{PLANT}DOC^{tag}",
           "OperatorsName": f"{PLANT}OP^{tag}", "ImageComments": f"{PLANT}COMMENT {tag}"}
    b.plant(*ids.values(), *odd.values())
    return ids, odd


def planted_dicom(b: Build, rel: str, seed: int, *, patient_id: str | None = None, laterality: str | None = "L",
                  view: str | None = "CC", pixels: np.ndarray | None = None, extra: dict[str, Any] | None = None,
                  **kw: Any) -> Path:
    """Write ``root/rel``: a valid MG DICOM of a phantom whose header carries planted identifiers."""
    from mammoflow.synth.dicom_writer import write_dicom

    path = b.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    ids, odd = identifiers(b, patient_id)
    if pixels is None:
        pixels = phantom(seed, laterality=laterality or "L", view=view or "CC")
    kw.setdefault("bits_stored", BITS if pixels.dtype == np.uint16 else 8)
    with quiet():
        write_dicom(path, pixels, laterality=laterality, view=view, extra={**odd, **(extra or {})}, **ids, **kw)
    return path


def patch(path: Path, old: str | bytes, new: str | bytes) -> None:
    """Replace the one occurrence of ``old`` by ``new`` (same length: no offset in the file moves)."""
    old_b = old.encode() if isinstance(old, str) else old
    new_b = new.encode() if isinstance(new, str) else new
    new_b = new_b.ljust(len(old_b), b" ")
    if len(new_b) != len(old_b):
        raise ValueError(f"patch {old!r} -> {new!r} changes the length")
    data = path.read_bytes()
    if data.count(old_b) != 1:
        raise ValueError(f"{path.name}: {old!r} found {data.count(old_b)} times, expected once")
    path.write_bytes(data.replace(old_b, new_b))


def edit(path: Path, change: Callable[[Any], None]) -> None:
    """Rewrite ``path`` with pydicom after ``change(dataset)``."""
    import pydicom

    with quiet():
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path, enforce_file_format=True)


def cut(path: Path, keep: float) -> None:
    """Keep the first ``keep`` fraction of the file (a download or copy that stopped)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def corrupt_rle_header(path: Path) -> None:
    """Overwrite the 64-byte RLE header of the first fragment (segment count and offsets) with nonsense."""
    data = bytearray(path.read_bytes())
    pos = data.rfind(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff")
    if pos < 0:
        raise ValueError(f"{path.name}: no encapsulated Pixel Data")
    pos += 12
    for _ in range(2):  # the basic offset table item, then the first fragment
        tag, length = struct.unpack("<II", data[pos:pos + 8])
        if tag != 0xE000FFFE:
            raise ValueError(f"{path.name}: unexpected item tag {tag:#x}")
        pos += 8
        if _ == 0:
            pos += length
    data[pos:pos + 64] = struct.pack("<I", 15) + b"\xff" * 60  # 15 segments, offsets past the end
    path.write_bytes(bytes(data))


def make_rgb(ds: Any) -> None:
    """A colour rendering of the same picture (a screenshot or a secondary capture exported as RGB)."""
    grey = (ds.pixel_array >> 4).astype(np.uint8)
    rgb = np.stack([grey, grey // 2, 255 - grey], axis=-1)
    ds.set_pixel_data(np.ascontiguousarray(rgb), "RGB", 8, generate_instance_uid=False)


def make_multiframe(ds: Any) -> None:
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2


def drop_pixel_data(ds: Any) -> None:
    del ds.PixelData


def without_preamble(path: Path) -> None:
    """The same file without the 128-byte preamble and ``DICM`` (written by some old exporters)."""
    data = path.read_bytes()
    path.write_bytes(data[132:])
