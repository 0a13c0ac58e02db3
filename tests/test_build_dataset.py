"""``mammoflow build-dataset`` end to end on phantom records: shards, manifest, quarantine, resume, PNG export."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tests.gcs_emulator import gcs_bucket, gcs_emulator  # noqa: F401  (fixtures)

from mammoflow.cli import cli
from mammoflow.dataset.build import DatasetConfig, build_dataset, cut_examples, plan_examples
from mammoflow.dataset.rois import box_transform
from mammoflow.dataset.splits import SplitLeakError, check_plan, plan_splits
from mammoflow.errors import ConfigError
from mammoflow.records import Lesion, Record, RecordsTable


@pytest.fixture(scope="module")
def mias_records(tmp_path_factory) -> Path:
    """A records folder ingested from 8 MIAS-like phantoms (4 patients, 1024x1024, lesions with known centres)."""
    from mammoflow.sources.mias import read_mias
    from mammoflow.synth.phantoms import write_mias_dataset

    root = tmp_path_factory.mktemp("mias")
    write_mias_dataset(root / "images", n_images=8, seed=1, size=1024)
    table = read_mias(root=root / "images")
    assert not table.quarantine
    table.write(root / "records")
    return root / "records"


@pytest.fixture(scope="module")
def cbis_records(tmp_path_factory) -> Path:
    """A records folder ingested from CBIS-DDSM-like DICOM phantoms (ROI masks, official splits that leak)."""
    from mammoflow.sources.cbis_ddsm import read_cbis_ddsm
    from mammoflow.synth.phantoms import write_dicom_dataset

    root = tmp_path_factory.mktemp("cbis")
    write_dicom_dataset(root / "download", n_images=8, seed=0)
    table = read_cbis_ddsm(root=root / "download", salt="test-salt")
    assert not table.quarantine
    table.write(root / "records")
    return root / "records"


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _expected_roi_counts(records_dir: Path, plan, normal_per_image: int = 1) -> dict[str, Counter]:
    table = RecordsTable.read(records_dir)
    want: dict[str, Counter] = {}
    for rec in table.records:
        split = plan.split_of(rec.record_id)
        c = want.setdefault(split, Counter())
        if rec.label == "normal":
            c["normal"] += normal_per_image
        else:
            c["tumour"] += sum(1 for les in rec.lesions if les.center_row is not None)
    return want


ROI_CONFIG = {"mode": "roi", "roi_size": 120, "seed": 3, "shard_target_bytes": 20_000,
              "splits": {"ratios": [0.5, 0.25, 0.25], "seed": 0}}


def test_roi_dataset_counts_match_the_records_and_rerun_is_byte_identical(mias_records, tmp_path):
    out = tmp_path / "ds"
    first = build_dataset(mias_records, ROI_CONFIG, str(out))
    m = _manifest(out)
    assert m == first.manifest
    want = _expected_roi_counts(mias_records, first.plan)
    assert {s: dict(c) for s, c in m["counts"].items()} == {
        s: {k: want.get(s, Counter())[k] for k in ("normal", "tumour")} for s in m["counts"]}
    assert m["examples"] == sum(sum(c.values()) for c in want.values())
    assert m["inputs"]["records_quarantined"] == 0 and m["inputs"]["records_used"] == m["inputs"]["records_read"] == 8
    assert m["split_plan"]["sha256"] == first.plan.sha256()
    assert json.loads((out / "split_plan.json").read_text())["assignments"] == first.plan.assignments
    assert "| train |" in (out / "split_summary.md").read_text()
    assert m["config"]["roi_size"] == 120 and m["classes"] == ["normal", "tumour"]

    # The shards hold exactly the counted examples, each in its record's planned split.
    from mammoflow.dataset.shards import iter_examples, read_manifest, shard_uris

    assert read_manifest(str(out)) == m
    for split, per_class in m["counts"].items():
        stored = [ex for uri in shard_uris(m, str(out), split) for ex in iter_examples(uri)]
        assert Counter(ex.label_name for ex in stored) == Counter({c: n for c, n in per_class.items() if n})
        assert all(first.plan.split_of(ex.record_id) == split == ex.split for ex in stored)
        assert all(ex.image.shape == (120, 120) and ex.label == ["normal", "tumour"].index(ex.label_name)
                   for ex in stored)

    files = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    mtimes = {p: p.stat().st_mtime_ns for p in files if p.name != "manifest.json"}
    again = build_dataset(mias_records, ROI_CONFIG, str(out))
    assert again.manifest == first.manifest
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == files
    shard_files = [p for p in mtimes if p.suffix not in (".json", ".md", ".yaml", ".jsonl")]
    assert shard_files and all(p.stat().st_mtime_ns == mtimes[p] for p in shard_files)  # reused, not rewritten


def test_build_to_object_storage_matches_the_local_build(mias_records, tmp_path, request):
    from mammoflow import storage
    from mammoflow.dataset.shards import read_manifest

    local = build_dataset(mias_records, ROI_CONFIG, str(tmp_path / "ds"))
    remote_uri = request.getfixturevalue("gcs_bucket") + "/datasets/mias"  # a real GCS emulator on loopback
    remote = build_dataset(mias_records, ROI_CONFIG, remote_uri)
    assert remote.manifest == local.manifest == read_manifest(remote_uri)
    names = {u[len(remote_uri) + 1:] for u in storage.list(remote_uri)}
    assert {"manifest.json", "split_plan.json", "split_summary.md", "quarantine.jsonl"} <= names
    assert names == {p.relative_to(tmp_path / "ds").as_posix() for p in (tmp_path / "ds").rglob("*") if p.is_file()}


def test_roi_examples_are_centred_on_lesions_and_normals_avoid_them(mias_records):
    from mammoflow.io.images import read_image

    table = RecordsTable.read(mias_records)
    cfg = DatasetConfig(roi_size=120, seed=3)
    for rec in table.records:
        image = read_image(table.image_path(rec, mias_records))
        cuts = cut_examples(rec, image, cfg)
        for cut in cuts:
            assert cut.image.shape == (120, 120) and cut.image.dtype == np.uint8
            if "#lesion" in cut.example_id:
                # The lesion's own centre is the ROI centre (unless the box was shifted at a border) ...
                les = rec.lesions[int(cut.example_id.rsplit("lesion", 1)[1])]
                box = cut.extra["box"]
                r, c = box_transform(tuple(box), 120).apply_points(les.center_row, les.center_col)
                if box[0] not in (0, image.shape[0] - 120):
                    assert r == round(les.center_row) - les.center_row + 60
                if box[1] not in (0, image.shape[1] - 120):
                    assert c == round(les.center_col) - les.center_col + 60
                assert any(abs(r - lr) < 1e-3 and abs(c - lc) < 1e-3
                           for lr, lc in zip(cut.lesion_rows, cut.lesion_cols, strict=True))
                assert cut.mask is not None and cut.mask[int(round(r)), int(round(c))] == 255
                assert image[int(les.center_row), int(les.center_col)] > np.median(image[image > 0])  # phantoms: bright
            else:
                # ... and a normal ROI holds no lesion (MIAS normal images have none; the mask is empty).
                assert cut.lesion_rows == [] and (cut.mask is None or not cut.mask.any())
        # Normal ROIs are reproducible per record.
        assert [c.extra.get("box") for c in cut_examples(rec, image, cfg)] == [c.extra.get("box") for c in cuts]


def test_unreadable_images_are_quarantined_and_the_run_goes_on(mias_records, tmp_path, caplog):
    import shutil

    records = tmp_path / "records"
    shutil.copytree(mias_records, records)
    table = RecordsTable.read(records)
    image_root = Path(table.image_root) if Path(table.image_root).is_absolute() else records / table.image_root
    # A truncated copy of one image under a new name, referenced by one record.
    victim = table.records[0]
    data = (image_root / victim.image_path).read_bytes()
    (tmp_path / "broken.pgm").write_bytes(data[: len(data) // 3])
    victim.image_path = str(Path("..") / "broken.pgm") if not Path(table.image_root).is_absolute() else str(
        tmp_path / "broken.pgm")
    table.write(records)
    with caplog.at_level("WARNING", logger="mammoflow.dataset.build"):
        result = build_dataset(records, ROI_CONFIG, str(tmp_path / "ds"))
    assert [q.record_id for q in result.quarantine] == [victim.record_id]
    # The log line says which record, which file, what is wrong and the fix, as ingest's lines do.
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("quarantined")]
    assert victim.record_id in line and "broken.pgm" in line and "[truncated]" in line
    assert f"Fix: {result.quarantine[0].fix}" in line
    assert result.quarantine[0].code == "truncated"
    lines = (tmp_path / "ds" / "quarantine.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["record_id"] == victim.record_id
    m = result.manifest
    assert m["inputs"]["records_quarantined"] == 1 and m["inputs"]["records_used"] == 7
    assert m["examples"] > 0


def test_export_png_writes_rois_and_a_contact_sheet(mias_records, tmp_path):
    from mammoflow.io.images import read_image

    result = build_dataset(mias_records, ROI_CONFIG, str(tmp_path / "ds"), export_png=tmp_path / "png")
    pngs = sorted((tmp_path / "png").glob("*/*/*.png"))
    assert len(pngs) == result.manifest["examples"]
    per = Counter((p.parent.parent.name, p.parent.name) for p in pngs)
    assert per == Counter({(s, c): n for s, cs in result.manifest["counts"].items() for c, n in cs.items() if n})
    assert read_image(pngs[0]).shape == (120, 120)
    sheet = read_image(tmp_path / "png" / "contact_sheet.png")
    assert sheet.ndim == 2 and sheet.shape[0] >= 2 * 96  # one band per class


def test_whole_image_mode_keeps_the_official_split_and_regroups_leaking_patients(cbis_records, tmp_path):
    cfg = DatasetConfig.load("jaamour2023")
    cfg.image_size = 128
    result = build_dataset(cbis_records, cfg, str(tmp_path / "ds"))
    table = RecordsTable.read(cbis_records)
    check_plan(result.plan, table.records)
    # The phantom download has a patient in both official splits (as the real merged CBIS-DDSM split does).
    naive = {r.record_id: r.split for r in table.records}
    leaked = {r.patient_id for r in table.records if r.split == "test"} & {
        r.patient_id for r in table.records if r.split == "train"}
    assert leaked and naive != result.plan.assignments
    assert sorted(m["group"] for m in result.plan.moved) == sorted(leaked)
    m = result.manifest
    assert m["split_plan"]["moved_patients"] == len(leaked)
    assert sum(sum(c.values()) for c in m["counts"].values()) == len(table.records)  # one example per image
    assert all(r.split != "test" or result.plan.split_of(r.record_id) == "test" for r in table.records)

    from mammoflow.dataset.build import cut_examples
    from mammoflow.io.images import read_image

    rec = table.records[0]
    image = read_image(table.image_path(rec, cbis_records), expect_modality=None)
    masks = [read_image(Path(table.image_root) / les.mask_path, expect_modality=None) > 0 for les in rec.lesions]
    (cut,) = cut_examples(rec, image, cfg, masks)
    assert cut.image.shape == (128, 128) and cut.image.dtype == image.dtype
    # 640x480 -> 128x96 with 16 columns of padding on each side.
    assert (cut.image[:, :16] == 0).all() and (cut.image[:, -16:] == 0).all()
    assert cut.mask is not None and cut.mask.any() and len(cut.lesion_rows) == len(rec.lesions)
    for r, c in zip(cut.lesion_rows, cut.lesion_cols, strict=True):
        assert cut.mask[int(round(r)), int(round(c))] == 255


def test_lesion_crop_mode_five_folds(cbis_records, tmp_path):
    cfg = DatasetConfig.load("xi2018")
    cfg.roi_size = 64
    cfg.splits.k_folds = 2
    cfg.splits.ratios = (1.0, 0.0, 0.0)
    result = build_dataset(cbis_records, cfg, str(tmp_path / "ds"))
    table = RecordsTable.read(cbis_records)
    n_lesions = sum(len(r.lesions) for r in table.records)
    assert result.manifest["examples"] == n_lesions
    assert set(result.plan.folds) == {r.record_id for r in table.records}

    from mammoflow.io.images import read_image

    rec = next(r for r in table.records if r.lesions)
    image = read_image(table.image_path(rec, cbis_records), expect_modality=None)
    masks = [read_image(Path(table.image_root) / les.mask_path, expect_modality=None) > 0 for les in rec.lesions]
    cuts = cut_examples(rec, image, cfg, masks)
    assert len(cuts) == len(rec.lesions)
    for k, cut in enumerate(cuts):
        assert cut.image.shape == (64, 64)
        assert cut.example_id == f"{rec.record_id}#lesion{k}"
        # The whole lesion mask is inside the crop, with context around it.
        r0, c0, r1, c1 = cut.extra["box"]
        rows, cols = np.nonzero(masks[k])
        assert r0 <= rows.min() and rows.max() < r1 and c0 <= cols.min() and cols.max() < c1
        assert cut.mask is not None and cut.mask[32, 32] == 255


def test_plan_examples_follows_the_label_scheme():
    normal = Record(record_id="a", source="t", patient_id="p", image_path="a.png", label="normal",
                    height=512, width=512)
    abnormal = Record(record_id="b", source="t", patient_id="p", image_path="b.png", label="malignant",
                      height=512, width=512, lesions=[
                          Lesion("l0", label="benign", kind="CIRC", center_row=100, center_col=100, radius=10),
                          Lesion("l1", label="malignant", kind="CALC"),  # no coordinates (MIAS *NOTE 3*)
                      ])
    released = Record(record_id="c", source="t", patient_id="q", image_path="c.png", label="tumour",
                      height=120, width=120)
    binary = DatasetConfig(roi_size=120, normal_rois_per_image=2, lesion_free_rois_per_abnormal_image=1)
    specs, skipped = plan_examples(normal, binary)
    assert [(s.kind, s.index, s.class_name) for s in specs] == [("normal", 0, "normal"), ("normal", 1, "normal")]
    specs, skipped = plan_examples(abnormal, binary)
    assert [(s.kind, s.class_name) for s in specs] == [("lesion", "tumour"), ("normal", "normal")]
    assert skipped == {"lesion_without_geometry": 1}
    specs, _ = plan_examples(released, binary)
    assert [(s.kind, s.class_name) for s in specs] == [("image", "tumour")]
    bm = DatasetConfig(label_scheme="benign_malignant", lesion_free_rois_per_abnormal_image=1)
    specs, skipped = plan_examples(abnormal, bm)
    assert [(s.kind, s.class_name) for s in specs] == [("lesion", "benign")]
    assert skipped["label_not_in_scheme"] == 1  # a normal ROI has no class under benign/malignant
    assert plan_examples(released, bm)[0] == []
    calc_mass = DatasetConfig(mode="lesion_crop", label_scheme="calc_mass")
    specs, skipped = plan_examples(abnormal, calc_mass)
    assert [(s.kind, s.class_name) for s in specs] == [("lesion", "mass")] and skipped == {
        "lesion_without_geometry": 1}


def test_configs_and_presets():
    yu = DatasetConfig.load("yu2020")
    assert (yu.mode, yu.roi_size, yu.label_scheme, yu.splits.keep_existing) == ("roi", 120, "binary", True)
    assert tuple(yu.splits.ratios) == (0.6, 0.2, 0.2)
    ja = DatasetConfig.load("jaamour2023")
    assert (ja.mode, ja.output_size, ja.pad, ja.label_scheme) == ("whole_image", (512, 512), True, "benign_malignant")
    xi = DatasetConfig.load("xi2018")
    assert (xi.mode, xi.splits.k_folds) == ("lesion_crop", 5)
    crop = DatasetConfig.load({"mode": "whole_image", "image_size": [2048, 1376], "pad": False})
    assert crop.output_size == (2048, 1376)  # Jaamour et al.'s 2048x1376 input
    with pytest.raises(ConfigError, match="unknown key"):
        DatasetConfig.load({"roi_sise": 10})
    with pytest.raises(ConfigError, match="mode"):
        DatasetConfig.load({"mode": "patches"})


def test_build_refuses_another_dataset_in_the_same_folder(mias_records, tmp_path):
    build_dataset(mias_records, ROI_CONFIG, str(tmp_path / "ds"))
    other = {**ROI_CONFIG, "splits": {"ratios": [0.6, 0.2, 0.2], "seed": 9}}
    with pytest.raises(ConfigError, match="new --out"):
        build_dataset(mias_records, other, str(tmp_path / "ds"))


def test_a_crafted_leaking_plan_is_refused_before_building(mias_records):
    table = RecordsTable.read(mias_records)
    plan = plan_splits(table.records, ratios=(0.5, 0.25, 0.25))
    pair = [r for r in table.records if r.patient_id == table.records[0].patient_id]
    assert len(pair) == 2  # MIAS: consecutive images are the two breasts of one patient
    plan.assignments[pair[1].record_id] = "test" if plan.split_of(pair[0].record_id) != "test" else "train"
    with pytest.raises(SplitLeakError, match=pair[0].patient_id):
        check_plan(plan, table.records)


def test_cli_build_dataset(mias_records, tmp_path):
    config = tmp_path / "ds.yaml"
    config.write_text("mode: roi\nroi_size: 64\nsplits:\n  ratios: [0.5, 0.25, 0.25]\n")
    result = CliRunner().invoke(cli, ["build-dataset", "--records", str(mias_records), "--config", str(config),
                                      "--out", str(tmp_path / "ds")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["counts"] == _manifest(tmp_path / "ds")["counts"] and summary["examples"] > 0
    help_text = CliRunner().invoke(cli, ["build-dataset", "--help"]).output
    assert "--export-png" in help_text and "yu2020" in help_text


def test_cli_out_pointing_at_a_file_is_a_clean_error(mias_records, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    for out in (afile, afile / "sub"):
        result = CliRunner().invoke(cli, ["build-dataset", "--records", str(mias_records), "--config", "yu2020",
                                          "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert isinstance(result.exception, SystemExit)  # a usage error, not a NotADirectoryError traceback
        assert f"{afile} is a file, not a folder" in result.output and "Fix:" in result.output
    assert afile.read_text() == "keep me"


@pytest.mark.realdata
def test_yu_preset_on_the_released_rois_reproduces_the_released_split(mias_rois_zip, tmp_path):
    from mammoflow.sources.mias_rois import read_mias_rois

    read_mias_rois(mias_rois_zip).write(tmp_path / "records")
    result = build_dataset(tmp_path / "records", "yu2020", str(tmp_path / "ds"))
    assert result.manifest["counts"] == {"train": {"normal": 125, "tumour": 72}, "val": {"normal": 41, "tumour": 24},
                                         "test": {"normal": 41, "tumour": 23}}
    assert result.manifest["inputs"]["records_quarantined"] == 0


def test_library_refuses_a_file_as_the_output_folder(phantom_dataset, tmp_path) -> None:
    from mammoflow.dataset.build import build_dataset
    from mammoflow.errors import ConfigError

    blocker = tmp_path / "taken.txt"
    blocker.write_text("not a folder")
    for out in (blocker, blocker / "dataset"):
        with pytest.raises(ConfigError, match="not a folder"):
            build_dataset(phantom_dataset.parent / "pre", "yu2020", str(out))
    assert blocker.read_text() == "not a folder"
