"""MIAS: the real Info.txt parsed completely, and every bad-input kind quarantined with images present."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from mammoflow.io.images import encode_png, write_pgm
from mammoflow.sources.mias import (
    InfoEntry,
    InfoProblem,
    laterality_of,
    mias_to_pixel,
    parse_info,
    parse_line,
    patient_of,
    read_mias,
)

HEADER = "MIAS MiniMammographic Database\n\nmdb = reference number, see notes\n=====\n"


def _count_lines_independently(text: str) -> tuple[int, set[str]]:
    """Record lines and distinct images of Info.txt, counted without the parser (a regex on each line)."""
    refs = [m.group(1) for m in (re.match(r"(mdb\d{3})\s", line + " ") for line in text.splitlines()) if m]
    return len(refs), set(refs)


@pytest.mark.realdata
def test_real_info_every_line_accounted_for(mias_info: Path):
    text = mias_info.read_text(encoding="latin-1")
    n_lines, refs = _count_lines_independently(text)
    entries, problems = parse_info(text)
    assert problems == []
    assert len(entries) == n_lines
    assert len(refs) == 322

    table = read_mias(info=mias_info, metadata_only=True)
    assert table.quarantine == []
    assert {r.record_id for r in table.records} == {f"mias:{ref}" for ref in refs}
    normal_lines = sum(1 for line in text.splitlines() if re.match(r"mdb\d{3}\s+[FGD]\s+NORM\s*$", line))
    lesions = sum(len(r.lesions) for r in table.records)
    normals = sum(1 for r in table.records if r.label == "normal")
    assert lesions + normals == n_lines
    assert normals == normal_lines
    acc = table.meta["line_accounting"]
    assert acc["total"] == n_lines and acc["lesions"] == lesions and acc["normal"] == normals
    # Every abnormal record keeps its lesions; every normal record has none.
    assert all((r.label == "normal") == (not r.lesions) for r in table.records)
    assert len({r.patient_id for r in table.records}) == 161


@pytest.mark.realdata
def test_real_info_multi_lesion_and_missing_geometry(mias_info: Path):
    table = read_mias(info=mias_info, metadata_only=True)
    recs = {r.record_id: r for r in table.records}

    mixed = recs["mias:mdb144"]  # a benign and a malignant mass in one image
    assert mixed.label == "malignant"
    assert [le.label for le in mixed.lesions] == ["benign", "malignant"]
    assert [le.extra["mias_xy"] for le in mixed.lesions] == [[233.0, 994.0], [313.0, 540.0]]
    assert (mixed.lesions[0].center_row, mixed.lesions[0].center_col) == (1024 - 994, 233)

    three = recs["mias:mdb226"]  # three benign calcification clusters
    assert three.label == "benign" and len(three.lesions) == 3

    no_xy = recs["mias:mdb059"]  # "mdb059 F CIRC B": abnormal, no coordinates
    assert no_xy.label == "benign" and len(no_xy.lesions) == 1
    assert no_xy.lesions[0].center_row is None and not no_xy.lesions[0].has_geometry
    assert no_xy.lesions[0].extra["geometry"] == "missing"
    assert no_xy.extra["lesions_without_geometry"] == 1

    for ref in ("mdb216", "mdb233", "mdb245"):  # "*NOTE 3*" widely distributed calcifications
        rec = recs[f"mias:{ref}"]
        assert rec.label == "malignant" and rec.lesions[0].kind == "CALC"
        assert rec.lesions[0].radius is None and "NOTE 3" in rec.lesions[0].extra["geometry_note"]

    assert recs["mias:mdb003"].label == "normal" and recs["mias:mdb003"].extra["background_tissue"] == "D"
    # Info.txt note 1: pairs are one patient, left = even number, right = odd.
    assert recs["mias:mdb001"].patient_id == recs["mias:mdb002"].patient_id == "mias-p001"
    assert recs["mias:mdb003"].patient_id == "mias-p002"
    assert (recs["mias:mdb001"].laterality, recs["mias:mdb002"].laterality) == ("R", "L")
    assert all(r.view == "MLO" for r in table.records)


def test_parse_line_cases():
    assert parse_line(1, "mdb003 D NORM   ") == InfoEntry(1, "mdb003", "D", "NORM")
    e = parse_line(2, "mdb001 G CIRC B 535 425 197")
    assert isinstance(e, InfoEntry) and (e.x, e.y, e.radius, e.severity) == (535, 425, 197, "B")
    assert parse_line(3, "mdb216 D CALC M *NOTE 3* ").note == "*NOTE 3*"
    bad = {
        "mdb010 F CIRC B 525 425 -3": "negative_radius",
        "mdb010 F CIRX B 525 425 33": "unknown_class",
        "mdb010 F CIRC Q 525 425 33": "unknown_label",
        "mdb010 F CIRC": "unknown_label",
        "mdb010 X CIRC B 525 425 33": "bad_annotation",
        "mdb010 F CIRC B 525 425": "bad_annotation",
        "mdb010 F CIRC B 525 abc 33": "bad_annotation",
        "mdb010 F NORM B": "bad_annotation",
        "mdb10 F NORM": "bad_annotation",
    }
    for line, code in bad.items():
        got = parse_line(7, line)
        assert isinstance(got, InfoProblem) and got.code == code, line
        assert got.line == 7 and "line 7" in got.problem


def test_coordinates_and_pairs():
    assert mias_to_pixel(535, 425) == (599.0, 535.0)
    assert mias_to_pixel(10, 0, height=100) == (100.0, 10.0)
    assert patient_of("mdb321") == patient_of("mdb322") == "mias-p161"
    assert laterality_of("mdb322") == "L" and laterality_of("mdb321") == "R"


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 200, size=(1024, 1024), dtype=np.uint8)


def test_bad_inputs_with_images_are_quarantined(tmp_path: Path):
    """Every bad kind: read = used + quarantined, each with its code, problem and fix."""
    info = HEADER + "\n".join([
        "mdb001 G CIRC B 535 425 197",  # good
        "mdb002 G NORM ",  # good, trailing blank
        "mdb003 D NORM",  # image missing
        "mdb004 D NORM",  # truncated PGM
        "mdb005 F CIRC B 477 133 30",  # RGB image
        "mdb006 F NORM",  # 1-bit bitmap (bit depth)
        "mdb007 G CIRC B 1500 425 20",  # centre outside the image
        "mdb008 G CIRC B 500 425 -5",  # negative radius
        "mdb009 G BLOB B 500 425 5",  # unknown class
        "mdb010 G CIRC X 500 425 5",  # unknown severity
        "mdb011 G NORM",  # conflicting duplicate lines ...
        "mdb011 G CIRC M 300 300 10",  # ... NORM and abnormal for one image
        "mdb012 D CIRC B 100 100 10",  # two lines with different background tissue
        "mdb012 F CIRC B 200 200 10",
        "mdb013 F CIRC M 100 900 12",  # good, identical line repeated below
        "mdb013 F CIRC M 100 900 12",
        "mdb014 F NORM",  # corrupt PGM header
    ]) + "\n"
    (tmp_path / "Info.txt").write_text(info)
    for i in (1, 2, 5, 7, 8, 9, 10, 11, 12, 13):
        write_pgm(tmp_path / f"mdb{i:03d}.pgm", _image(i))
    write_pgm(tmp_path / "mdb099.pgm", _image(99))  # image that Info.txt does not list
    (tmp_path / "mdb004.pgm").write_bytes((tmp_path / "mdb001.pgm").read_bytes()[:5000])
    rgb = np.stack([_image(1), _image(2), _image(3)], axis=-1)
    (tmp_path / "mdb005.pgm").write_bytes(b"P6\n1024 1024\n255\n" + rgb.tobytes())
    (tmp_path / "mdb006.pgm").write_bytes(b"P4\n1024 1024\n" + bytes(1024 * 128))
    (tmp_path / "mdb014.pgm").write_bytes(b"P5\n1024 abc\n255\n" + bytes(100))

    table = read_mias(root=tmp_path)
    codes = {q.record_id: q.code for q in table.quarantine}
    assert codes == {
        "mias:mdb003": "missing_file", "mias:mdb004": "truncated", "mias:mdb005": "rgb",
        "mias:mdb006": "bit_depth", "mias:mdb007": "outside_image", "mias:mdb008": "negative_radius",
        "mias:mdb009": "unknown_class", "mias:mdb010": "unknown_label", "mias:mdb011": "duplicate_id",
        "mias:mdb012": "duplicate_id", "mias:mdb014": "corrupt", "mias:mdb099": "no_annotation",
    }
    assert [r.record_id for r in table.records] == ["mias:mdb001", "mias:mdb002", "mias:mdb013"]
    summary = table.summary()
    assert summary["read"] == summary["used"] + summary["quarantined"] == 15
    assert all(q.problem and q.fix for q in table.quarantine)
    outside = next(q for q in table.quarantine if q.code == "outside_image")
    assert "1500" in outside.problem and outside.path.endswith("Info.txt")
    # The repeated identical line is one lesion, not two; the content hash is the file's.
    rec13 = table.records[2]
    assert len(rec13.lesions) == 1 and table.meta["line_accounting"]["duplicates_ignored"] == 1
    import hashlib
    assert rec13.content_hash == hashlib.sha256((tmp_path / "mdb013.pgm").read_bytes()).hexdigest()
    assert rec13.height == rec13.width == 1024
    # Every record line is accounted for.
    acc = table.meta["line_accounting"]
    assert acc["lesions"] + acc["normal"] + acc["quarantined"] + acc["duplicates_ignored"] == acc["total"] == 17


def test_wrong_size_image_is_quarantined(tmp_path: Path):
    (tmp_path / "Info.txt").write_text("mdb001 G CIRC B 535 425 197\n")
    (tmp_path / "mdb001.png").write_bytes(encode_png(np.zeros((512, 512), np.uint8)))
    table = read_mias(root=tmp_path)
    assert [q.code for q in table.quarantine] == ["bad_size"] and table.records == []


def test_phantom_lesion_centre_lands_on_the_lesion(tmp_path: Path):
    """Info.txt x, y (origin bottom-left) converted to row/col land on the phantom's lesion."""
    phantoms = pytest.importorskip("mammoflow.synth.phantoms")
    from mammoflow.io.images import read_image

    truth = phantoms.write_mias_dataset(tmp_path, n_images=8, seed=3)
    table = read_mias(root=tmp_path)
    assert table.quarantine == [] and len(table.records) == 8
    recs = {r.record_id: r for r in table.records}
    located = 0
    for image in truth["images"]:
        rec = recs[f"mias:{image['refnum']}"]
        assert rec.laterality == image["laterality"] and rec.extra["background_tissue"] == image["background"]
        assert rec.label == ("normal" if not image["lesions"] else
                             "malignant" if any(le["label"] == "malignant" for le in image["lesions"]) else "benign")
        assert len(rec.lesions) == len(image["lesions"])
        pixels = read_image(tmp_path / rec.image_path).astype(np.float64)
        rows, cols = np.indices(pixels.shape)
        for lesion, want in zip(rec.lesions, image["lesions"], strict=True):
            assert (lesion.center_row, lesion.center_col, lesion.radius) == \
                (want["center_row"], want["center_col"], want["radius"])
            # The lesion is at the converted centre: a mass's core outshines the ring around it, a
            # calcification cluster's bright dots outshine the ring's brightest tissue.
            dist = np.hypot(rows - lesion.center_row, cols - lesion.center_col)
            ring = pixels[(dist > lesion.radius * 1.5) & (dist <= lesion.radius * 2.5)]
            if lesion.kind == "CALC":
                core, around = np.percentile(pixels[dist <= lesion.radius], 99), np.percentile(ring, 99)
            else:
                core, around = pixels[dist <= lesion.radius * 0.5].mean(), ring.mean()
            assert core > around + 5, (rec.record_id, lesion.kind, core, around)
            located += 1
    assert located >= 2


