"""CBIS-DDSM: the four real description CSVs accounted for row by row, and bad rows quarantined."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mammoflow.sources.cbis_ddsm import (
    clean_path,
    is_binary_mask,
    mask_geometry,
    normalise_column,
    parse_csv,
    read_cbis_ddsm,
    split_crop_and_mask,
)

SALT = "test-salt"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def real_table(cbis_csvs: list[Path]):
    return read_cbis_ddsm(cbis_csvs, metadata_only=True, salt=SALT)


@pytest.mark.realdata
def test_every_real_row_is_accounted_for(cbis_csvs: list[Path], real_table):
    rows = {p.name: _rows(p) for p in cbis_csvs}
    total = sum(len(r) for r in rows.values())
    assert real_table.quarantine == []
    lesions = [le for r in real_table.records for le in r.lesions]
    assert len(lesions) == total
    # Each row is exactly one lesion, found again by its file and line.
    assert len({le.extra["csv"] for le in lesions}) == total
    assert Counter(le.extra["csv"].split(":")[0] for le in lesions) == {k: len(v) for k, v in rows.items()}
    # One record per (patient, side, view), merged across calc and mass files.
    images = {(r["patient_id"], r["left or right breast"], r["image view"]) for v in rows.values() for r in v}
    assert {r.record_id for r in real_table.records} == {f"cbis-ddsm:{p}_{s}_{v}" for p, s, v in images}
    acc = real_table.meta["row_accounting"]
    assert acc["rows"] == acc["as_lesions"] == total and acc["bad_rows"] == 0


@pytest.mark.realdata
def test_real_pathology_density_and_paths(cbis_csvs: list[Path], real_table):
    lesions = [le for r in real_table.records for le in r.lesions]
    raw = Counter(r["pathology"] for p in cbis_csvs for r in _rows(p))
    assert set(raw) == {"MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK"}
    assert Counter(le.extra["pathology"] for le in lesions) == raw
    for le in lesions:
        assert le.label == ("malignant" if le.extra["pathology"] == "MALIGNANT" else "benign")
    for rec in real_table.records:
        assert rec.label == ("malignant" if any(le.label == "malignant" for le in rec.lesions) else "benign")

    # Both spellings of the density column are read (calc: "breast density", mass: "breast_density").
    headers = {p.name.split("_")[0]: next(csv.reader(open(p, newline=""))) for p in cbis_csvs}
    assert "breast density" in headers["calc"] and "breast_density" in headers["mass"]
    for kind, column in (("calcification", "breast density"), ("mass", "breast_density")):
        written = Counter(r[column] for p in cbis_csvs if p.name.startswith(kind[:4]) for r in _rows(p))
        got = Counter(str(le.extra["breast_density"] if le.extra["breast_density"] is not None
                          else le.extra["breast_density_as_written"]) for le in lesions if le.kind == kind)
        assert got == written

    # Path fields with embedded newlines come out clean.
    assert any("\n" in r["ROI mask file path"] or "\n" in r["cropped image file path"]
               for p in cbis_csvs for r in _rows(p))
    for rec in real_table.records:
        assert rec.image_path.endswith(".dcm") and not any(c.isspace() for c in rec.image_path)
        for le in rec.lesions:
            assert all(not any(c.isspace() for c in v) for v in le.extra["csv_paths"].values())


@pytest.mark.realdata
def test_real_calc_mass_patient_overlap_is_one_patient(cbis_csvs: list[Path], real_table):
    calc = {r["patient_id"] for p in cbis_csvs if p.name.startswith("calc") for r in _rows(p)}
    mass = {r["patient_id"] for p in cbis_csvs if p.name.startswith("mass") for r in _rows(p)}
    both = calc & mass
    assert both, "the real CSVs share patients between calc and mass"
    by_patient: dict[str, set[str]] = {}
    for rec in real_table.records:
        patient = rec.record_id.split(":")[1].rsplit("_", 2)[0]
        by_patient.setdefault(patient, set()).add(rec.patient_id)
    # One pseudonymous id per CBIS patient, the same whether the row came from a calc or a mass file ...
    assert all(len(ids) == 1 for ids in by_patient.values())
    assert len({next(iter(ids)) for ids in by_patient.values()}) == len(by_patient)
    for patient in both:
        kinds = {k for r in real_table.records if r.record_id.split(":")[1].startswith(patient + "_")
                 for k in r.extra["abnormality_types"]}
        assert kinds == {"calc", "mass"}
    # ... pseudonymous (not the CBIS id) and salted.
    assert all(r.patient_id.startswith("cbis-") and "P_" not in r.patient_id for r in real_table.records)
    other = read_cbis_ddsm(cbis_csvs[:1], metadata_only=True, salt="another-salt")
    assert {r.patient_id for r in other.records}.isdisjoint({r.patient_id for r in real_table.records})

    # Images whose abnormalities are in the official train AND test sets go to test, and say so.
    mixed = [r for r in real_table.records if len({le.extra["official_split"] for le in r.lesions}) > 1]
    assert mixed and all(r.split == "test" and "split_note" in r.extra for r in mixed)
    for rec in real_table.records:
        if rec not in mixed:
            assert rec.split == rec.lesions[0].extra["official_split"]


def test_helpers():
    assert normalise_column(" breast_density") == normalise_column("Breast Density") == "breast density"
    assert clean_path("Calc-Test_P_1_LEFT_CC_1/1.2/3.4/000001.dcm\n") == "Calc-Test_P_1_LEFT_CC_1/1.2/3.4/000001.dcm"
    mask = np.zeros((50, 40), np.uint16)
    mask[10:20, 5:15] = 65535
    crop = np.arange(100, dtype=np.uint16).reshape(10, 10)
    assert is_binary_mask(mask) and not is_binary_mask(crop) and not is_binary_mask(np.zeros((4, 4)))
    assert split_crop_and_mask([crop, mask], (50, 40)) == (1, 0)
    assert split_crop_and_mask([mask, crop], (50, 40)) == (0, 1)
    assert split_crop_and_mask([mask], (50, 40)) == (0, None)
    with pytest.raises(ValueError):
        split_crop_and_mask([crop, mask], (60, 40))  # the mask must have the full image's size
    with pytest.raises(ValueError):
        split_crop_and_mask([mask, mask.copy()], (50, 40))
    row, col, radius = mask_geometry(mask)
    assert (row, col) == (14.5, 9.5) and radius == pytest.approx(np.sqrt(100 / np.pi))


HEADER = ("patient_id,breast_density,left or right breast,image view,abnormality id,abnormality type,mass shape,"
          "mass margins,assessment,pathology,subtlety,image file path,cropped image file path,ROI mask file path")


def _row(patient="P_00001", side="LEFT", view="CC", abn="1", pathology="MALIGNANT", density="3",
         folder=None) -> str:
    folder = folder or f"Mass-Training_{patient}_{side}_{view}"
    return (f'{patient},{density},{side},{view},{abn},mass,OVAL,CIRCUMSCRIBED,4,{pathology},3,'
            f'{folder}/1.2/3.4/000000.dcm,"{folder}_{abn}/1.2/5.6/000000.dcm\n",'
            f'"{folder}_{abn}/1.2/5.6/000001.dcm\n"')


def test_bad_rows_are_quarantined_and_counted(tmp_path: Path):
    lines = [
        HEADER,
        _row(),  # good
        _row(abn="2", pathology="BENIGN_WITHOUT_CALLBACK", density="0"),  # good; density 0 kept as written
        _row(abn="2"),  # duplicate abnormality id of the same image
        _row(patient="P_00002", pathology="PROBABLY_BENIGN"),  # unknown pathology
        _row(patient="P_00003", side="MIDDLE"),  # bad side
        _row(patient="P_00004", folder="Mass-Training_P_00099_LEFT_CC"),  # path names another image
        _row(patient="X12"),  # bad patient id
        "P_00005,3,LEFT,CC",  # short row
        _row(patient="P_00006", abn="zero"),
    ]
    path = tmp_path / "mass_case_description_train_set.csv"
    path.write_text("\n".join(lines) + "\n")
    parsed = parse_csv(path)
    assert parsed.n_rows == 9 and len(parsed.rows) == 3
    table = read_cbis_ddsm([path], metadata_only=True, salt=SALT)
    assert sorted(q.code for q in table.quarantine) == ["bad_annotation"] * 5 + ["duplicate_id", "unknown_label"]
    assert all("row at line" in q.problem and q.fix for q in table.quarantine)
    [rec] = table.records
    assert rec.record_id == "cbis-ddsm:P_00001_LEFT_CC" and rec.label == "malignant" and rec.split == "train"
    assert [le.lesion_id for le in rec.lesions] == ["cbis-ddsm:P_00001_LEFT_CC:mass1", "cbis-ddsm:P_00001_LEFT_CC:mass2"]
    assert rec.lesions[1].extra["pathology"] == "BENIGN_WITHOUT_CALLBACK" and rec.lesions[1].label == "benign"
    assert rec.lesions[1].extra["breast_density"] is None and rec.lesions[1].extra["breast_density_as_written"] == "0"
    acc = table.meta["row_accounting"]
    assert acc["rows"] == 9 and acc["as_lesions"] + acc["bad_rows"] == 9
    # Line numbers count the embedded newlines (two per row here): row 2 starts on line 5.
    assert rec.lesions[1].extra["csv"].endswith(":5")


def test_missing_columns_and_images_without_root(tmp_path: Path):
    from mammoflow.errors import InputError

    path = tmp_path / "calc_case_description_test_set.csv"
    path.write_text("patient_id,pathology\nP_00001,BENIGN\n")
    with pytest.raises(InputError) as err:
        read_cbis_ddsm([path], metadata_only=True, salt=SALT)
    assert err.value.code == "bad_csv" and "breast density" in err.value.problem
    with pytest.raises(InputError) as no_root:
        read_cbis_ddsm([path], salt=SALT)
    assert no_root.value.code == "missing_file" and "--metadata-only" in no_root.value.fix


# ------------------------------------------------------------------------------- phantom DICOM download


@pytest.fixture(scope="module")
def phantom_cbis(tmp_path_factory) -> tuple[Path, dict]:
    phantoms = pytest.importorskip("mammoflow.synth.phantoms")
    root = tmp_path_factory.mktemp("cbis")
    truth = phantoms.write_dicom_dataset(root, n_images=8, seed=1, size=(320, 240))
    return root, truth


def test_phantom_join_by_folder_and_mask_by_content(phantom_cbis, tmp_path: Path):
    from click.testing import CliRunner

    from mammoflow.commands.ingest import command
    from mammoflow.records import RecordsTable

    root, truth = phantom_cbis
    out = tmp_path / "records"
    result = CliRunner().invoke(command, ["--source", "cbis-ddsm", "--root", str(root), "--salt", SALT,
                                          "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table = RecordsTable.read(out)
    assert table.quarantine == []
    recs = {r.record_id: r for r in table.records}
    side = {"L": "LEFT", "R": "RIGHT"}
    for image in truth["images"]:
        rec = recs[f"cbis-ddsm:{image['patient_id']}_{side[image['laterality']]}_{image['view']}"]
        # Joined to the file on disk by patient, side and view, not by the CSV's UID paths.
        assert rec.image_path == image["file"] and (rec.laterality, rec.view) == (image["laterality"], image["view"])
        assert (rec.height, rec.width) == (image["height"], image["width"])
        assert rec.split == ("test" if image["split"] == "Test" else "train")
        assert (root / rec.image_path).is_file() and not any("1.3.6.1.4" in p for p in [rec.image_path])
        assert len(rec.lesions) == len(image["lesions"])
        for lesion, want in zip(rec.lesions, sorted(image["lesions"], key=lambda w: w["abnormality_id"]),
                                strict=True):
            # 1-1/1-2 are crop and mask in random order: told apart by content.
            assert lesion.mask_path == want["mask_file"] and lesion.extra["crop_path"] == want["crop_file"]
            assert lesion.center_row == pytest.approx(want["center_row"], abs=0.5)
            assert lesion.center_col == pytest.approx(want["center_col"], abs=0.5)
            assert lesion.radius == pytest.approx(want["radius"], rel=0.1)
            assert lesion.label == ("malignant" if want["pathology"] == "MALIGNANT" else "benign")
            assert lesion.extra["pathology"] == want["pathology"]
    # One pseudonymous patient id per CBIS patient, across calc and mass.
    by_patient: dict[str, set[str]] = {}
    for image in truth["images"]:
        rec = recs[f"cbis-ddsm:{image['patient_id']}_{side[image['laterality']]}_{image['view']}"]
        by_patient.setdefault(image["patient_id"], set()).add(rec.patient_id)
    assert all(len(v) == 1 for v in by_patient.values())
    assert any(len({i["abnormality"] for i in truth["images"] if i["patient_id"] == p}) == 2 for p in by_patient)

    # No identifier from any DICOM header in any output file.
    blob = b"".join(p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file())
    idents = {v for image in truth["images"] for k, v in image["header_identifiers"].items()}
    assert idents
    for ident in idents:
        assert str(ident).encode() not in blob, ident
        assert str(ident) not in result.output


@pytest.mark.filterwarnings("ignore:End of file reached:UserWarning")  # pydicom, on the truncated file
def test_phantom_bad_files_are_quarantined(phantom_cbis, tmp_path: Path):
    import shutil

    from mammoflow.synth.dicom_writer import write_dicom

    src, truth = phantom_cbis
    root = tmp_path / "copy"
    shutil.copytree(src, root)
    images = truth["images"]
    with_lesions = [i for i in images if i["lesions"]]
    assert len(images) >= 6 and len(with_lesions) >= 5
    rid = {i["file"]: f"cbis-ddsm:{i['patient_id']}_{'LEFT' if i['laterality'] == 'L' else 'RIGHT'}_{i['view']}"
           for i in images}
    (root / images[0]["file"]).unlink()  # missing full image
    data = (root / images[1]["file"]).read_bytes()
    (root / images[1]["file"]).write_bytes(data[: len(data) // 2])  # truncated
    write_dicom(root / images[2]["file"], np.zeros((320, 240), np.uint16), patient_id="X", patient_name="Y",
                modality="CT")  # wrong modality
    grey = np.arange(320 * 240, dtype=np.uint16).reshape(320, 240)
    write_dicom(root / images[3]["lesions"][0]["mask_file"], grey, patient_id="X", patient_name="Y")  # no mask
    shutil.rmtree((root / images[4]["lesions"][0]["mask_file"]).parents[2])  # abnormality folder not downloaded
    # CBIS stores some mammograms twice (under Calc- and Mass- names): one record, the copy noted.
    full = (root / images[5]["file"]).parents[2]
    twin = full.name.replace("Mass-", "Calc-") if full.name.startswith("Mass-") else full.name.replace("Calc-", "Mass-")
    shutil.copytree(full, full.parent / twin)

    table = read_cbis_ddsm([], root=root, salt=SALT)
    codes = {q.record_id: q.code for q in table.quarantine}
    assert codes == {rid[images[0]["file"]]: "missing_file", rid[images[1]["file"]]: "truncated",
                     rid[images[2]["file"]]: "modality", rid[images[3]["file"]]: "bad_mask"}
    s = table.summary()
    assert s["used"] + s["quarantined"] == len(images)
    # Nothing under the root dropped without a trace: the twin folder and ground_truth.json are listed.
    assert s["read"] == s["used"] + s["quarantined"] + s["skipped"]
    assert s["skipped_by_reason"] == {"not_in_case_folder": 1, "same_image_other_folder": 1}
    partial = next(r for r in table.records if r.record_id == rid[images[4]["file"]])
    assert partial.lesions[0].mask_path is None and partial.lesions[0].extra["geometry"] == "missing"
    acc = table.meta["row_accounting"]
    assert acc["as_lesions"] + acc["bad_rows"] + acc["in_quarantined_images"] == acc["rows"]
    doubled = next(r for r in table.records if r.record_id == rid[images[5]["file"]])
    assert doubled.image_path == images[5]["file"] and twin in doubled.extra["same_image_also_at"][0]


def test_a_description_csv_that_is_not_utf8_text_is_a_bad_csv(tmp_path: Path):
    from mammoflow.errors import InputError

    path = tmp_path / "mass_case_description_train_set.csv"
    body = "\n".join([HEADER, _row(), _row(patient="P_00002").replace("OVAL", "OVALE-é")]) + "\n"
    path.write_bytes(body.encode("cp1252"))  # saved by Excel on Windows
    with pytest.raises(InputError) as err:
        read_cbis_ddsm([path], metadata_only=True, salt=SALT)
    # Line 5: the first row spans lines 2-4 (two embedded newlines), the accent is on the second row.
    assert err.value.code == "bad_csv" and "not UTF-8" in err.value.problem and "line 5" in err.value.problem
    assert err.value.path == str(path) and "UTF-8" in err.value.fix
    path.write_bytes(b"\x00" + body.encode())
    with pytest.raises(InputError) as err:
        parse_csv(path)
    assert err.value.code == "bad_csv" and "NUL" in err.value.problem
    path.write_bytes("\ufeff".encode() + body.encode())  # UTF-8 with a byte-order mark: read as it is
    parsed = parse_csv(path)
    assert len(parsed.rows) == 2 and parsed.rows[1].raw["mass shape"] == "OVALE-é"
