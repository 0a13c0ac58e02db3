"""`mammoflow preprocess` on small records folders: outputs, moved lesions, quarantine, resume, DICOM photometrics."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from mammoflow.cli import cli
from mammoflow.errors import ConfigError
from mammoflow.io.images import encode_png, read_image, write_pgm, write_png
from mammoflow.preprocess.run import preprocess_records, safe_name
from mammoflow.records import Lesion, QuarantineEntry, Record, RecordsTable


def mammogram(h: int = 160, w: int = 120, dtype: type = np.uint8, right: bool = False, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[:h, :w]
    d = ((rr - h / 2) / (0.45 * h)) ** 2 + (cc / (0.75 * w)) ** 2
    img = np.where(d < 1, 0.35 + 0.4 * (1 - d), 0.03) + rng.normal(0, 0.01, (h, w))
    img[4:14, w - 24:w - 6] = 0.95  # burned-in label
    top = np.iinfo(dtype).max
    img = np.clip(img * top, 0, top).astype(dtype)
    return img[:, ::-1].copy() if right else img


def disk(shape: tuple[int, int], row: float, col: float, radius: float) -> np.ndarray:
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return (rr - row) ** 2 + (cc - col) ** 2 <= radius**2


def run(*args: str) -> object:
    return CliRunner().invoke(cli, ["preprocess", *args], catch_exceptions=False)


@pytest.fixture()
def records_dir(tmp_path: Path) -> Path:
    """Three records (8-bit PNG with a lesion and its mask, 16-bit PGM, a truncated PNG) plus one entry
    already in the input quarantine. Images live under ``raw/``, the table's image_root."""
    folder = tmp_path / "records"
    raw = folder / "raw"
    img = mammogram(right=True)
    lesion = disk(img.shape, 90, 95, 6)
    img[lesion] = 250  # a bright lesion to follow
    write_png(raw / "a.png", img)
    write_png(raw / "masks" / "a_1.png", lesion.astype(np.uint8) * 255)
    write_pgm(raw / "b.pgm", mammogram(dtype=np.uint16, seed=1))
    (raw / "c.png").write_bytes(encode_png(mammogram())[:200])  # truncated
    records = [
        Record("demo:a/1", "demo", "p1", "a.png", label="benign", laterality="R", height=160, width=120,
               lesions=[Lesion("1", "benign", "mass", 90.0, 95.0, 6.0, mask_path="masks/a_1.png")]),
        Record("demo:b", "demo", "p2", "b.pgm", label="normal", laterality="L"),
        Record("demo:c", "demo", "p3", "c.png", label="normal"),
    ]
    old = QuarantineEntry(path="raw/d.png", code="unknown_label", problem="label 'X'", fix="use a known label",
                          source="demo", record_id="demo:d")
    RecordsTable(records, [old], image_root="raw", source="demo").write(folder)
    return folder


def test_preprocess_writes_images_records_and_quarantine(records_dir: Path, tmp_path: Path) -> None:
    out, view = tmp_path / "out", tmp_path / "view"
    result = run("--records", str(records_dir), "--config", "jaamour2023_breast", "--out", str(out),
                 "--export-png", str(view))
    assert result.exit_code == 0, result.output
    assert "preprocessed 2, reused 0, quarantined 1 new (2 in total)" in result.output

    table = RecordsTable.read(out)
    assert [r.record_id for r in table.records] == ["demo:a/1", "demo:b"]
    assert {q.record_id: q.code for q in table.quarantine} == {"demo:d": "unknown_label", "demo:c": "truncated"}
    summary = json.loads((out / "ingest_summary.json").read_text())
    assert summary["read"] == 4 and summary["used"] == 2 and summary["quarantined"] == 2

    a = table.records[0]
    image = read_image(table.image_path(a, out))
    assert image.shape == (512, 512) and image.dtype == np.uint8
    assert (a.height, a.width) == (512, 512)
    assert a.extra["preprocess"] == json.loads((out / "preprocess_summary.json").read_text())["config_hash"]
    assert (out / "preprocess_config.yaml").read_text().count("name:") == 7
    # The lesion moved with the image: its centre is on the bright disk and on the moved mask.
    les = a.lesions[0]
    assert les.radius is not None and les.radius > 6.0  # the crop was enlarged to 512
    r, c = round(les.center_row), round(les.center_col)
    assert image[r, c] > 240
    mask = read_image(out / les.mask_path) > 0
    rr, cc = np.nonzero(mask)
    assert abs(rr.mean() - les.center_row) < 1 and abs(cc.mean() - les.center_col) < 1
    # The breast was mirrored to the left, as the transform stored in the record says.
    matrix = np.array(a.extra["preprocess_transform"])
    assert matrix[1, 1] < 0

    b = table.records[1]
    assert read_image(out / b.image_path).dtype == np.uint8  # the 16-bit PGM went through the 8-bit chain
    views = sorted(p.name for p in view.glob("*.png"))
    assert views == sorted(Path(r.image_path).name for r in table.records)
    coloured = cv2.imread(str(view / Path(a.image_path).name), cv2.IMREAD_UNCHANGED)
    assert coloured.ndim == 3 and (coloured[..., 2].astype(int) - coloured[..., 1] > 100).any()  # red outline