def test_a_second_image_file_of_one_reference_is_counted(tmp_path: Path):
    """mdb001.pgm and mdb001.png both present: the .pgm is read, the .png is quarantined, not silently ignored."""
    (tmp_path / "Info.txt").write_text("mdb001 G NORM\nmdb002 G NORM\n")
    write_pgm(tmp_path / "mdb001.pgm", _image(1))
    (tmp_path / "mdb001.png").write_bytes(encode_png(_image(1)))
    (tmp_path / "mdb002.png").write_bytes(encode_png(_image(2)))
    (tmp_path / "MDB002.PGM").write_bytes(b"")  # differs from the listed name in case: never read, still counted
    table = read_mias(root=tmp_path)
    assert {r.record_id: r.image_path for r in table.records} == {"mias:mdb001": "mdb001.pgm",
                                                                  "mias:mdb002": "mdb002.png"}
    assert sorted((Path(q.path).name, q.code, q.record_id) for q in table.quarantine) == [
        ("MDB002.PGM", "duplicate_file", None), ("mdb001.png", "duplicate_file", None)]
    assert "mdb001.pgm is the one read" in next(q.problem for q in table.quarantine if q.path.endswith(".png"))
    s = table.summary()
    assert s["read"] == s["used"] + s["quarantined"] == 4


def test_a_16_bit_image_in_an_8_bit_dataset_is_used_and_noted(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    import logging

    (tmp_path / "Info.txt").write_text("mdb001 G NORM\nmdb002 G NORM\n")
    write_pgm(tmp_path / "mdb001.pgm", np.full((1024, 1024), 40_000, np.uint16))
    write_pgm(tmp_path / "mdb002.pgm", np.full((1024, 1024), 120, np.uint8))
    with caplog.at_level(logging.WARNING, logger="mammoflow"):
        table = read_mias(root=tmp_path)
    by_id = {r.record_id: r for r in table.records}
    assert sorted(by_id) == ["mias:mdb001", "mias:mdb002"] and table.quarantine == []
    assert by_id["mias:mdb001"].extra["bit_depth"] == 16 and "bit_depth" not in by_id["mias:mdb002"].extra
    assert "mias:mdb001: 16-bit image" in caplog.text and "mdb002" not in caplog.text
