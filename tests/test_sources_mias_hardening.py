"""Issue 13 for MIAS and Yu et al.'s ROI zip: every zip member accounted for (zip slip quarantined, hidden files
skipped with a reason), ROIs of the wrong size quarantined, and a lesion that cannot give a real ROI (a disc
larger than the image, a centre in the black background) never becomes an all-black "tumour" example."""

from __future__ import annotations

import json
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mammoflow.dataset.build import DatasetConfig, build_dataset, cut_examples
from mammoflow.errors import InputError
from mammoflow.io.images import encode_png, write_pgm
from mammoflow.records import RecordsTable
from mammoflow.sources.members import is_hidden, unsafe_reason
from mammoflow.sources.mias import read_mias
from mammoflow.sources.mias_rois import read_mias_rois


def skipped_of(table: RecordsTable) -> list[tuple[str, str]]:
    """(path, reason) of every skipped input."""
    return sorted((s.path, s.reason) for s in table.skipped)


def quarantined_of(table: RecordsTable) -> list[tuple[str, str]]:
    return sorted((q.code, q.path) for q in table.quarantine)


def _roi(value: int, size: int = 120) -> bytes:
    img = np.full((size, size), value, np.uint8)
    img[size // 4: size // 2, size // 4: size // 2] = 255 - value  # not blank
    return encode_png(img)


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)  # ZipInfo keeps '../' and a leading '/' as written
    return path


def test_member_name_rules():
    assert unsafe_reason("../x/train/Normal (1).png") and unsafe_reason("a/../../b.png")
    assert unsafe_reason("/etc/train/Normal (1).png") and unsafe_reason("C:/x.png") and unsafe_reason("a\\..\\b.png")
    assert unsafe_reason("MIAS_ROIs/train/Normal (1).png") is None and unsafe_reason("a/..b.png") is None
    assert is_hidden("__MACOSX/MIAS_ROIs/._Normal (1).png") and is_hidden("MIAS_ROIs/.DS_Store")
    assert is_hidden("MIAS_ROIs/.cache/train/Normal (1).png") and is_hidden("x/Thumbs.db")
    assert not is_hidden("MIAS_ROIs/train/Normal (1).png")