def test_preprocess_resumes_without_redoing(records_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = preprocess_records(records_dir, "yu2020", out)
    assert (first.processed, first.reused, first.quarantined_new) == (2, 0, 1)
    images = sorted((out / "images").glob("*.png"))
    stamps = {p: p.stat().st_mtime_ns for p in images}

    again = preprocess_records(records_dir, "yu2020", out)
    assert (again.processed, again.reused, again.quarantined_new) == (0, 2, 1)
    assert {p: p.stat().st_mtime_ns for p in images} == stamps
    assert [r.record_id for r in RecordsTable.read(out).records] == ["demo:a/1", "demo:b"]

    # Another config (allowed with overwrite) redoes everything, and so does a changed input image.
    other = preprocess_records(records_dir, "minimal", out, overwrite=True)
    assert (other.processed, other.reused) == (2, 0)
    write_pgm(records_dir / "raw" / "b.pgm", mammogram(dtype=np.uint16, seed=2))
    changed = preprocess_records(records_dir, "minimal", out)
    assert (changed.processed, changed.reused) == (1, 1)


def test_another_config_into_the_same_out_is_refused_unless_overwrite(records_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run("--records", str(records_dir), "--config", "yu2020", "--out", str(out)).exit_code == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    with pytest.raises(ConfigError) as refused:
        preprocess_records(records_dir, "jaamour2023_breast", out)
    assert str(out) in str(refused.value) and "--overwrite" in str(refused.value) and "another --out" in str(
        refused.value)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    result = CliRunner().invoke(cli, ["preprocess", "--records", str(records_dir), "--config", "jaamour2023_breast",
                                      "--out", str(out)])
    assert result.exit_code != 0 and isinstance(result.exception, ConfigError)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    # The same config resumes, as before.
    assert "reused 2" in run("--records", str(records_dir), "--config", "yu2020", "--out", str(out)).output
    replaced = run("--records", str(records_dir), "--config", "jaamour2023_breast", "--out", str(out), "--overwrite")
    assert replaced.exit_code == 0 and "preprocessed 2, reused 0" in replaced.output
    assert all(read_image(out / r.image_path).shape == (512, 512) for r in RecordsTable.read(out).records)


def test_a_records_folder_not_written_by_preprocess_is_refused_as_out(records_dir: Path, tmp_path: Path) -> None:
    """Pointing --out at an ingest output must not replace its records.jsonl."""
    victim = tmp_path / "ingested"
    RecordsTable([Record("other:x", "other", "p9", "x.png")], image_root=".").write(victim)
    original = (victim / "records.jsonl").read_bytes()
    with pytest.raises(ConfigError, match="records.jsonl"):
        preprocess_records(records_dir, "yu2020", victim)
    assert (victim / "records.jsonl").read_bytes() == original
    assert not (victim / "images").exists() and not (victim / "preprocess_config.yaml").exists()
    assert preprocess_records(records_dir, "yu2020", victim, overwrite=True).processed == 2
    assert [r.record_id for r in RecordsTable.read(victim).records] == ["demo:a/1", "demo:b"]


def test_outputs_are_readable_by_others_and_quarantine_lines_say_path_and_fix(
        records_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out, view = tmp_path / "out", tmp_path / "view"
    with caplog.at_level("WARNING", logger="mammoflow.preprocess.run"):
        preprocess_records(records_dir, "yu2020", out, view)
    (line,) = [r.getMessage() for r in caplog.records if "quarantined" in r.getMessage()]
    assert "demo:c" in line and str(records_dir / "raw" / "c.png") in line and "truncated" in line
    assert "Fix: " in line and line.split("Fix: ")[1]
    files = [*view.glob("*.png"), *(out / "images").glob("*.png"), *(out / "masks").glob("*.png")]
    assert len(files) == 5
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o644"}


def test_yu2020_keeps_the_frame_and_removes_the_label(records_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    preprocess_records(records_dir, "yu2020", out)
    a = RecordsTable.read(out).records[0]
    image = read_image(out / a.image_path)
    assert image.shape == (160, 120)
    assert not image[4:14, 6:24].any()  # the label (top left, since this breast faces right) is removed
    assert (a.lesions[0].center_row, a.lesions[0].center_col, a.lesions[0].radius) == pytest.approx((90, 95, 6))


def test_strict_and_nothing_usable_exit_non_zero(records_dir: Path, tmp_path: Path) -> None:
    strict = run("--records", str(records_dir), "--config", "minimal", "--out", str(tmp_path / "o1"), "--strict")
    assert strict.exit_code != 0 and "--strict" in strict.output

    bad = tmp_path / "bad"
    (bad / "x.png").parent.mkdir(parents=True)
    (bad / "x.png").write_bytes(b"not an image")
    RecordsTable([Record("bad:x", "bad", "p", "x.png")], image_root=".").write(bad)
    result = run("--records", str(bad), "--config", "minimal", "--out", str(tmp_path / "o2"))
    assert result.exit_code != 0 and "no usable record" in result.output
    assert RecordsTable.read(tmp_path / "o2").quarantine[0].code == "format"


def test_config_errors_are_clear(records_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "float.yaml"
    cfg.write_text("output_dtype: float32\nsteps: [normalize]\n")
    with pytest.raises(Exception, match="float32 cannot be written"):
        preprocess_records(records_dir, str(cfg), tmp_path / "out")
    with pytest.raises(Exception, match="output folder is the input"):
        preprocess_records(records_dir, "minimal", records_dir)


def test_workers_give_the_same_result(records_dir: Path, tmp_path: Path) -> None:
    preprocess_records(records_dir, "xi2018", tmp_path / "one", workers=1)
    summary = preprocess_records(records_dir, "xi2018", tmp_path / "two", workers=2)
    assert summary.processed == 2 and summary.quarantined_new == 1
    one, two = RecordsTable.read(tmp_path / "one"), RecordsTable.read(tmp_path / "two")
    assert [r.to_dict() for r in one.records] == [r.to_dict() for r in two.records]
    for rec in one.records:
        assert np.array_equal(read_image(tmp_path / "one" / rec.image_path),
                              read_image(tmp_path / "two" / rec.image_path))


def test_safe_names_do_not_collide() -> None:
    names = {safe_name(i) for i in ("a:b", "a_b", "a/b", "mias-rois:test/Normal (1)")}
    assert len(names) == 4
    assert all("/" not in n and " " not in n and ":" not in n for n in names)


def test_monochrome1_and_monochrome2_preprocess_identically(tmp_path: Path) -> None:
    from mammoflow.synth.dicom_writer import write_dicom

    folder = tmp_path / "dicom"
    img = mammogram(h=200, w=150, dtype=np.uint16, right=True) >> 4  # 12-bit data
    records = []
    for photometric in ("MONOCHROME1", "MONOCHROME2"):
        name = f"{photometric.lower()}.dcm"
        write_dicom(folder / name, img, patient_id="PID-1", patient_name="Doe^Jane", laterality="R", view="CC",
                    photometric=photometric, bits_stored=12)
        records.append(Record(f"dicom:{photometric}", "dicom", "p-1", name, laterality="R", view="CC"))
    RecordsTable(records, image_root=".").write(folder)
    out = tmp_path / "out"
    for preset in ("yu2020", "jaamour2023_breast"):
        summary = preprocess_records(folder, preset, out / preset)
        assert summary.processed == 2, preset
        m1, m2 = (read_image(out / preset / r.image_path) for r in RecordsTable.read(out / preset).records)
        assert np.array_equal(m1, m2), preset
        assert m1.any()
    # No identifier leaves the DICOM reader.
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".md", ".yaml"):
            assert "Doe" not in path.read_text() and "PID-1" not in path.read_text()


@pytest.mark.realdata
def test_real_rois_through_a_zip_image_root(mias_rois_zip: Path, tmp_path: Path) -> None:
    """Yu's released ROIs, read straight from the zip: `none` copies the pixels, `yu2020` keeps their 120x120."""
    import os

    folder = tmp_path / "rois"
    folder.mkdir()
    names = ["MIAS_ROIs/test/Normal (1).png", "MIAS_ROIs/test/Tumor (1).png", "MIAS_ROIs/val/Tumor (2).png"]
    records = [Record(f"mias-rois:{n}", "mias-rois", f"p{i}", n) for i, n in enumerate(names)]
    RecordsTable(records, image_root=os.path.relpath(mias_rois_zip, folder)).write(folder)
    table = RecordsTable.read(folder)

    assert preprocess_records(folder, "none", tmp_path / "none").processed == 3
    for rec, out_rec in zip(table.records, RecordsTable.read(tmp_path / "none").records, strict=True):
        original = read_image(table.image_path(rec, folder))
        assert original.shape == (120, 120)
        assert np.array_equal(read_image(tmp_path / "none" / out_rec.image_path), original)
        assert (out_rec.height, out_rec.width) == (120, 120)

    assert preprocess_records(folder, "yu2020", tmp_path / "yu").processed == 3
    for out_rec in RecordsTable.read(tmp_path / "yu").records:
        assert read_image(tmp_path / "yu" / out_rec.image_path).shape == (120, 120)


def test_preprocess_names_inputs_by_record_id_when_paths_are_pseudonymised(records_dir: Path, tmp_path: Path,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    """Folders named after patients: with paths pseudonymised at ingest, the preprocess output (its quarantine,
    carried over from ingest or new) and its log never hold a real path, only record ids."""
    import json
    import logging

    from mammoflow.preprocess.run import preprocess_records

    table = RecordsTable.read(records_dir)
    table.meta["paths_pseudonymised"] = True
    table.write(records_dir)
    with caplog.at_level(logging.INFO):
        preprocess_records(records_dir, "minimal", tmp_path / "out")
    written = [json.loads(line) for line in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert {q["record_id"] for q in written} == {"demo:c", "demo:d"}  # the truncated image and the carried entry
    assert all(q["path"] == q["record_id"] for q in written)
    assert "c.png" not in caplog.text and "d.png" not in caplog.text and "demo:c" in caplog.text
