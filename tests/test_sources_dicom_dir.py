"""A folder of DICOM files with an optional labels CSV: records, quarantine and no identifier in any output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mammoflow.io.dicom import pseudonym
from mammoflow.sources.dicom_dir import find_dicoms, read_dicom_dir
from mammoflow.synth.dicom_writer import write_dicom

SALT = "site-secret"
# Identifiers written into the headers; none may appear in any output.
IDENTIFIERS = ("Doe^Jane", "Roe^Mary", "PAT-0001", "PAT-0002", "19510317", "ACC98765", "ACC12345",
               "Secret Clinic")


def _pixels(seed: int, shape=(64, 48)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, size=shape, dtype=np.uint16)


def _write(path: Path, seed: int, patient: str = "PAT-0001", name: str = "Doe^Jane", **kw) -> None:
    kw.setdefault("laterality", "L")
    kw.setdefault("view", "CC")
    write_dicom(path, _pixels(seed), patient_id=patient, patient_name=name, birth_date="19510317",
                accession_number="ACC98765" if patient == "PAT-0001" else "ACC12345",
                institution_name="Secret Clinic", bits_stored=12, **kw)


def make_site(root: Path) -> Path:
    """A small site folder with every kind of bad input, and its labels CSV."""
    _write(root / "a" / "img1.dcm", 1)
    _write(root / "a" / "img2.dcm", 2, laterality="R", view="MLO")
    _write(root / "b" / "noext.dcm", 3, patient="PAT-0002", name="Roe^Mary", laterality=None, view=None)
    (root / "b" / "noext.dcm").rename(root / "b" / "noext")  # suffix-less DICOM, found by its DICM marker
    _write(root / "c" / "x.dcm", 4)  # labelled "cancer": unknown label
    _write(root / "d" / "y.dcm", 5)  # two conflicting label rows
    _write(root / "e" / "z.dcm", 6, patient="PAT-0002", name="Roe^Mary")  # unlabelled: valid, label None
    _write(root / "f" / "side.dcm", 7)  # header L, CSV R
    _write(root / "bad" / "ct.dcm", 8, modality="CT")
    _write(root / "bad" / "bits32.dcm", 9, extra={"BitsAllocated": 32})
    data = (root / "a" / "img1.dcm").read_bytes()
    (root / "bad" / "trunc.dcm").write_bytes(data[: len(data) - 2000])
    (root / "bad" / "junk.dcm").write_bytes(np.random.default_rng(0).bytes(3000))  # not DICOM at all
    (root / "notes.txt").write_text("not an image")
    labels = root.parent / "labels.csv"
    labels.write_text("\n".join([
        "path,label,patient_id,laterality,view",
        "a/img1.dcm,malignant,,,",
        "a/img2.dcm,benign,PAT-0001,,",
        "b/noext,Normal,,L,CC",
        "c/x.dcm,cancer,,,",
        "d/y.dcm,benign,,,",
        "d/y.dcm,malignant,,,",
        "f/side.dcm,benign,,R,",
        "bad/ct.dcm,benign,,,",
        "missing/gone.dcm,benign,,,",
    ]) + "\n")
    return labels


def test_dicom_dir_records_quarantine_and_pseudonyms(tmp_path: Path):
    root = tmp_path / "site"
    labels = make_site(root)
    assert len(find_dicoms(root)) == 11

    table = read_dicom_dir(root, labels=labels, salt=SALT)
    recs = {r.image_path: r for r in table.records}
    assert sorted(recs) == ["a/img1.dcm", "a/img2.dcm", "b/noext", "e/z.dcm"]
    codes = {(q.record_id or "").split(":", 1)[1]: q.code for q in table.quarantine}
    assert codes == {"c/x.dcm": "unknown_label", "d/y.dcm": "duplicate_id", "f/side.dcm": "annotation_mismatch",
                     "bad/ct.dcm": "modality", "bad/bits32.dcm": "bit_depth", "bad/trunc.dcm": "truncated",
                     "bad/junk.dcm": "corrupt", "missing/gone.dcm": "missing_file"}
    s = table.summary()
    assert s["read"] == s["used"] + s["quarantined"] + s["skipped"] == 13  # notes.txt: a sidecar, skipped
    assert [(e.path, e.reason) for e in table.skipped] == [(str(root / "notes.txt"), "sidecar")]

    img1, img2, noext, z = recs["a/img1.dcm"], recs["a/img2.dcm"], recs["b/noext"], recs["e/z.dcm"]
    assert (img1.label, img1.laterality, img1.view, img1.height, img1.width) == ("malignant", "L", "CC", 64, 48)
    assert (img2.label, img2.laterality, img2.view) == ("benign", "R", "MLO")
    assert (noext.label, noext.laterality, noext.view) == ("normal", "L", "CC")  # from the CSV
    assert z.label is None  # unlabelled images are valid
    # The CSV's patient_id and the header's PatientID go through the same salted hash.
    assert img1.patient_id == img2.patient_id == pseudonym("PAT-0001", SALT)
    assert noext.patient_id == z.patient_id == pseudonym("PAT-0002", SALT) != img1.patient_id
    assert img1.content_hash and len(img1.content_hash) == 64

    meta_only = read_dicom_dir(root, labels=labels, salt=SALT, metadata_only=True)
    # Headers only: the truncated pixel data goes unnoticed (no decoding), but the cut copy of a/img1.dcm has its
    # SOP Instance UID: a duplicate of the first; everything else is the same.
    assert sorted(r.record_id for r in meta_only.records) == sorted(r.record_id for r in table.records)
    assert {q.record_id: q.code for q in meta_only.quarantine}["dicom-dir:bad/trunc.dcm"] == "duplicate"
    assert all(r.content_hash is None for r in meta_only.records)


def test_no_identifier_in_any_output(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    root = tmp_path / "site"
    labels = make_site(root)
    out = tmp_path / "records"
    with caplog.at_level("DEBUG"):
        read_dicom_dir(root, labels=labels, salt=SALT).write(out)
    blob = b"".join(p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file())
    assert blob
    for ident in IDENTIFIERS:
        assert ident.encode() not in blob, ident
        assert ident not in caplog.text, ident
    assert b"Doe" not in blob and b"Jane" not in blob


def test_labels_csv_needs_path_and_label(tmp_path: Path):
    from mammoflow.errors import InputError

    (tmp_path / "site").mkdir()
    labels = tmp_path / "labels.csv"
    labels.write_text("file,diagnosis\nx.dcm,benign\n")
    with pytest.raises(InputError) as err:
        read_dicom_dir(tmp_path / "site", labels=labels, salt=SALT)
    assert err.value.code == "bad_csv"


def test_any_modality_accepts_non_mammograms(tmp_path: Path):
    _write(tmp_path / "ct.dcm", 1, modality="CT")
    assert [q.code for q in read_dicom_dir(tmp_path, salt=SALT).quarantine] == ["modality"]
    table = read_dicom_dir(tmp_path, salt=SALT, expect_modality=None)
    assert [r.image_path for r in table.records] == ["ct.dcm"] and table.quarantine == []


def test_labels_csv_in_the_folder_is_used_when_none_is_given(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    _write(tmp_path / "a.dcm", 1)
    _write(tmp_path / "b.dcm", 2, laterality="R")
    (tmp_path / "labels.csv").write_text("path,label\na.dcm,malignant\nb.dcm,normal\n")
    with caplog.at_level("INFO", logger="mammoflow.sources.dicom_dir"):
        table = read_dicom_dir(tmp_path, salt=SALT)
    assert {r.image_path: r.label for r in table.records} == {"a.dcm": "malignant", "b.dcm": "normal"}
    assert table.meta["labels_file"] == "labels.csv" and table.meta["labels_found_in_root"] is True
    assert "no labels CSV given: using" in caplog.text and "labels.csv" in caplog.text

    # A CSV given wins; find_labels=False reads the folder unlabelled.
    other = tmp_path.parent / f"{tmp_path.name}-other.csv"
    other.write_text("path,label\na.dcm,benign\n")
    given = read_dicom_dir(tmp_path, labels=other, salt=SALT)
    assert {r.image_path: r.label for r in given.records} == {"a.dcm": "benign", "b.dcm": None}
    assert given.meta["labels_found_in_root"] is False
    plain = read_dicom_dir(tmp_path, salt=SALT, find_labels=False)
    assert {r.label for r in plain.records} == {None} and plain.meta["labels_file"] is None


def test_an_unreadable_labels_csv_in_the_folder_says_why_it_was_read(tmp_path: Path):
    from mammoflow.errors import InputError

    _write(tmp_path / "a.dcm", 1)
    (tmp_path / "labels.csv").write_text("file,diagnosis\na.dcm,benign\n")
    with pytest.raises(InputError, match="needs the columns path and label.*no labels CSV was given and it is "
                       "labels.csv in the DICOM folder: rename it") as err:
        read_dicom_dir(tmp_path, salt=SALT)
    assert err.value.code == "bad_csv"


def test_ingest_command_reads_the_folders_labels_csv(tmp_path: Path):
    import json

    from click.testing import CliRunner

    from mammoflow.cli import cli

    site = tmp_path / "site"
    _write(site / "a.dcm", 1)
    (site / "labels.csv").write_text("path,label\na.dcm,benign\n")
    result = CliRunner().invoke(cli, ["ingest", "--source", "dicom-dir", "--root", str(site), "--salt", SALT,
                                      "--out", str(tmp_path / "records")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "records" / "records_meta.json").read_text())
    assert meta["labels_found_in_root"] is True
    assert json.loads((tmp_path / "records" / "records.jsonl").read_text())["label"] == "benign"


def test_every_file_is_used_quarantined_or_a_known_sidecar(tmp_path: Path):
    """A DICOM file named by its SOP UID has a "suffix" but is read; a file that is neither DICOM nor a
    sidecar is quarantined (not_dicom), so read = used + quarantined + skipped covers the whole folder."""
    import os

    root = tmp_path / "site"
    _write(root / "a.dcm", 1)
    _write(root / "series" / "uid.dcm", 2)
    (root / "series" / "uid.dcm").rename(root / "series" / "1.2.840.113619.2.55.3.604688119")
    (root / "series" / "scan.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))  # not DICOM
    (root / "series" / "1.2.840.113619.2.55.3.99").write_bytes(bytes(300))  # UID-like name, not DICOM
    (root / "broken").symlink_to(root / "gone.dcm")  # a dangling link is counted, not skipped
    for sidecar in ("labels.csv", "README.txt", "meta.json", "notes.md", "DICOMDIR", ".hidden", ".git/x.dcm"):
        (root / sidecar).parent.mkdir(parents=True, exist_ok=True)
        (root / sidecar).write_text("path,label\n" if sidecar == "labels.csv" else "x")
    os.mkfifo(root / "pipe")  # not a regular file: quarantined without being opened (a read would block)

    assert find_dicoms(root) == [root / "a.dcm", root / "series" / "1.2.840.113619.2.55.3.604688119"]
    table = read_dicom_dir(root, salt=SALT)
    assert sorted(r.image_path for r in table.records) == ["a.dcm", "series/1.2.840.113619.2.55.3.604688119"]
    codes = {q.record_id: q.code for q in table.quarantine}
    assert codes == {"dicom-dir:series/scan.png": "not_dicom", "dicom-dir:series/1.2.840.113619.2.55.3.99": "not_dicom",
                     "dicom-dir:broken": "missing_file", "dicom-dir:pipe": "not_dicom"}
    s = table.summary()
    assert s["read"] == s["used"] + s["quarantined"] + s["skipped"] == 13
    assert table.meta["sidecar_files"] == 5 and table.meta["other_files_quarantined"] == 4
    assert s["skipped_by_reason"] == {"hidden": 2, "sidecar": 5}  # .hidden and the .git folder (one entry)


def test_a_labels_csv_that_is_not_utf8_text_is_a_bad_csv(tmp_path: Path):
    from mammoflow.errors import InputError

    _write(tmp_path / "site" / "a.dcm", 1, patient="")  # no PatientID: the CSV's patient_id is the patient's
    labels = tmp_path / "labels.csv"
    labels.write_bytes("path,label,patient_id\na.dcm,benign,Hélène\n".encode("latin-1"))  # an Excel export
    with pytest.raises(InputError) as err:
        read_dicom_dir(tmp_path / "site", labels=labels, salt=SALT)
    assert err.value.code == "bad_csv" and err.value.path == str(labels)
    assert "not UTF-8" in err.value.problem and "line 2" in err.value.problem and "UTF-8" in err.value.fix
    labels.write_bytes(b"path,label\na.dcm,ben\x00ign\n")
    with pytest.raises(InputError) as err:
        read_dicom_dir(tmp_path / "site", labels=labels, salt=SALT)
    assert err.value.code == "bad_csv" and "NUL" in err.value.problem and "line 2" in err.value.problem
    # UTF-8 with a byte-order mark (Excel's "CSV UTF-8") is fine, accents included.
    labels.write_bytes("\ufeffpath,label,patient_id\na.dcm,benign,Hélène\n".encode())
    [rec] = read_dicom_dir(tmp_path / "site", labels=labels, salt=SALT).records
    assert rec.label == "benign" and rec.patient_id == pseudonym("Hélène", SALT)


def test_paths_with_person_names_are_warned_about_and_can_be_pseudonymised(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture):
    root = tmp_path / "export"
    _write(root / "DOE^JANE" / "1" / "cc.dcm", 1)
    _write(root / "DOE^JANE" / "1" / "mlo.dcm", 2, view="MLO")
    (root / "DOE^JANE" / "1" / "bad.dcm").write_bytes(b"junk")
    (root / "labels.csv").write_text("path,label\nDOE^JANE/1/cc.dcm,benign\nDOE^JANE/2/gone.dcm,normal\n")

    with caplog.at_level("INFO"):
        plain = read_dicom_dir(root, salt=SALT)
    assert "3 file path(s) under --root contain '^'" in caplog.text and "--pseudonymise-paths" in caplog.text
    assert {r.record_id for r in plain.records} == {"dicom-dir:DOE^JANE/1/cc.dcm", "dicom-dir:DOE^JANE/1/mlo.dcm"}

    caplog.clear()
    with caplog.at_level("DEBUG"):
        table = read_dicom_dir(root, salt=SALT, pseudonymise_paths=True)
    ids = {r.image_path: r.record_id for r in table.records}
    # The same salted pseudonym as patient ids, so ids are stable between runs with the same salt.
    assert ids == {rel: f"dicom-dir:{pseudonym(rel, SALT, prefix='img-')}"
                   for rel in ("DOE^JANE/1/cc.dcm", "DOE^JANE/1/mlo.dcm")}
    assert {r.image_path: r.label for r in table.records} == {"DOE^JANE/1/cc.dcm": "benign", "DOE^JANE/1/mlo.dcm": None}
    assert {q.code: q.record_id for q in table.quarantine} == {
        "corrupt": f"dicom-dir:{pseudonym('DOE^JANE/1/bad.dcm', SALT, prefix='img-')}",
        "missing_file": f"dicom-dir:{pseudonym('DOE^JANE/2/gone.dcm', SALT, prefix='img-')}"}
    assert table.meta["paths_pseudonymised"] is True
    assert "DOE" not in caplog.text and "JANE" not in caplog.text
    assert "Record ids and logs use path pseudonyms" in caplog.text
    assert read_dicom_dir(root, salt=SALT, pseudonymise_paths=True).records == table.records