def test_zip_members_are_all_accounted_for(tmp_path: Path):
    """Zip slip -> unsafe_path (never read); hidden / metadata / non-image -> skipped with a reason; a 60x60 ROI ->
    wrong_size. read = used + quarantined + skipped, and every member is named exactly once."""
    members = {
        "MIAS_ROIs/train/Normal (1).png": _roi(40),
        "MIAS_ROIs/train/Tumor (1).png": _roi(90),
        "MIAS_ROIs/val/Normal (1).png": _roi(60),
        "MIAS_ROIs/test/Tumor (1).png": _roi(70),
        "MIAS_ROIs/test/Normal (1).png": _roi(80, size=60),  # 60x60: not the released size
        "../escape/train/Normal (2).png": _roi(41),  # zip slip
        "MIAS_ROIs/train/../../../train/Tumor (2).png": _roi(42),  # zip slip in the middle
        "/abs/test/Normal (3).png": _roi(43),  # absolute
        "__MACOSX/MIAS_ROIs/train/._Normal (1).png": b"\x00\x05\x16\x07",  # macOS resource fork
        "MIAS_ROIs/.DS_Store": b"Bud1",
        "MIAS_ROIs/train/.Normal (9).png": _roi(44),  # hidden image
        "MIAS_ROIs/README.txt": b"released with the paper",
    }
    archive = _zip(tmp_path / "MIAS_ROIs.zip", members)
    with zipfile.ZipFile(archive) as zf:  # the names really are stored as written
        assert "../escape/train/Normal (2).png" in zf.namelist() and "/abs/test/Normal (3).png" in zf.namelist()

    table = read_mias_rois(archive)
    root = str(archive.resolve())
    assert sorted(r.record_id for r in table.records) == [
        "mias-rois:test/Tumor (1)", "mias-rois:train/Normal (1)", "mias-rois:train/Tumor (1)",
        "mias-rois:val/Normal (1)"]
    assert quarantined_of(table) == sorted([
        ("unsafe_path", f"{root}/../escape/train/Normal (2).png"),
        ("unsafe_path", f"{root}/MIAS_ROIs/train/../../../train/Tumor (2).png"),
        ("unsafe_path", f"{root}//abs/test/Normal (3).png"),
        ("wrong_size", f"{root}/MIAS_ROIs/test/Normal (1).png"),
    ])
    assert skipped_of(table) == sorted([
        (f"{root}/__MACOSX/MIAS_ROIs/train/._Normal (1).png", "hidden"),
        (f"{root}/MIAS_ROIs/.DS_Store", "hidden"),
        (f"{root}/MIAS_ROIs/train/.Normal (9).png", "hidden"),
        (f"{root}/MIAS_ROIs/README.txt", "sidecar"),
    ])
    s = table.summary()
    assert s["read"] == s["used"] + s["quarantined"] + s["skipped"] == len(members) == 12
    assert s["skipped_by_reason"] == {"hidden": 3, "sidecar": 1}
    # Every member is named once: used, quarantined or skipped.
    named = [f"{root}/{r.image_path}" for r in table.records] + [p for _, p in quarantined_of(table)] + \
        [p for p, _ in skipped_of(table)]
    assert sorted(named) == sorted(f"{root}/{m}" for m in members)
    wrong = next(q for q in table.quarantine if q.code == "wrong_size")
    assert "60x60" in wrong.problem and "120x120" in wrong.problem and wrong.record_id == "mias-rois:test/Normal (1)"
    assert "120x120" in wrong.fix and "roi_size" in wrong.fix
    slip = next(q for q in table.quarantine if q.code == "unsafe_path")
    assert "zip slip" in slip.problem and slip.fix


def test_a_set_cut_at_another_size_is_read_when_asked(tmp_path: Path):
    archive = _zip(tmp_path / "MIAS_ROIs.zip", {"MIAS_ROIs/train/Normal (1).png": _roi(40, size=60),
                                                "MIAS_ROIs/train/Tumor (1).png": _roi(90, size=60)})
    assert [q.code for q in read_mias_rois(archive).quarantine] == ["wrong_size", "wrong_size"]
    table = read_mias_rois(archive, expected_size=None)
    assert table.quarantine == [] and {(r.height, r.width) for r in table.records} == {(60, 60)}


def test_hidden_files_of_an_extracted_folder_are_skipped_not_dropped(tmp_path: Path):
    folder = tmp_path / "rois"
    (folder / "MIAS_ROIs" / "train").mkdir(parents=True)
    (folder / "MIAS_ROIs" / "train" / "Normal (1).png").write_bytes(_roi(40))
    (folder / "MIAS_ROIs" / "train" / ".DS_Store").write_bytes(b"Bud1")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_bytes(b"ref")
    table = read_mias_rois(folder)
    assert [r.record_id for r in table.records] == ["mias-rois:train/Normal (1)"]
    assert [reason for _, reason in skipped_of(table)] == ["hidden", "hidden"]


# ----------------------------------------------------------------------------------------------- MIAS lesions


def _mammogram(seed: int) -> np.ndarray:
    """1024x1024: a bright half-disc breast against the left edge, a black background on the right."""
    rng = np.random.default_rng(seed)
    rr, cc = np.ogrid[:1024, :1024]
    breast = (rr - 512) ** 2 + cc ** 2 <= 480 ** 2
    img = np.where(breast, 120 + rng.normal(0, 4, (1024, 1024)), 0)
    img[(rr - 512) ** 2 + (cc - 200) ** 2 <= 20 ** 2] = 230  # a mass
    return np.clip(img, 0, 255).astype(np.uint8)


