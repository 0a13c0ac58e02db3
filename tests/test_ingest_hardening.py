"""Issue 13 for ingest: every input accounted for, any file name, duplicates, conflicting patients, malformed CSVs,
the salt, and records folders written all or nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mammoflow.commands.ingest import command
from mammoflow.errors import ConfigError, InputError, MammoflowError
from mammoflow.io.dicom import pseudonym
from mammoflow.records import COMPLETE_FILE, RecordsTable, require_complete
from mammoflow.sources import SourceOptions, resume
from mammoflow.sources.dicom_dir import read_dicom_dir
from test_sources_dicom_dir import _write  # tests/ is on sys.path (pytest prepend mode)

SALT = "site-secret"
BAD_NAME = os.fsdecode(b"caf\xe9.dcm")  # Latin-1 bytes: not valid UTF-8


def _write_as(path: Path, seed: int) -> None:
    """A DICOM file at ``path``, whose name may not be UTF-8 (written under a plain name, then renamed)."""
    plain = path.parent.parent / f"plain-{seed}.dcm" if not path.parent.exists() else path.parent / f"plain{seed}.dcm"
    _write(plain, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    plain.rename(path)


def _ingest(args: list[str], salt: str | None = SALT):
    env = {"MAMMOFLOW_SALT": salt} if salt else {}
    return CliRunner().invoke(command, args, env=env)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real console entry point (cli.main), as a user runs it."""
    return subprocess.run([sys.executable, "-c", "import sys; from mammoflow.cli import main; sys.exit(main())", *args],
                          text=True,
                          capture_output=True, timeout=300, env={**os.environ, **(env or {})})


# ------------------------------------------------------------------------------------------------ accounting


