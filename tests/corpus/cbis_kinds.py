"""Bad inputs of a CBIS-DDSM download (``--source cbis-ddsm``): CSV rows and DICOM folders that do not match.

The download is ``mammoflow demo-data --format dicom`` (``write_dicom_dataset``): TCIA folder names, the four
description CSVs, headers with fake identifiers (all of them searched for in the outputs).
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

from tests.corpus import dicom_files as df
from tests.corpus.model import PLANT, QUARANTINED, SKIPPED, Build, Expect, Kind, RunSpec, Target


def setup(b: Build) -> None:
    from mammoflow.synth.phantoms import write_dicom_dataset

    truth = write_dicom_dataset(b.root, n_images=8, seed=3, size=(128, 96))
    b.state["truth"] = truth
    b.state["taken"] = set()
    b.tag = "G01"
    for image in truth["images"]:
        ids = image["header_identifiers"]
        b.plant(ids["PatientName"], ids["PatientID"], ids["AccessionNumber"])


def finish(b: Build) -> None:
    """Nothing to add: the kinds edited the download in place."""


def argv(paths: dict[str, Path]) -> list[str]:
    return ["ingest", "--source", "cbis-ddsm", "--root", str(paths["root"]), "--out", str(paths["out"])]


def runs() -> list[RunSpec]:
    return [RunSpec("cbis", setup, finish, argv, exit_code=0)]


# ----------------------------------------------------------------------------------------- helpers


def take_image(b: Build) -> dict:
    """An image of the download not used by another kind (one record: patient, side, view)."""
    for image in b.state["truth"]["images"]:
        if image["case"] not in b.state["taken"]:
            b.state["taken"].add(image["case"])
            return image
    raise RuntimeError("not enough phantom images for the CBIS kinds")


def record_id(image: dict) -> str:
    side = {"L": "LEFT", "R": "RIGHT"}[image["laterality"]]
    return f"cbis-ddsm:{image['patient_id']}_{side}_{image['view']}"


def replant(b: Build, path: Path) -> None:
    """Give a DICOM of the download the current kind's planted identifiers."""
    ids, odd = df.identifiers(b)

    def change(ds) -> None:
        ds.PatientName, ds.PatientID = ids["patient_name"], ids["patient_id"]
        ds.AccessionNumber, ds.InstitutionName = ids["accession_number"], ids["institution_name"]
        for keyword, value in odd.items():
            setattr(ds, keyword, value)
    df.edit(path, change)


def append_row(b: Build, patient: str, change: dict[str, str] | None = None, drop_last: bool = False
               ) -> tuple[str, int, str]:
    """Append a copy of the first row of the fullest description CSV, for ``patient`` and with ``change``
    applied; returns the CSV's name, the line the new row starts on and the record id the row names."""
    def rows_of(path: Path) -> list[list[str]]:
        return list(csv.reader(io.StringIO(path.read_bytes().decode("utf-8"), newline="")))

    path = max(sorted(b.root.glob("*_case_description_*_set.csv")), key=lambda p: len(rows_of(p)))
    text = path.read_bytes().decode("utf-8")
    header, first = rows_of(path)[:2]
    cells = dict(zip(header, first, strict=True))
    old = f"{cells['patient_id']}_{cells['left or right breast']}_{cells['image view']}"
    new = f"{patient}_{cells['left or right breast']}_{cells['image view']}"
    cells["image file path"] = cells["image file path"].replace(old, new)
    cells["patient_id"] = patient
    cells.update(change or {})
    values = [cells[h] for h in header]
    if drop_last:
        values = values[:-3]
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(values)
    if not text.endswith("\n"):
        text += "\r\n"
    line = text.count("\n") + 1
    path.write_bytes((text + out.getvalue()).encode("utf-8"))
    return path.name, line, f"cbis-ddsm:{new}"


# ----------------------------------------------------------------------------------------- kinds


def missing_folder(b: Build) -> list[Target]:
    image = take_image(b)
    shutil.rmtree(b.root / "CBIS-DDSM" / image["case"])
    return [Target(record_id=record_id(image))]


def folder_without_row(b: Build) -> list[Target]:
    image = take_image(b)
    case = image["case"]
    side = {"L": "LEFT", "R": "RIGHT"}[image["laterality"]]
    new_case = case.replace(f"{image['patient_id']}_{side}", f"P_09999_{side}")
    shutil.copytree(b.root / "CBIS-DDSM" / case, b.root / "CBIS-DDSM" / new_case)
    for path in (b.root / "CBIS-DDSM" / new_case).rglob("*.dcm"):
        replant(b, path)
    return [Target(match=new_case)]


def truncated_image(b: Build) -> list[Target]:
    image = take_image(b)
    path = b.root / image["file"]
    replant(b, path)
    df.cut(path, 0.6)
    return [Target(image["file"], record_id=record_id(image))]


def unknown_pathology(b: Build) -> list[Target]:
    name, line, rid = append_row(b, "P_08888", {"pathology": "UNSURE"})
    return [Target(annotation=name, line=line, record_id=rid)]


def patient_holding_name(b: Build) -> list[Target]:
    patient = f"{PLANT}NAME^{b.tag}"
    b.plant(patient)
    name, line, _ = append_row(b, patient)
    return [Target(annotation=name, line=line)]


def short_row(b: Build) -> list[Target]:
    name, line, _ = append_row(b, "P_07777", drop_last=True)
    return [Target(annotation=name, line=line)]


def kinds() -> list[Kind]:
    c = "cbis"
    return [
        Kind("cbis_row_missing_folder", c, missing_folder, Expect(QUARANTINED, ("missing_file",))),
        Kind("cbis_folder_without_row", c, folder_without_row,
             Expect(SKIPPED, ("no_csv_row",), why="issue build 3: a folder without a CSV row is skipped and listed")),
        Kind("cbis_truncated_full_image", c, truncated_image, Expect(QUARANTINED, ("truncated",))),
        Kind("cbis_unknown_pathology", c, unknown_pathology, Expect(QUARANTINED, ("unknown_label",))),
        Kind("cbis_patient_id_holding_name", c, patient_holding_name, Expect(QUARANTINED, ("bad_annotation",))),
        Kind("cbis_row_missing_fields", c, short_row, Expect(QUARANTINED, ("bad_annotation",))),
    ]

