"""Bad inputs of a MIAS folder (``--source mias``): damaged PGMs and odd ``Info.txt`` lines.

The images are the project's 1024x1024 phantoms (``make_phantom``), each made unique (a few pixels carry the
kind's number, so no two files are identical by accident) and carrying a planted name in a PGM comment. The run
uses ``--strict``: anything quarantined means exit 3.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tests.corpus.model import PLANT, QUARANTINED, Build, Expect, Kind, RunSpec, Target

SIZE = 1024
INFO = "Info.txt"


def base_image(b: Build) -> np.ndarray:
    if "mias_base" not in b.state:
        from mammoflow.synth.phantoms import make_phantom

        b.state["mias_base"] = make_phantom([78, 1], shape=(SIZE, SIZE), laterality="L", view="MLO", bits=8).image
    return b.state["mias_base"]


def next_ref(b: Build) -> str:
    n = b.state.get("mias_n", 0) + 1
    b.state["mias_n"] = n
    return f"mdb{n:03d}"


def unique_image(b: Build, ref: str) -> np.ndarray:
    img = base_image(b).copy()
    img[0, :3] = [int(ref[3:]) % 256, 7, 11]
    return img


def pgm_bytes(b: Build, img: np.ndarray, *, magic: str = "P5", maxval: int | None = None,
              body: bytes | None = None) -> bytes:
    """A PGM with a planted name in a header comment (``# patient ...``), as some scanners' exports have."""
    name = f"{PLANT}NAME^{b.tag}"
    b.plant(name)
    maxval = maxval if maxval is not None else (255 if img.dtype == np.uint8 else 65535)
    height, width = img.shape[:2]
    header = f"{magic}\n# patient {name}\n{width} {height}\n{maxval}\n".encode("ascii")
    return header + (img.tobytes() if body is None else body)


def write(b: Build, name: str, data: bytes) -> Path:
    path = b.root / name
    path.write_bytes(data)
    return path


def info_line(b: Build, text: str) -> int:
    return b.add_line(text)


# ----------------------------------------------------------------------------------------- the run


def setup(b: Build) -> None:
    b.root.mkdir(parents=True, exist_ok=True)
    b.tag = "G01"
    name = f"{PLANT}NAME^HEADER"
    b.plant(name)
    for text in ("MIAS-LIKE CORPUS", f"Database compiled for patient {name} (header text, not a record)", ""):
        b.add_line(text)
    for k in range(4):  # good: two normals, two with a lesion in the middle
        ref = next_ref(b)
        write(b, f"{ref}.pgm", pgm_bytes(b, unique_image(b, ref)))
        info_line(b, f"{ref} G NORM" if k % 2 == 0 else f"{ref} G CIRC B 512 512 40")


def finish(b: Build) -> None:
    (b.root / INFO).write_text("\n".join(b.lines) + "\n", encoding="ascii")


def argv(paths: dict[str, Path]) -> list[str]:
    return ["ingest", "--source", "mias", "--root", str(paths["root"]), "--strict", "--out", str(paths["out"])]


def runs() -> list[RunSpec]:
    return [RunSpec("mias", setup, finish, argv, exit_code=3, notes="--strict: anything quarantined -> 3")]


# ----------------------------------------------------------------------------------------- kinds: images


def _image_kind(mutate):
    """A NORM line and an image file ``mutate(b, ref) -> bytes`` (the file is the bad input)."""
    def make(b: Build) -> list[Target]:
        ref = next_ref(b)
        write(b, f"{ref}.pgm", mutate(b, ref))
        line = info_line(b, f"{ref} F NORM")
        return [Target(f"{ref}.pgm", annotation=INFO, line=line, record_id=f"mias:{ref}")]
    return make


def zero_byte(b: Build, ref: str) -> bytes:
    return b""


def truncated(b: Build, ref: str) -> bytes:
    data = pgm_bytes(b, unique_image(b, ref))
    return data[: len(data) // 2]


def maxval_zero(b: Build, ref: str) -> bytes:
    return pgm_bytes(b, unique_image(b, ref), maxval=0)


def maxval_over_16bit(b: Build, ref: str) -> bytes:
    return pgm_bytes(b, unique_image(b, ref), maxval=70000)


def samples_above_maxval(b: Build, ref: str) -> bytes:
    return pgm_bytes(b, unique_image(b, ref), maxval=100)  # 8-bit samples up to 255 > maxval 100


def ppm_rgb(b: Build, ref: str) -> bytes:
    grey = unique_image(b, ref)
    rgb = np.stack([grey, grey // 2, 255 - grey], axis=-1)
    return pgm_bytes(b, grey, magic="P6", body=np.ascontiguousarray(rgb).tobytes())


def ascii_non_numeric(b: Build, ref: str) -> bytes:
    return pgm_bytes(b, np.zeros((4, 4), np.uint8), magic="P2", body=b"1 2 3 x\n" * 4)


def wrong_size(b: Build, ref: str) -> bytes:
    return pgm_bytes(b, unique_image(b, ref)[:512, :512].copy())


def duplicate_file(b: Build) -> list[Target]:
    from mammoflow.io.images import encode_png

    ref = next_ref(b)
    write(b, f"{ref}.pgm", pgm_bytes(b, unique_image(b, ref)))
    write(b, f"{ref}.png", encode_png(unique_image(b, ref)))
    info_line(b, f"{ref} G NORM")
    return [Target(f"{ref}.png")]


def not_in_info(b: Build) -> list[Target]:
    ref = next_ref(b)
    write(b, f"{ref}.pgm", pgm_bytes(b, unique_image(b, ref)))
    return [Target(f"{ref}.pgm", record_id=f"mias:{ref}")]


def missing_image(b: Build) -> list[Target]:
    ref = next_ref(b)
    line = info_line(b, f"{ref} D NORM")
    return [Target(annotation=INFO, line=line, record_id=f"mias:{ref}")]


# ----------------------------------------------------------------------------------------- kinds: Info.txt lines


def _line_kind(*texts: str):
    """A good image whose Info.txt line(s) (``{ref}`` filled in) are the bad input."""
    def make(b: Build) -> list[Target]:
        ref = next_ref(b)
        write(b, f"{ref}.pgm", pgm_bytes(b, unique_image(b, ref)))
        lines = [info_line(b, text.format(ref=ref)) for text in texts]
        return [Target(annotation=INFO, line=lines[-1], record_id=f"mias:{ref}")]
    return make


Q = QUARANTINED


def kinds() -> list[Kind]:
    m = "mias"
    return [
        Kind("pgm_zero_byte", m, _image_kind(zero_byte), Expect(Q, ("empty",))),
        Kind("pgm_truncated", m, _image_kind(truncated), Expect(Q, ("truncated",))),
        Kind("pgm_maxval_zero", m, _image_kind(maxval_zero), Expect(Q, ("bit_depth",))),
        Kind("pgm_maxval_over_65535", m, _image_kind(maxval_over_16bit), Expect(Q, ("bit_depth",))),
        Kind("pgm_samples_above_maxval", m, _image_kind(samples_above_maxval), Expect(Q)),
        Kind("pgm_rgb_ppm", m, _image_kind(ppm_rgb), Expect(Q, ("rgb",))),
        Kind("pgm_ascii_non_numeric", m, _image_kind(ascii_non_numeric), Expect(Q, ("corrupt",))),
        Kind("pgm_wrong_size", m, _image_kind(wrong_size), Expect(Q, ("bad_size",))),
        Kind("mias_second_image_file", m, duplicate_file, Expect(Q, ("duplicate_file",))),
        Kind("mias_image_not_in_info", m, not_in_info, Expect(Q, ("no_annotation",))),
        Kind("mias_info_line_without_image", m, missing_image, Expect(Q, ("missing_file",))),
        Kind("info_missing_fields", m, _line_kind("{ref} G"), Expect(Q, ("bad_annotation",))),
        Kind("info_unknown_class", m, _line_kind("{ref} G WXYZ B 500 500 20"), Expect(Q, ("unknown_class",))),
        Kind("info_unknown_severity", m, _line_kind("{ref} G CIRC X 500 500 20"), Expect(Q, ("unknown_label",))),
        Kind("info_negative_radius", m, _line_kind("{ref} G CIRC B 500 500 -20"), Expect(Q, ("negative_radius",))),
        Kind("info_huge_radius_near_edge", m, _line_kind("{ref} G CIRC M 6 6 900"),
             Expect(Q, ("bad_annotation",), why="issue: yielded an all-zero 'tumour' ROI")),
        Kind("info_coordinates_outside_image", m, _line_kind("{ref} G CIRC B 1500 200 20"),
             Expect(Q, ("outside_image",))),
        Kind("info_non_numeric_coordinates", m, _line_kind("{ref} G CIRC B abc 10 20"), Expect(Q, ("bad_annotation",))),
        Kind("info_duplicate_mias_id", m, _line_kind("{ref} G NORM", "{ref} G CIRC B 500 500 20"),
             Expect(Q, ("duplicate_id",))),
    ]