def test_a_lesion_disc_larger_than_the_image_is_quarantined_at_ingest(tmp_path: Path):
    (tmp_path / "Info.txt").write_text("mdb001 G CIRC B 200 512 20\nmdb002 G CIRC B 1000 512 600\n"
                                       "mdb003 G CIRC M 200 512 512\n")
    for i in (1, 2, 3):
        write_pgm(tmp_path / f"mdb{i:03d}.pgm", _mammogram(i))
    table = read_mias(root=tmp_path)
    assert [r.record_id for r in table.records] == ["mias:mdb001", "mias:mdb003"]  # 2 x 512 fits, just
    (q,) = table.quarantine
    assert (q.code, q.record_id) == ("bad_annotation", "mias:mdb002")
    assert "line 2" in q.problem and "mias:mdb002:1" in q.problem and "600" in q.problem
    assert table.meta["line_accounting"]["quarantined"] == 1
    # The same check without the images.
    meta = read_mias(info=tmp_path / "Info.txt", metadata_only=True)
    assert [q.code for q in meta.quarantine] == ["bad_annotation"]


def test_a_lesion_roi_in_the_black_background_is_refused_not_cut(tmp_path: Path):
    """A lesion centred in the background (right edge) would give an all-zero 'tumour' ROI once the non-breast
    area is removed: cut_examples refuses it with empty_roi, naming where."""
    (tmp_path / "Info.txt").write_text("mdb001 G CIRC B 1000 512 400\n")
    write_pgm(tmp_path / "mdb001.pgm", _mammogram(1))
    (rec,) = read_mias(root=tmp_path).records
    image = _mammogram(1)
    with pytest.raises(InputError) as err:
        cut_examples(rec, image, DatasetConfig.load("yu2020"))
    assert err.value.code == "empty_roi" and "non-zero" in err.value.problem and "row 512, col 1000" in \
        err.value.problem
    # The same lesion with a huge scaled side: mostly outside the image.
    with pytest.raises(InputError) as outside:
        cut_examples(rec, image, replace(DatasetConfig.load("yu2020"), scale_to_radius=True, radius_margin=2.0))
    assert outside.value.code == "empty_roi" and "inside the 1024x1024 image" in outside.value.problem


def test_build_dataset_quarantines_the_empty_lesion_roi_and_counts_it(tmp_path: Path):
    """End to end: 10 MIAS images, one with its lesion in the black background. No all-black tumour example is
    written; the record is in the build's quarantine with its reason, and counted in the manifest."""
    (tmp_path / "img").mkdir()
    lines = []
    for i in range(1, 11):
        write_pgm(tmp_path / "img" / f"mdb{i:03d}.pgm", _mammogram(i))
        lines.append(f"mdb{i:03d} G NORM" if i % 2 else f"mdb{i:03d} G CIRC B 200 512 20")
    lines[3] = "mdb004 G CIRC M 1000 512 300"  # centre in the background on the right
    (tmp_path / "img" / "Info.txt").write_text("\n".join(lines) + "\n")
    table = read_mias(root=tmp_path / "img")
    assert table.quarantine == []
    table.write(tmp_path / "records")

    result = build_dataset(tmp_path / "records", "yu2020", str(tmp_path / "ds"))
    assert [(q.record_id, q.code) for q in result.quarantine] == [("mias:mdb004", "empty_roi")]
    assert "row 512, col 1000" in result.quarantine[0].problem
    lesion_id = read_mias(root=tmp_path / "img").records[3].lesions[0].lesion_id
    assert result.quarantine[0].problem.startswith(f"lesion {lesion_id} "), result.quarantine[0].problem
    assert result.manifest["inputs"]["records_quarantined"] == 1
    written = [json.loads(line) for line in (tmp_path / "ds" / "quarantine.jsonl").read_text().splitlines()]
    assert [q["record_id"] for q in written] == ["mias:mdb004"]
    assert sum(sum(c.values()) for c in result.manifest["counts"].values()) == result.manifest["examples"] == 9
