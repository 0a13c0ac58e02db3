"""Incremental ingest: only new files are read, nothing new is explicit, no patient ever changes split."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from tests.test_retrain_support import deliver_phantoms, phantom_batch

from mammoflow.dataset.splits import SplitConfig, check_plan
from mammoflow.records import RecordsTable
from mammoflow.retrain.ingest import (
    IngestDelta,
    incremental_ingest,
    read_plan,
    scan_changes,
    split_of_patients,
)
from mammoflow.sources import SourceOptions, read_source

SPLITS = SplitConfig(ratios=(0.5, 0.25, 0.25), seed=3)


@pytest.fixture(scope="module")
def batches(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("phantoms")
    return {"first": phantom_batch(root, 12, seed=21), "more": phantom_batch(root, 6, seed=22)}


@pytest.fixture
def site(tmp_path, batches) -> dict:
    """A watched folder holding mdb001-mdb011 (mdb011's patient has only one breast so far) and a first ingest."""
    watched = tmp_path / "watched"
    deliver_phantoms(watched, batches["first"], 1)
    (watched / "mdb012.pgm").unlink()
    info = watched / "Info.txt"
    info.write_text("\n".join(line for line in info.read_text().splitlines() if not line.startswith("mdb012")) + "\n")
    opts = SourceOptions(root=watched)
    delta = incremental_ingest("mias", opts, None, tmp_path / "r1", split_config=SPLITS)
    return {"watched": watched, "opts": opts, "first": delta, "r1": tmp_path / "r1", "tmp": tmp_path}


def _same_size_corruption(path: Path) -> None:
    """Overwrite a file's first bytes, keeping its size and mtime (what a stat-based check cannot see)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[:2] = b"XX"  # no longer a PGM
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_first_ingest_plans_patient_splits(site):
    d = site["first"]
    assert (d.mode, d.new_records, d.total_records, d.quarantined_new) == ("first", 11, 11, 0)
    table = RecordsTable.read(site["r1"])
    plan = read_plan(site["r1"])
    check_plan(plan, table.records)
    assert all(r.split == plan.split_of(r.record_id) for r in table.records)
    assert all("source_split" in r.extra for r in table.records)
    assert set(split_of_patients(table.records).values()) <= {"train", "val", "test"}
    saved = json.loads((site["r1"] / "ingest_delta.json").read_text())
    assert saved["new_records"] == 11 and saved["nothing_new"] is False
    assert json.loads((site["r1"] / "file_index.json").read_text())["files"].keys() == \
        {f"mdb{i:03d}.pgm" for i in range(1, 12)} | {"Info.txt"}


def test_nothing_new_is_an_explicit_result(site):
    scan = scan_changes(site["opts"], site["r1"])
    assert scan.nothing_changed and scan.hashed == 0 and scan.hash_reused == 12
    d = incremental_ingest("mias", site["opts"], site["r1"], site["tmp"] / "r2", scan=scan)
    assert d.nothing_new and d.new_records == 0 and d.carried_records == 11
    assert IngestDelta.read(site["tmp"] / "r2").nothing_new
    assert json.loads((site["tmp"] / "r2" / "ingest_delta.json").read_text())["nothing_new"] is True
    assert [r.record_id for r in RecordsTable.read(site["tmp"] / "r2").records] == \
        [r.record_id for r in RecordsTable.read(site["r1"]).records]


def test_only_new_files_are_read_and_nobody_moves(site, batches):
    before = {r.record_id: r for r in RecordsTable.read(site["r1"]).records}
    old_patients = split_of_patients(before.values())
    # A carried image is corrupted behind the scan's back (same size and mtime): if the ingest opened it, the record
    # would be quarantined; an incremental ingest must not notice it.
    _same_size_corruption(site["watched"] / "mdb003.pgm")
    shutil.copyfile(batches["first"] / "mdb012.pgm", site["watched"] / "mdb012.pgm")  # mdb011's patient, other side
    with open(site["watched"] / "Info.txt", "a") as fh:
        fh.writelines(line + "\n" for line in (batches["first"] / "Info.txt").read_text().splitlines()
                      if line.startswith("mdb012"))
    added = deliver_phantoms(site["watched"], batches["more"], 13)
    d = incremental_ingest("mias", site["opts"], site["r1"], site["tmp"] / "r2", freeze_test=True)
    assert d.mode == "incremental"
    assert sorted(d.new_record_ids) == ["mias:mdb012"] + [f"mias:{ref}" for ref in added]
    assert d.changed_records == 0 and d.removed_records == 0 and d.carried_records == 11
    assert d.files["hashed"] == 1 + 1 + len(added)  # Info.txt, mdb012 and the delivery; nothing else was opened
    table = RecordsTable.read(site["tmp"] / "r2")
    by_id = {r.record_id: r for r in table.records}
    assert by_id["mias:mdb003"].content_hash == before["mias:mdb003"].content_hash
    assert split_of_patients(table.records).items() >= old_patients.items()  # no existing patient moved
    assert by_id["mias:mdb012"].split == by_id["mias:mdb011"].split  # a known patient's new image joins them
    new_patients = {by_id[i].patient_id for i in d.new_record_ids} - set(old_patients)
    assert new_patients and all(split_of_patients(table.records)[p] != "test" for p in new_patients)  # frozen
    assert d.new_patients == len(new_patients)
    check_plan(read_plan(site["tmp"] / "r2"), table.records)

    # rehash: the corrupted file is found, read again and quarantined; its record leaves the table.
    d3 = incremental_ingest("mias", site["opts"], site["tmp"] / "r2", site["tmp"] / "r3", rehash=True)
    assert d3.removed_record_ids == ["mias:mdb003"] and d3.quarantined_new == 1
    assert d3.files["hashed"] == d3.files["scanned"]
    entry = RecordsTable.read(site["tmp"] / "r3").quarantine[-1]
    assert entry.record_id == "mias:mdb003" and entry.path.startswith(str(site["watched"]))


def test_a_changed_annotation_rereads_that_record_only(site):
    info = site["watched"] / "Info.txt"
    table = RecordsTable.read(site["r1"])
    target = next(r for r in table.records if r.label in ("benign", "malignant"))
    ref = target.record_id.split(":")[1]
    flip = (" B ", " M ") if target.label == "benign" else (" M ", " B ")
    lines = [(line.replace(*flip) if line.startswith(ref) else line) for line in info.read_text().splitlines()]
    info.write_text("\n".join(lines) + "\n")
    d = incremental_ingest("mias", site["opts"], site["r1"], site["tmp"] / "r2")
    assert d.changed_record_ids == [target.record_id] and d.new_records == 0 and d.carried_records == 10
    assert d.files["hashed"] == 1  # Info.txt only
    after = {r.record_id: r for r in RecordsTable.read(site["tmp"] / "r2").records}
    assert after[target.record_id].label != target.label and after[target.record_id].split == target.split


def test_a_copy_of_a_known_image_is_quarantined(site):
    shutil.copyfile(site["watched"] / "mdb001.pgm", site["watched"] / "mdb041.pgm")
    first_line = next(line for line in (site["watched"] / "Info.txt").read_text().splitlines()
                      if line.startswith("mdb001"))
    with open(site["watched"] / "Info.txt", "a") as fh:
        fh.write("mdb041" + first_line[6:] + "\n")
    d = incremental_ingest("mias", site["opts"], site["r1"], site["tmp"] / "r2")
    assert d.new_records == 0 and d.quarantined_new == 1 and d.quarantined_by_code == {"duplicate_image": 1}
    assert d.quarantine_rate == 1.0
    q = RecordsTable.read(site["tmp"] / "r2").quarantine
    assert [(e.record_id, e.code) for e in q] == [("mias:mdb041", "duplicate_image")]
    assert "mias:mdb001" in q[0].problem


def test_previous_folder_from_a_plain_ingest(site, tmp_path):
    plain = tmp_path / "plain"
    read_source("mias", site["opts"]).write(plain)  # `mammoflow ingest`: no file index, no split plan
    d = incremental_ingest("mias", site["opts"], plain, tmp_path / "next", split_config=SPLITS)
    assert d.nothing_new and d.carried_records == 11
    assert d.files["hashed"] == 12  # no index to reuse: every file is hashed once, none decoded
    check_plan(read_plan(tmp_path / "next"), RecordsTable.read(tmp_path / "next").records)
