"""Bad members of Yu et al.'s ROI zip (``--source mias-rois``): ``MIAS_ROIs/{train,val,test}/{Normal,Tumor} (n).png``.

The ROIs are 120x120 crops of the project's phantoms, each PNG carrying a planted name in a ``tEXt`` chunk.
Members are collected in :attr:`Build.members` and zipped by :func:`finish` (names as given, ``../`` included).
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from tests.corpus.model import PLANT, QUARANTINED, SKIPPED, Build, Expect, Kind, RunSpec, Target

ZIP = "MIAS_ROIs.zip"
ROI = 120


def crop(b: Build, k: int, size: int = ROI) -> np.ndarray:
    if "roi_base" not in b.state:
        from mammoflow.synth.phantoms import make_phantom

        b.state["roi_base"] = make_phantom([79, 1], shape=(512, 512), laterality="L", view="CC", bits=8).image
    base = b.state["roi_base"]
    r, c = 150 + 7 * (k % 20), 150 + 11 * (k // 20)
    out = base[r:r + size, c:c + size].copy()
    out[0, 0] = k % 256  # unique: no two ROIs equal by accident
    return out


def png(b: Build, img: np.ndarray) -> bytes:
    """PNG bytes with a ``tEXt`` chunk naming a (planted) patient, as some exporters write."""
    from mammoflow.io.images import encode_png

    name = f"{PLANT}NAME^{b.tag}"
    b.plant(name)
    data = encode_png(img)
    body = b"Author\x00" + name.encode()
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
    iend = data.rindex(b"IEND") - 4
    return data[:iend] + chunk + data[iend:]


def member(split: str, cls: str, n: int) -> str:
    return f"MIAS_ROIs/{split}/{cls} ({n}).png"


# ----------------------------------------------------------------------------------------- the run


def setup(b: Build) -> None:
    b.root.mkdir(parents=True, exist_ok=True)
    b.tag = "G01"
    k = 0
    for split, n in (("train", 3), ("val", 1), ("test", 1)):
        for cls in ("Normal", "Tumor"):
            for i in range(1, n + 1):
                k += 1
                b.members[member(split, cls, i)] = png(b, crop(b, k))
    b.state["roi_k"] = 100


def finish(b: Build) -> None:
    with zipfile.ZipFile(b.root / ZIP, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in b.members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)


def argv(paths: dict[str, Path]) -> list[str]:
    return ["ingest", "--source", "mias-rois", "--root", str(paths["root"] / ZIP), "--out", str(paths["out"])]


def runs() -> list[RunSpec]:
    return [RunSpec("rois", setup, finish, argv, exit_code=0)]


# ----------------------------------------------------------------------------------------- kinds


def _next(b: Build) -> int:
    b.state["roi_k"] += 1
    return b.state["roi_k"]


def _member(name: str, make_bytes):
    def make(b: Build) -> list[Target]:
        b.members[name] = make_bytes(b)
        return [Target(name)]
    return make


def good(b: Build) -> bytes:
    return png(b, crop(b, _next(b)))


def small(b: Build) -> bytes:
    return png(b, crop(b, _next(b), size=60))


def corrupt(b: Build) -> bytes:
    data = bytearray(good(b))
    idat = data.index(b"IDAT") + 4
    data[idat + 10:idat + 30] = b"\x00" * 20  # damaged image data: the chunk's CRC no longer matches
    return bytes(data)


def truncated(b: Build) -> bytes:
    data = good(b)
    return data[: len(data) // 2]


def rgb(b: Build) -> bytes:
    import cv2

    grey = crop(b, _next(b))
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(np.stack([grey, grey // 2, 255 - grey], axis=-1)))
    assert ok
    return buf.tobytes()


def duplicate_content(b: Build) -> list[Target]:
    name = member("test", "Normal", 5)
    b.members[name] = b.members[member("train", "Normal", 1)]
    return [Target(name)]


def macos_metadata(b: Build) -> list[Target]:
    name = "__MACOSX/MIAS_ROIs/train/._Normal (1).png"
    b.members[name] = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + b"\x00" * 64
    return [Target(name)]


def ds_store(b: Build) -> list[Target]:
    b.members["MIAS_ROIs/.DS_Store"] = b"\x00\x00\x00\x01Bud1" + b"\x00" * 60
    return [Target("MIAS_ROIs/.DS_Store")]


Q, S = QUARANTINED, SKIPPED


def kinds() -> list[Kind]:
    r = "rois"
    return [
        Kind("zip_macosx_member", r, macos_metadata, Expect(S, ("hidden",), why="issue: members starting with . were dropped")),
        Kind("zip_ds_store", r, ds_store, Expect(S, ("hidden",))),
        Kind("zip_hidden_roi", r, _member("MIAS_ROIs/train/.Normal (9).png", good), Expect(S, ("hidden",))),
        Kind("zip_slip_member", r, _member("../evil.png", good), Expect(Q, ("unsafe_path",), why="issue: ../ members were dropped")),
        Kind("zip_slip_in_layout", r, _member("MIAS_ROIs/../../train/Normal (7).png", good), Expect(Q, ("unsafe_path",))),
        Kind("zip_roi_60x60", r, _member(member("train", "Normal", 4), small),
             Expect(Q, ("wrong_size",), why="issue: 60x60 ROIs were accepted silently")),
        Kind("zip_corrupt_png", r, _member(member("train", "Tumor", 4), corrupt), Expect(Q, ("corrupt",))),
        Kind("zip_truncated_png", r, _member(member("val", "Tumor", 2), truncated), Expect(Q, ("truncated",))),
        Kind("zip_rgb_png", r, _member(member("val", "Normal", 2), rgb), Expect(Q, ("rgb",))),
        Kind("zip_zero_byte_png", r, _member(member("test", "Tumor", 3), lambda b: b""), Expect(Q, ("empty",))),
        Kind("zip_outside_layout", r, _member("MIAS_ROIs/extra/ROI_1.png", good), Expect(Q, ("unexpected_file",))),
        Kind("zip_duplicate_content", r, duplicate_content, Expect(Q, ("duplicate_content",))),
    ]
