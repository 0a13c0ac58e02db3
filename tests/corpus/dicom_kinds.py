"""Bad inputs of a site's DICOM folder (``--source dicom-dir``): damaged files, odd headers, labels-CSV rows and
file-system oddities. Most share the run ``dicom`` (one folder, ingested with ``--pseudonymise-paths``, then
preprocessed and sharded); those that aborted a whole run when the issue was filed get a small run each
(``dicom-alone-*``), so one crash does not hide the verdict on every other kind."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tests.corpus import dicom_files as df
from tests.corpus.model import (
    FATAL,
    PLANT,
    PLANT_DIR,
    QUARANTINED,
    SKIPPED,
    USED,
    USED_OR_QUARANTINED,
    Build,
    Expect,
    Kind,
    RunSpec,
    Target,
)

LABELS = "labels.csv"
LABELS_HEADER = "path,label,patient_id,laterality,view"


def _seed(b: Build, k: int = 0) -> int:
    return 1000 + 10 * int(b.tag[1:]) + k


def patient_dir(b: Build, n: int) -> str:
    """A folder named like a patient (``DOE^JANE`` exports), its name planted (searched with or without ``^``)."""
    b.plant_path(f"{PLANT_DIR}{n}")
    return f"{PLANT_DIR}{n}^DOE"


def row(b: Build, path: str, label: str, patient_id: str = "", laterality: str = "", view: str = "") -> int:
    """One labels-CSV row; returns its line number."""
    return b.add_line(",".join((path, label, patient_id, laterality, view)))


# ----------------------------------------------------------------------------------------- runs


def setup_site(b: Build, good_patients: int = 5) -> None:
    """Good images: ``good_patients`` patients with a benign and a malignant image each (labelled in the CSV,
    some rows repeating the header's PatientID), enough for a 60/20/20 split by patient."""
    b.add_line(LABELS_HEADER)
    for p in range(1, good_patients + 1):
        b.tag = f"G{p:02d}"
        pid = f"{PLANT}ID{b.tag}"
        for k, (side, view, label) in enumerate((("L", "CC", "benign"), ("R", "MLO", "malignant"))):
            rel = f"a_good/p{p}/img{k}.dcm"
            df.planted_dicom(b, rel, 500 + 10 * p + k, patient_id=pid, laterality=side, view=view)
            row(b, rel, label, pid if k == 0 else "")


def finish_site(b: Build) -> None:
    (b.root / LABELS).write_text("\n".join(b.lines) + "\n", encoding="utf-8")


def dicom_argv(paths: dict[str, Path]) -> list[str]:
    return ["ingest", "--source", "dicom-dir", "--root", str(paths["root"]), "--pseudonymise-paths",
            "--out", str(paths["out"])]


def _finish_raw_labels(b: Build) -> None:
    (b.root / LABELS).write_bytes(b.state["labels_bytes"])


def runs() -> list[RunSpec]:
    alone = [RunSpec(f"dicom-alone-{name}", lambda b: setup_site(b, 1), finish_site, dicom_argv, exit_code=0,
                     notes="aborted the whole run when the issue was filed: kept apart")
             for name in ("nonutf8-name", "window-empty", "window-text", "unknown-syntax")]
    fatal = [RunSpec(f"dicom-csv-{name}", lambda b: setup_site(b, 1), _finish_raw_labels, dicom_argv, exit_code=1,
                     notes="the labels CSV cannot be read: a clear error, exit 1")
             for name in ("unclosed-quote", "duplicated-path-column", "latin1")]
    return [RunSpec("dicom", setup_site, finish_site, dicom_argv, exit_code=0, downstream=True,
                    notes="one site folder, --pseudonymise-paths; preprocess + build-dataset on its records"),
            *alone, *fatal,
            RunSpec("dicom-nothing-usable", lambda b: b.add_line(LABELS_HEADER), finish_site, dicom_argv,
                    exit_code=1, notes="every file bad: nothing usable, exit 1, records folder still written")]


# ----------------------------------------------------------------------------------------- kinds: damaged files


def truncated(b: Build) -> list[Target]:
    path = df.planted_dicom(b, "b_bad/truncated.dcm", _seed(b))
    df.cut(path, 0.6)
    return [Target("b_bad/truncated.dcm")]


def corrupt_pixels(b: Build) -> list[Target]:
    path = df.planted_dicom(b, "b_bad/corrupt_rle.dcm", _seed(b), transfer_syntax="rle")
    df.corrupt_rle_header(path)
    return [Target("b_bad/corrupt_rle.dcm")]


def _window(center: str, width: str, rel: str):
    def make(b: Build) -> list[Target]:
        path = df.planted_dicom(b, rel, _seed(b), window=(float(df.WINDOW_CENTER), float(df.WINDOW_WIDTH)))
        df.patch(path, df.WINDOW_CENTER, center)
        df.patch(path, df.WINDOW_WIDTH, width)
        return [Target(rel)]
    return make


def window_empty(b: Build) -> list[Target]:
    df.planted_dicom(b, "b_bad/window_empty.dcm", _seed(b), extra={"WindowCenter": "", "WindowWidth": ""})
    return [Target("b_bad/window_empty.dcm")]


def unknown_syntax(b: Build) -> list[Target]:
    path = df.planted_dicom(b, "b_bad/unknown_syntax.dcm", _seed(b))
    df.patch(path, b"1.2.840.10008.1.2.1\x00", b"1.2.3.4.5.6.7.8.9.0\x00")  # same length: meta unchanged
    return [Target("b_bad/unknown_syntax.dcm")]


def _rescale(slope: str, rel: str):
    def make(b: Build) -> list[Target]:
        path = df.planted_dicom(b, rel, _seed(b), rescale=(float(df.SLOPE), 0.0))
        df.patch(path, df.SLOPE, slope)
        return [Target(rel)]
    return make


def modality_name(b: Build) -> list[Target]:
    name = f"{PLANT}MOD^{b.tag}"  # 15 characters: fits CS (16)
    b.plant(name)
    df.planted_dicom(b, "b_bad/modality_name.dcm", _seed(b), modality=name)
    return [Target("b_bad/modality_name.dcm")]


def _edited(rel: str, change, **kw):
    def make(b: Build) -> list[Target]:
        df.edit(df.planted_dicom(b, rel, _seed(b), **kw), change)
        return [Target(rel)]
    return make


def _pixels8(b: Build):
    return (df.phantom(_seed(b)) >> 4).astype("uint8")


def bits_over_allocated(b: Build) -> list[Target]:
    df.planted_dicom(b, "b_bad/bits_16_in_8.dcm", _seed(b), pixels=_pixels8(b), bits_stored=8,
                     extra={"BitsStored": 16, "HighBit": 15})
    return [Target("b_bad/bits_16_in_8.dcm")]


def data_8bit_header_16bit(b: Build) -> list[Target]:
    df.planted_dicom(b, "b_bad/data8_header16.dcm", _seed(b), pixels=_pixels8(b), bits_stored=8,
                     extra={"BitsAllocated": 16, "BitsStored": 12, "HighBit": 11})
    return [Target("b_bad/data8_header16.dcm")]


def empty_file(b: Build) -> list[Target]:
    (b.root / "b_bad").mkdir(parents=True, exist_ok=True)
    (b.root / "b_bad/empty.dcm").write_bytes(b"")
    return [Target("b_bad/empty.dcm")]


def not_dicom(b: Build) -> list[Target]:
    (b.root / "b_bad").mkdir(parents=True, exist_ok=True)
    (b.root / "b_bad/scan.bin").write_bytes(np.random.default_rng(_seed(b)).bytes(3000))
    return [Target("b_bad/scan.bin")]


def nothing_usable(b: Build) -> list[Target]:
    df.cut(df.planted_dicom(b, "only/truncated.dcm", _seed(b)), 0.5)
    (b.root / "only/empty.dcm").write_bytes(b"")
    return [Target("only/truncated.dcm"), Target("only/empty.dcm")]


# ----------------------------------------------------------------------------------------- kinds: odd but usable


def _flagged_for_processing(record: dict) -> str | None:
    """The record says the image is FOR PROCESSING (a key or a value, spelt with a space or an underscore)."""
    import json
    import re

    fields = {k: v for k, v in record.items() if k not in ("image_path", "record_id")}  # not the file's name
    dumped = json.dumps(fields).lower()
    return None if re.search(r"for[ _]processing", dumped) else "the record does not flag FOR PROCESSING"


def _label(label: str):
    def check(record: dict) -> str | None:
        return None if record.get("label") == label else f"label {record.get('label')!r}, expected {label!r}"
    return check


def monochrome1(b: Build) -> list[Target]:
    df.planted_dicom(b, "c_odd/mono1.dcm", _seed(b), photometric="MONOCHROME1")
    row(b, "c_odd/mono1.dcm", "benign")
    return [Target("c_odd/mono1.dcm")]


def for_processing(b: Build) -> list[Target]:
    df.planted_dicom(b, "c_odd/intent.dcm", _seed(b), extra={"PresentationIntentType": "FOR PROCESSING"})
    return [Target("c_odd/intent.dcm")]


def patient_folder(b: Build) -> list[Target]:
    rel = f"{patient_dir(b, 1)}/study1/img.dcm"
    df.planted_dicom(b, rel, _seed(b), laterality="R", view="MLO")
    row(b, rel, "malignant")
    return [Target(rel)]


def corrupt_in_patient_folder(b: Build) -> list[Target]:
    """A damaged file in a folder named like a patient: the decoder's own words must not carry the path."""
    rel = f"{patient_dir(b, 2)}/study2/corrupt.dcm"
    df.corrupt_rle_header(df.planted_dicom(b, rel, _seed(b), transfer_syntax="rle"))
    return [Target(rel)]


def changed_before_preprocess(b: Build) -> list[Target]:
    """Good at ingest, cut before preprocess runs (a file replaced in between): preprocess quarantines it, and
    its log line must name the record by its pseudonym, not by the patient-named path."""
    rel = f"{patient_dir(b, 3)}/study3/later.dcm"
    path = df.planted_dicom(b, rel, _seed(b))
    row(b, rel, "benign")
    b.state.setdefault("before_downstream", []).append(lambda: df.cut(path, 0.5))
    return [Target(rel)]


def uid_named(b: Build) -> list[Target]:
    rel = "c_odd/1.2.826.0.1.3680043.8.498.1234567"
    df.planted_dicom(b, rel, _seed(b))
    row(b, rel, "benign")
    return [Target(rel)]


def no_preamble(b: Build) -> list[Target]:
    df.without_preamble(df.planted_dicom(b, "c_odd/no_preamble.dcm", _seed(b)))
    return [Target("c_odd/no_preamble.dcm")]


def name_in_view(b: Build) -> list[Target]:
    name = f"{PLANT}VW^{b.tag}"
    b.plant(name)
    df.planted_dicom(b, "c_odd/view_name.dcm", _seed(b), view=None, extra={"ViewPosition": name})
    return [Target("c_odd/view_name.dcm")]


def nonutf8_name(b: Build) -> list[Target]:
    folder = b.root / "c_odd"
    folder.mkdir(parents=True, exist_ok=True)
    good = df.planted_dicom(b, "c_odd/tmp.dcm", _seed(b))
    os.rename(good, os.path.join(os.fsencode(folder), b"nonutf8_\xff\xfe.dcm"))
    return [Target(match="nonutf8_")]


# ----------------------------------------------------------------------------------------- kinds: duplicates


def duplicate_sop(b: Build) -> list[Target]:
    uid = f"1.2.826.0.1.3680043.8.498.{900 + int(b.tag[1:])}"
    df.planted_dicom(b, "d_dup/sop_1_first.dcm", _seed(b), sop_uid=uid)
    df.planted_dicom(b, "d_dup/sop_2_again.dcm", _seed(b, 1), sop_uid=uid, patient_id=f"{PLANT}ID{b.tag}OTHER")
    return [Target("d_dup/sop_2_again.dcm")]


def duplicate_pixels(b: Build) -> list[Target]:
    pixels = df.phantom(_seed(b))
    df.planted_dicom(b, "d_dup/px_1_first.dcm", _seed(b), pixels=pixels)
    df.planted_dicom(b, "d_dup/px_2_again.dcm", _seed(b), pixels=pixels, patient_id=f"{PLANT}ID{b.tag}OTHER")
    return [Target("d_dup/px_2_again.dcm")]


# ----------------------------------------------------------------------------------------- kinds: labels CSV rows


def csv_patient_conflict(b: Build) -> list[Target]:
    rel = "e_labels/patient_conflict.dcm"
    df.planted_dicom(b, rel, _seed(b))
    other = f"{PLANT}CSVID{b.tag}"
    b.plant(other)
    line = row(b, rel, "benign", other)
    return [Target(rel, annotation=LABELS, line=line)]


def csv_laterality(b: Build) -> list[Target]:
    rel = "e_labels/laterality.dcm"
    df.planted_dicom(b, rel, _seed(b), laterality="L")
    line = row(b, rel, "benign", laterality="R")
    return [Target(rel, annotation=LABELS, line=line)]


def csv_unknown_label(b: Build) -> list[Target]:
    rel = "e_labels/unknown_label.dcm"
    df.planted_dicom(b, rel, _seed(b))
    line = row(b, rel, "cancer")
    return [Target(rel, annotation=LABELS, line=line)]


def csv_dot_path(b: Build) -> list[Target]:
    rel = "e_labels/dotted.dcm"
    df.planted_dicom(b, rel, _seed(b))
    (b.root / "e_labels/x").mkdir(parents=True, exist_ok=True)
    row(b, "./e_labels/x/../dotted.dcm", "malignant")
    return [Target(rel)]


def csv_outside(b: Build) -> list[Target]:
    df.planted_dicom(b, "../outside.dcm", _seed(b))  # beside the folder, not in it
    line = row(b, "../outside.dcm", "benign")
    return [Target(annotation=LABELS, line=line)]


def csv_missing_file(b: Build) -> list[Target]:
    line = row(b, "e_labels/gone.dcm", "benign")
    return [Target(annotation=LABELS, line=line)]


def _raw_labels(data: bytes, target_line: int | None = None):
    def make(b: Build) -> list[Target]:
        b.state["labels_bytes"] = data
        return [Target(LABELS, annotation=LABELS, line=target_line)]
    return make


GOOD_ROWS = b"a_good/p1/img0.dcm,benign\na_good/p1/img1.dcm,malignant\n"

# ----------------------------------------------------------------------------------------- kinds: file system


def hidden_file(b: Build) -> list[Target]:
    df.planted_dicom(b, "f_fs/.hidden.dcm", _seed(b))
    return [Target("f_fs/.hidden.dcm")]


def hidden_folder(b: Build) -> list[Target]:
    df.planted_dicom(b, "f_fs/.trash/img.dcm", _seed(b))
    return [Target(match="f_fs/.trash")]


def sidecars(b: Build) -> list[Target]:
    folder = b.root / "f_fs/side"
    folder.mkdir(parents=True, exist_ok=True)
    names = ("notes.txt", "series.json", "README.md", "DICOMDIR")
    for name in names:
        (folder / name).write_bytes(b"sidecar\n")
    return [Target(f"f_fs/side/{name}") for name in names]


def symlinked_folder(b: Build) -> list[Target]:
    elsewhere = b.root.parent / "elsewhere"
    df.planted_dicom(b, "../elsewhere/img.dcm", _seed(b))
    (b.root / "f_fs").mkdir(parents=True, exist_ok=True)
    (b.root / "f_fs/linked").symlink_to(elsewhere, target_is_directory=True)
    return [Target(match="f_fs/linked")]


def broken_link(b: Build) -> list[Target]:
    (b.root / "f_fs").mkdir(parents=True, exist_ok=True)
    (b.root / "f_fs/dangling.dcm").symlink_to(b.root.parent / "nowhere.dcm")
    return [Target("f_fs/dangling.dcm")]


# ----------------------------------------------------------------------------------------- the table

Q, U, S = QUARANTINED, USED, SKIPPED
ANY_DUP = ("duplicate",)  # naming the first copy and both (pseudonymous) patients
PX = ("bad_pixel_transform",)  # a degenerate rescale or window (issue build 2)


def kinds() -> list[Kind]:
    d = "dicom"
    return [
        Kind("dicom_truncated", d, truncated, Expect(Q, ("truncated",))),
        Kind("dicom_corrupt_pixel_data", d, corrupt_pixels, Expect(Q, ("corrupt", "truncated"))),
        Kind("dicom_window_empty", "dicom-alone-window-empty", window_empty,
             Expect(USED_OR_QUARANTINED, ("bad_pixel_transform",),
                    why="issue: TypeError aborted the run; an empty window may also be ignored")),
        Kind("dicom_window_non_numeric", "dicom-alone-window-text",
             _window("abcdef", "ghijkl", "b_bad/window_text.dcm"), Expect(Q, PX, why="issue: TypeError aborted the run")),
        Kind("dicom_window_nan", d, _window("NaN", "NaN", "b_bad/window_nan.dcm"),
             Expect(Q, PX, why="issue build 2: NaN/inf window quarantined")),
        Kind("dicom_window_inf", d, _window("inf", "inf", "b_bad/window_inf.dcm"), Expect(Q, PX)),
        Kind("dicom_window_width_zero", d, _window(df.WINDOW_CENTER, "0", "b_bad/window_zero.dcm"), Expect(Q, PX)),
        Kind("dicom_unknown_transfer_syntax", "dicom-alone-unknown-syntax", unknown_syntax,
             Expect(Q, ("unsupported_transfer_syntax",), why="issue: ValueError aborted the run")),
        Kind("dicom_rescale_slope_zero", d, _rescale("0", "b_bad/slope_zero.dcm"),
             Expect(Q, PX, why="issue: slope 0 was taken as 1")),
        Kind("dicom_rescale_nan", d, _rescale("NaN", "b_bad/slope_nan.dcm"), Expect(Q, PX)),
        Kind("dicom_rescale_overflow", d, _rescale("1e+308", "b_bad/slope_overflow.dcm"), Expect(Q, PX)),
        Kind("dicom_modality_holding_name", d, modality_name,
             Expect(Q, ("modality",), why="issue: the name was echoed in quarantine.md and the log")),
        Kind("dicom_rgb", d, _edited("b_bad/rgb.dcm", df.make_rgb), Expect(Q, ("rgb",))),
        Kind("dicom_bits_stored_over_allocated", d, bits_over_allocated, Expect(Q, ("bit_depth",))),
        Kind("dicom_8bit_data_16bit_header", d, data_8bit_header_16bit, Expect(Q, ("truncated",))),
        Kind("dicom_multiframe", d, _edited("b_bad/multiframe.dcm", df.make_multiframe), Expect(Q, ("multiframe",))),
        Kind("dicom_no_pixel_data", d, _edited("b_bad/no_pixels.dcm", df.drop_pixel_data), Expect(Q, ("corrupt",))),
        Kind("dicom_empty_file", d, empty_file, Expect(Q, ("empty",))),
        Kind("dicom_not_dicom", d, not_dicom, Expect(Q, ("not_dicom",))),
        Kind("dicom_monochrome1", d, monochrome1, Expect(U)),
        Kind("dicom_for_processing", d, for_processing,
             Expect(U, record_check=_flagged_for_processing, why="issue build 2: flagged in the record, not quarantined")),
        Kind("dicom_patient_named_folder", d, patient_folder, Expect(U, record_check=_label("malignant"))),
        Kind("dicom_corrupt_in_patient_folder", d, corrupt_in_patient_folder,
             Expect(Q, ("corrupt",), why="issue: the folder reached the log through pydicom's text")),
        Kind("dicom_changed_before_preprocess", d, changed_before_preprocess,
             Expect(U, why="issue: preprocess logged 'quarantined ... (/real/path)'")),
        Kind("dicom_uid_named_file", d, uid_named, Expect(U, record_check=_label("benign"))),
        Kind("dicom_without_preamble", d, no_preamble, Expect(U)),
        Kind("dicom_name_in_view_position", d, name_in_view, Expect(USED_OR_QUARANTINED)),
        Kind("dicom_nonutf8_file_name", "dicom-alone-nonutf8-name", nonutf8_name,
             Expect(USED_OR_QUARANTINED, ("bad_file_name",), why="issue: UnicodeEncodeError aborted the run")),
        Kind("dicom_duplicate_sop_uid_other_patient", d, duplicate_sop, Expect(Q, ANY_DUP)),
        Kind("dicom_identical_pixels_other_patient", d, duplicate_pixels, Expect(Q, ANY_DUP)),
        Kind("labels_patient_id_contradicts_header", d, csv_patient_conflict,
             Expect(Q, ("patient_conflict",), why="issue build 4: a contradicting labels-CSV patient id is quarantined")),
        Kind("labels_laterality_mismatch", d, csv_laterality, Expect(Q, ("annotation_mismatch",))),
        Kind("labels_unknown_label", d, csv_unknown_label, Expect(Q, ("unknown_label",))),
        Kind("labels_dot_dotdot_path", d, csv_dot_path,
             Expect(U, record_check=_label("malignant"), why="issue: ./a/../b.dcm was wrongly outside root")),
        Kind("labels_path_outside_root", d, csv_outside, Expect(Q, ("bad_annotation",), why="issue: ../outside.dcm refused")),
        Kind("labels_row_missing_file", d, csv_missing_file, Expect(Q, ("missing_file",))),
        Kind("labels_unclosed_quote", "dicom-csv-unclosed-quote",
             _raw_labels(b"path,label\n" + GOOD_ROWS + b'"a_good/p1/img1.dcm,benign\n'), Expect(FATAL)),
        Kind("labels_duplicated_path_column", "dicom-csv-duplicated-path-column",
             _raw_labels(b"path,label,path\na_good/p1/img0.dcm,benign,a_good/p1/img1.dcm\n"), Expect(FATAL)),
        Kind("labels_not_utf8", "dicom-csv-latin1",
             _raw_labels(b"path,label\na_good/p1/img0.dcm,b\xe9nign\n"), Expect(FATAL)),
        Kind("fs_hidden_file", d, hidden_file, Expect(S, ("hidden",), why="issue build 3: skipped and listed with its reason")),
        Kind("fs_hidden_folder", d, hidden_folder, Expect(S, ("hidden",))),
        Kind("fs_sidecar_files", d, sidecars, Expect(S, ("sidecar",))),
        Kind("fs_symlinked_folder", d, symlinked_folder, Expect(S, ("linked_folder",))),
        Kind("fs_broken_symlink", d, broken_link, Expect(Q, ("missing_file",))),
        Kind("dicom_nothing_usable", "dicom-nothing-usable", nothing_usable, Expect(Q, ("truncated", "empty"))),
    ]