def test_every_skipped_input_is_listed_with_its_reason(tmp_path: Path):
    root = tmp_path / "site"
    _write(root / "a.dcm", 1)
    _write(root / ".hidden.dcm", 2)  # a hidden file
    _write(root / ".cache" / "b.dcm", 3)  # a hidden folder: one entry, not walked
    (root / "README.txt").write_text("export notes")
    (root / "DICOMDIR").write_bytes(b"x")
    _write(tmp_path / "elsewhere" / "c.dcm", 4)
    (root / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    out = tmp_path / "records"
    result = _ingest(["--source", "dicom-dir", "--root", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "read 6, used 1, quarantined 0, skipped 5 (hidden 2, linked_folder 1, sidecar 2)" in result.output
    summary = json.loads((out / "ingest_summary.json").read_text())
    assert summary["read"] == summary["used"] + summary["quarantined"] + summary["skipped"] == 6
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert {(Path(s["path"]).name, s["reason"]) for s in skipped} == {
        (".hidden.dcm", "hidden"), (".cache", "hidden"), ("README.txt", "sidecar"), ("DICOMDIR", "sidecar"),
        ("linked", "linked_folder")}
    assert all(s["note"] for s in skipped)
    report = (out / "quarantine.md").read_text()
    assert "## Skipped" in report and "linked_folder" in report and "skipped 5" in report
    assert [e.reason for e in RecordsTable.read(out).skipped] == [s["reason"] for s in skipped]


def test_cbis_folders_without_a_csv_row_are_listed(tmp_path: Path):
    from mammoflow.sources.cbis_ddsm import read_cbis_ddsm
    from mammoflow.synth import phantoms

    root = tmp_path / "cbis"
    truth = phantoms.write_dicom_dataset(root, n_images=4, seed=2, size=(160, 120))
    case = Path(truth["images"][0]["file"]).parts[1]
    orphan = root / "CBIS-DDSM" / case.replace("_P_", "_P_9", 1)
    (root / "CBIS-DDSM" / case).rename(orphan)  # a case folder no row describes (and its row loses its image)
    table = read_cbis_ddsm([], root=root)
    s = table.summary()
    assert s["read"] == s["used"] + s["quarantined"] + s["skipped"]
    assert ("CBIS-DDSM/" + orphan.name, "no_csv_row") in {(e.path, e.reason) for e in table.skipped}


# ------------------------------------------------------------------------------------------------ file names


def test_a_file_name_that_is_not_utf8_is_quarantined_and_never_crashes(tmp_path: Path):
    root = tmp_path / "site"
    _write(root / "a.dcm", 1)
    _write_as(root / BAD_NAME, 2)
    _write_as(root / os.fsdecode(b"dossier-\xff") / "b.dcm", 3)  # a folder so named: one entry
    opts = SourceOptions(root=root, salt=SALT)
    assert len(resume.input_fingerprint("dicom-dir", opts)) == 64  # the resume fingerprint hashes bytes

    out = tmp_path / "records"
    result = _ingest(["--source", "dicom-dir", "--root", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "read 3, used 1, quarantined 2 (bad_file_name 2)" in result.output
    entries = [json.loads(line) for line in (out / "quarantine.jsonl").read_text(encoding="utf-8").splitlines()]
    shown = sorted(e["path"] for e in entries)
    assert shown[0].endswith("caf\\xe9.dcm") and shown[1].endswith("dossier-\\xff")
    assert all(e["code"] == "bad_file_name" and "rename" in e["fix"] for e in entries)
    assert "caf\\xe9.dcm" in (out / "quarantine.md").read_text(encoding="utf-8")
    # A re-run on the same inputs resumes (the fingerprint is stable), reading nothing again.
    again = _ingest(["--source", "dicom-dir", "--root", str(root), "--out", str(out)])
    assert again.exit_code == 0 and "read 3, used 1" in again.output
    # Path pseudonyms are made of the escaped name: no crash, and the name reaches no record id.
    hidden = _ingest(["--source", "dicom-dir", "--root", str(root), "--pseudonymise-paths", "--out",
                      str(tmp_path / "pseudo")])
    assert hidden.exit_code == 0, hidden.output
    ids = [q.record_id for q in RecordsTable.read(tmp_path / "pseudo").quarantine]
    assert len(ids) == 2 and all(i.startswith("dicom-dir:img-") for i in ids)


def test_retrain_scan_lists_a_file_name_that_is_not_utf8(tmp_path: Path):
    from mammoflow.retrain.ingest import incremental_ingest

    root = tmp_path / "site"
    _write(root / "a.dcm", 1)
    _write(root / "b.dcm", 2, patient="PAT-0002", name="Roe^Mary")
    first = incremental_ingest("dicom-dir", SourceOptions(root=root, salt=SALT), None, tmp_path / "r1")
    assert first.total_records == 2
    _write_as(root / BAD_NAME, 3)
    delta = incremental_ingest("dicom-dir", SourceOptions(root=root, salt=SALT), tmp_path / "r1", tmp_path / "r2")
    assert delta.quarantined_by_code == {"bad_file_name": 1} and delta.total_records == 2


# ------------------------------------------------------------------------------------------------ labels CSV


def test_labels_csv_paths_are_normalised_before_the_outside_root_check(tmp_path: Path):
    root = tmp_path / "site"
    _write(root / "b.dcm", 1)
    _write(root / "c.dcm", 2)
    _write(root / "d.dcm", 3)
    (tmp_path / "x.dcm").write_bytes(b"")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n./a/../b.dcm,benign\n../x.dcm,malignant\n"
                      f"{tmp_path / 'x.dcm'},benign\n{root / 'c.dcm'},malignant\nsub/./../d.dcm,normal\n")
    table = read_dicom_dir(root, labels=labels, salt=SALT)
    assert {r.image_path: r.label for r in table.records} == {"b.dcm": "benign", "c.dcm": "malignant",
                                                              "d.dcm": "normal"}
    refused = [q for q in table.quarantine if "outside --root" in q.problem]
    assert [q.code for q in refused] == ["bad_annotation", "bad_annotation"]  # ../x.dcm and the absolute path


def test_an_unclosed_quote_is_an_error_naming_the_line_not_a_shorter_table(tmp_path: Path):
    root = tmp_path / "site"
    for i in range(4):
        _write(root / f"{i}.dcm", i)
    labels = tmp_path / "labels.csv"
    labels.write_text('path,label\n0.dcm,benign\n1.dcm,"malignant\n2.dcm,normal\n3.dcm,benign\n')
    with pytest.raises(InputError) as err:
        read_dicom_dir(root, labels=labels, salt=SALT)
    assert err.value.code == "bad_csv" and err.value.path == str(labels)
    assert "line 3" in err.value.problem and "never closed" in err.value.problem and "quote" in err.value.fix
    out = tmp_path / "records"
    done = _cli("ingest", "--source", "dicom-dir", "--root", str(root), "--labels", str(labels), "--out", str(out),
                env={"MAMMOFLOW_SALT": SALT})
    assert done.returncode == 1 and "Traceback" not in done.stderr and "line 3" in done.stderr + done.stdout
    assert not out.exists()  # an error for the job: no partial records folder


def test_a_column_named_twice_is_an_error(tmp_path: Path):
    root = tmp_path / "site"
    _write(root / "a.dcm", 1)
    _write(root / "b.dcm", 2)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label,Path\na.dcm,benign,b.dcm\n")
    with pytest.raises(InputError) as err:
        read_dicom_dir(root, labels=labels, salt=SALT)
    assert err.value.code == "bad_csv" and "'path' twice" in err.value.problem and "line 1" in err.value.problem


def test_cbis_description_csv_unclosed_quote_and_duplicate_column(tmp_path: Path):
    from mammoflow.sources.cbis_ddsm import read_cbis_ddsm
    from test_sources_cbis import HEADER, _row

    path = tmp_path / "mass_case_description_train_set.csv"
    rows = [_row(), _row(patient="P_00002"), _row(patient="P_00003")]
    path.write_text("\n".join([HEADER, rows[0], rows[1].replace(",OVAL,", ',"OVAL,', 1), rows[2]]) + "\n")
    with pytest.raises(InputError) as err:
        read_cbis_ddsm([path], metadata_only=True)
    assert err.value.code == "bad_csv" and "line 5" in err.value.problem and "quote" in err.value.problem
    path.write_text("\n".join([HEADER.replace("breast_density", "breast density,breast_density"), _row()]) + "\n")
    with pytest.raises(InputError) as err:
        read_cbis_ddsm([path], metadata_only=True)
    assert err.value.code == "bad_csv" and "'breast density' twice" in err.value.problem


# ------------------------------------------------------------------------------------------------ duplicates


def test_the_same_image_under_another_patient_id_is_quarantined_naming_the_first(tmp_path: Path):
    root = tmp_path / "site"
    for i in range(10):  # ten images, each re-exported under another PatientID (same SOP UID, same pixels)
        uid = f"1.2.826.0.1.3680043.8.498.{1000 + i}"
        _write(root / "export1" / f"{i}.dcm", 100 + i, patient=f"PAT-{i:04d}", sop_uid=uid)
        _write(root / "export2" / f"{i}.dcm", 100 + i, patient=f"MRG-{i:04d}", sop_uid=uid)
    _write(root / "export3" / "same_pixels.dcm", 100, patient="PAT-0000")  # new UID, pixels of export1/0.dcm
    _write(root / "export3" / "same_uid.dcm", 999, sop_uid="1.2.826.0.1.3680043.8.498.1001")  # new pixels
    table = read_dicom_dir(root, salt=SALT)
    assert sorted(r.image_path for r in table.records) == [f"export1/{i}.dcm" for i in range(10)]
    dups = {q.record_id: q for q in table.quarantine}
    assert len(dups) == 12 and {q.code for q in dups.values()} == {"duplicate"}
    moved = dups["dicom-dir:export2/3.dcm"]
    assert "dicom-dir:export1/3.dcm" in moved.problem
    assert pseudonym("PAT-0003", SALT) in moved.problem and pseudonym("MRG-0003", SALT) in moved.problem
    assert "PAT-0003" not in moved.problem and "MRG-0003" not in moved.problem
    assert "decoded pixels" in dups["dicom-dir:export3/same_pixels.dcm"].problem
    assert "another patient" not in dups["dicom-dir:export3/same_pixels.dcm"].problem  # same patient
    assert "SOP Instance UID" in dups["dicom-dir:export3/same_uid.dcm"].problem
    # No image is left to land in two splits: each UID pseudonym and each pixel digest is in one record only.
    for key in ("sop_instance", "pixel_sha256"):
        assert len({r.extra[key] for r in table.records}) == len(table.records) == 10
    # The UID itself is never kept: only its salted pseudonym.
    out = tmp_path / "records"
    table.write(out)
    blob = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert b"1.2.826.0.1.3680043.8.498.100" not in blob and b"PAT-0003" not in blob and b"MRG-" not in blob


def test_a_labels_csv_patient_id_contradicting_the_header_is_quarantined(tmp_path: Path):
    root = tmp_path / "site"
    _write(root / "a.dcm", 1, patient="PAT-0001")
    _write(root / "b.dcm", 2, patient="PAT-0002")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label,patient_id\na.dcm,benign,PAT-0001\nb.dcm,malignant,PAT-7777\n")
    table = read_dicom_dir(root, labels=labels, salt=SALT)
    assert [r.image_path for r in table.records] == ["a.dcm"]
    (conflict,) = table.quarantine
    assert conflict.code == "patient_conflict" and conflict.record_id == "dicom-dir:b.dcm"
    assert "PAT-7777" not in conflict.problem and "PAT-0002" not in conflict.problem
    assert pseudonym("PAT-7777", SALT) in conflict.problem and pseudonym("PAT-0002", SALT) in conflict.problem


# ------------------------------------------------------------------------------------------------ salt


def test_phantoms_use_the_demo_salt_and_say_so_real_files_need_a_salt(tmp_path: Path, monkeypatch,
                                                                     caplog: pytest.LogCaptureFixture):
    from mammoflow.sources import DEMO_SALT
    from mammoflow.synth import phantoms

    monkeypatch.delenv("MAMMOFLOW_SALT", raising=False)
    root = tmp_path / "demo"
    truth = phantoms.write_dicom_dataset(root, n_images=2, seed=4, size=(128, 96))
    site = tmp_path / "site"
    for image in truth["images"]:
        (site / image["file"]).parent.mkdir(parents=True, exist_ok=True)
        (site / image["file"]).write_bytes((root / image["file"]).read_bytes())
    out = tmp_path / "records"
    with caplog.at_level("WARNING"):
        result = CliRunner().invoke(command, ["--source", "dicom-dir", "--root", str(site), "--out", str(out)])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "records_meta.json").read_text())
    assert meta["ingest"]["salt"].startswith("demo salt") and DEMO_SALT in meta["ingest"]["salt"]
    assert "demo salt" in caplog.text
    first = truth["images"][0]["header_identifiers"]["PatientID"]
    assert pseudonym(first, DEMO_SALT) in {r.patient_id for r in RecordsTable.read(out).records}

    _write(site / "real.dcm", 1)  # not a phantom: the demo salt no longer applies
    with pytest.raises(ConfigError, match="MAMMOFLOW_SALT"):
        read_dicom_dir(site)


def test_pipeline_steps_without_a_salt_fail_clearly(tmp_path: Path, monkeypatch):
    from mammoflow import steps
    from mammoflow.retrain.ingest import incremental_ingest

    monkeypatch.delenv("MAMMOFLOW_SALT", raising=False)
    root = tmp_path / "site"
    _write(root / "a.dcm", 1)
    with pytest.raises(ConfigError, match="mammoflow-salt"):
        steps.ingest("dicom-dir", str(root), tmp_path / "records")
    with pytest.raises(ConfigError, match="--salt"):
        incremental_ingest("dicom-dir", SourceOptions(root=root), None, tmp_path / "r1")
    assert steps.ingest("dicom-dir", str(root), tmp_path / "records", salt=SALT)["used"] == 1


# ------------------------------------------------------------------------------------------------ writes


def _site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    _write(root / "a.dcm", 1)
    _write(root / "b.dcm", 2, patient="PAT-0002", name="Roe^Mary")
    return root


def test_a_failed_ingest_leaves_the_previous_folder_intact(tmp_path: Path):
    root, out = _site(tmp_path), tmp_path / "records"
    assert _ingest(["--source", "dicom-dir", "--root", str(root), "--out", str(out)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _write(root / "c.dcm", 3)  # inputs changed: the next ingest reads again, and fails while writing

    def broken_read() -> RecordsTable:
        table = read_dicom_dir(root, salt=SALT)
        table.meta["unwritable"] = object()  # records.jsonl is written first, then the meta fails
        return table

    with pytest.raises(TypeError):
        resume.ingest_into(out, resume.input_fingerprint("dicom-dir", SourceOptions(root=root, salt=SALT)),
                           broken_read, inputs=[root])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched, and complete
    assert require_complete(out) == out and len(RecordsTable.read(out).records) == 2
    assert not list(tmp_path.glob("records.tmp-*"))


def test_leftovers_of_killed_runs_are_cleaned_and_a_half_swap_is_undone(tmp_path: Path):
    root, out = _site(tmp_path), tmp_path / "records"
    args = ["--source", "dicom-dir", "--root", str(root), "--out", str(out)]
    assert _ingest(args).exit_code == 0
    (tmp_path / "records.tmp-99999").mkdir()  # a killed run's half-built folder
    (tmp_path / "records.tmp-99999" / "records.jsonl").write_text("{}\n")
    out.rename(tmp_path / "records.old-99998")  # a kill between the two renames of a swap
    assert _ingest(args).exit_code == 0
    assert not list(tmp_path.glob("records.tmp-*")) and not list(tmp_path.glob("records.old-*"))
    assert require_complete(out) and len(RecordsTable.read(out).records) == 2


def test_require_complete_refuses_incomplete_or_changed_records(tmp_path: Path):
    root, out = _site(tmp_path), tmp_path / "records"
    read_dicom_dir(root, salt=SALT).write(out)
    assert require_complete(out) == out
    (out / "records.jsonl").write_text((out / "records.jsonl").read_text().splitlines()[0] + "\n")
    with pytest.raises(InputError, match="changed after the ingest") as err:
        require_complete(out)
    assert err.value.code == "incomplete"
    (out / COMPLETE_FILE).unlink()
    with pytest.raises(InputError, match="incomplete records folder"):
        require_complete(out)


def test_bad_out_folders_are_refused_with_a_clear_message(tmp_path: Path):
    root = _site(tmp_path)
    base = ["--source", "dicom-dir", "--root", str(root)]
    for out, words in ((root, "is --root"), (root / "records", "inside --root"), (tmp_path, "holds the input")):
        done = _cli("ingest", *base, "--out", str(out), env={"MAMMOFLOW_SALT": SALT})
        assert done.returncode == 1 and words in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert sorted(p.name for p in root.iterdir()) == ["a.dcm", "b.dcm"]  # nothing written into the images
    (tmp_path / "afile").write_text("x")
    done = _cli("ingest", *base, "--out", str(tmp_path / "afile" / "records"), env={"MAMMOFLOW_SALT": SALT})
    assert done.returncode == 1 and "a file, not a folder" in done.stderr and "Traceback" not in done.stderr
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.docx").write_text("x")
    with pytest.raises(ConfigError, match="not a records folder"):
        resume.check_out_dir(tmp_path / "mine", [root])
    assert (tmp_path / "mine" / "thesis.docx").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: permissions cannot be tested as root")
def test_an_unwritable_out_is_a_clear_error(tmp_path: Path):
    root = _site(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        done = _cli("ingest", "--source", "dicom-dir", "--root", str(root), "--out", str(locked / "records"),
                    env={"MAMMOFLOW_SALT": SALT})
    finally:
        locked.chmod(0o755)
    assert done.returncode == 1 and "refuses new files" in done.stderr and "Traceback" not in done.stderr


def test_a_write_error_is_reported_without_traceback_and_keeps_the_old_folder(tmp_path: Path):
    """An OSError while writing (a full disk: ENOSPC) is an error naming --out; the old folder stays."""
    root, out = _site(tmp_path), tmp_path / "records"
    read_dicom_dir(root, salt=SALT).write(out)
    fingerprint = "x" * 64

    def read() -> RecordsTable:
        table = read_dicom_dir(root, salt=SALT)
        (tmp_path / f"records.tmp-{os.getpid()}").write_text("a file where the temp folder goes")  # mkdir fails
        return table

    with pytest.raises(MammoflowError, match="could not be written") as err:
        resume.ingest_into(out, fingerprint, read, inputs=[root])
    assert "previous folder" in str(err.value) and require_complete(out) == out
    assert len(RecordsTable.read(out).records) == 2


def test_pseudonymised_paths_stay_out_of_the_report_and_csv_values_are_not_echoed(tmp_path: Path):
    from mammoflow.sources.cbis_ddsm import read_cbis_ddsm
    from test_sources_cbis import HEADER, _row

    root = tmp_path / "export"
    _write(root / "DOE^JANE" / "cc.dcm", 1)
    _write(root / "DOE^JANE" / "ct.dcm", 2, modality="CT")
    (root / "DOE^JANE" / ".thumbs").mkdir()
    out = tmp_path / "records"
    result = _ingest(["--source", "dicom-dir", "--root", str(root), "--pseudonymise-paths", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "DOE" not in (out / "quarantine.md").read_text() and "DOE" not in result.output
    assert "DOE^JANE" in (out / "quarantine.jsonl").read_text()  # to find the file, at the site
    assert "DOE^JANE" in (out / "skipped.jsonl").read_text()

    path = tmp_path / "mass_case_description_train_set.csv"
    path.write_text("\n".join([HEADER, _row(patient="SMITH^ANNA", folder="Mass-Training_P_1_LEFT_CC")]) + "\n")
    table = read_cbis_ddsm([path], metadata_only=True)
    assert [q.code for q in table.quarantine] == ["bad_annotation"] and "SMITH" not in table.quarantine[0].problem
