"""Yu et al.'s released MIAS ROIs: the real zip (splits, trainval check) and a damaged copy of it."""

from __future__ import annotations

import hashlib
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mammoflow.io.images import encode_png, read_image
from mammoflow.records import RecordsTable
from mammoflow.sources.mias_rois import read_mias_rois


@pytest.mark.realdata
def test_real_zip_splits_and_no_trainval_duplicates(mias_rois_zip: Path, tmp_path: Path):
    table = read_mias_rois(mias_rois_zip)
    assert table.quarantine == []
    counts = Counter((r.split, r.label) for r in table.records)
    assert counts == {("train", "normal"): 125, ("train", "tumour"): 72, ("val", "normal"): 41,
                      ("val", "tumour"): 24, ("test", "normal"): 41, ("test", "tumour"): 23}
    assert not any("trainval" in r.image_path or "trainval" in r.record_id for r in table.records)
    assert len({r.content_hash for r in table.records}) == len(table.records) == 326
    check = table.meta["trainval_check"]
    assert check["equal_by_content"] and check["trainval_files"] == 262 == check["train_plus_val"]
    # One pseudo patient per ROI, and the record says why leakage cannot be checked.
    assert len({r.patient_id for r in table.records}) == 326
    assert all("cannot be checked" in r.extra["patient_leakage_check"] for r in table.records)
    assert all((r.height, r.width) == (120, 120) for r in table.records)
    rec = next(r for r in table.records if r.record_id == "mias-rois:test/Normal (1)")
    assert rec.image_path == "MIAS_ROIs/test/Normal (1).png" and rec.label == "normal"

    # Written and read back, the image path goes through the zip and decodes.
    table.write(tmp_path / "records")
    back = RecordsTable.read(tmp_path / "records")
    path = back.image_path(back.records[0], tmp_path / "records")
    assert str(path).startswith(str(mias_rois_zip.resolve()))
    assert read_image(path).shape == (120, 120)
    with zipfile.ZipFile(mias_rois_zip) as zf:
        assert hashlib.sha256(zf.read(back.records[0].image_path)).hexdigest() == back.records[0].content_hash


@pytest.mark.realdata
def test_extracted_folder_gives_the_same_records(mias_rois_zip: Path, tmp_path: Path):
    with zipfile.ZipFile(mias_rois_zip) as zf:
        zf.extractall(tmp_path)
    from_zip = read_mias_rois(mias_rois_zip, metadata_only=True)
    from_dir = read_mias_rois(tmp_path, metadata_only=True)
    key = [(r.record_id, r.image_path, r.content_hash, r.split, r.label) for r in from_zip.records]
    assert key == [(r.record_id, r.image_path, r.content_hash, r.split, r.label) for r in from_dir.records]


@pytest.mark.realdata
def test_damaged_release_is_quarantined(mias_rois_zip: Path, tmp_path: Path):
    with zipfile.ZipFile(mias_rois_zip) as zf:
        png = {n: zf.read(f"MIAS_ROIs/{n}") for n in
               ("train/Normal (1).png", "train/Tumor (1).png", "val/Normal (1).png", "test/Normal (1).png")}
    rgb = np.zeros((120, 120, 3), np.uint8)
    rgb[..., 2] = 200
    members = {
        **{f"MIAS_ROIs/{n}": b for n, b in png.items()},
        "MIAS_ROIs/test/Tumor (1).png": encode_png(rgb[..., 0]),  # fine: a second test ROI
        "MIAS_ROIs/test/Tumor (2).png": _rgb_png(rgb),  # colour -> rgb
        "MIAS_ROIs/test/Tumor (3).png": png["test/Normal (1).png"][:900],  # truncated
        "MIAS_ROIs/test/Normal (2).png": png["train/Normal (1).png"],  # same ROI in train and test
        "MIAS_ROIs/test/notes.png": png["val/Normal (1).png"],  # not in the released naming
        "MIAS_ROIs/trainval/Normal (1).png": png["train/Normal (1).png"],
        "MIAS_ROIs/trainval/Normal (2).png": png["val/Normal (1).png"],
        "MIAS_ROIs/trainval/Tumor (1).png": png["train/Tumor (1).png"],
        "MIAS_ROIs/trainval/Tumor (9).png": png["test/Normal (1).png"],  # a test ROI in trainval
        "__MACOSX/._junk": b"",
    }
    archive = tmp_path / "MIAS_ROIs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)

    table = read_mias_rois(archive)
    codes = sorted((q.code, Path(q.path).name) for q in table.quarantine)
    assert codes == [("duplicate_content", "Normal (2).png"), ("rgb", "Tumor (2).png"),
                     ("trainval_mismatch", "Tumor (9).png"), ("truncated", "Tumor (3).png"),
                     ("unexpected_file", "notes.png")]
    assert sorted(r.record_id for r in table.records) == [
        "mias-rois:test/Normal (1)", "mias-rois:test/Tumor (1)", "mias-rois:train/Normal (1)",
        "mias-rois:train/Tumor (1)", "mias-rois:val/Normal (1)"]
    s = table.summary()
    # The __MACOSX member is not dropped: it is listed as skipped, with its reason.
    assert s["read"] == s["used"] + s["quarantined"] + s["skipped"] == 11
    assert [(Path(e.path).name, e.reason) for e in table.skipped] == [("._junk", "hidden")]
    assert table.meta["trainval_check"]["equal_by_content"] is False


def _rgb_png(rgb: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", rgb)
    assert ok
    return buf.tobytes()


def test_missing_and_not_a_zip(tmp_path: Path):
    from mammoflow.errors import InputError

    with pytest.raises(InputError) as missing:
        read_mias_rois(tmp_path / "nope.zip")
    assert missing.value.code == "missing_file" and "fetch mias-rois" in missing.value.fix
    bad = tmp_path / "MIAS_ROIs.zip"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(InputError) as corrupt:
        read_mias_rois(bad)
    assert corrupt.value.code == "corrupt"
