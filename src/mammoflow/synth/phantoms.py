"""Phantom datasets: synthetic mammograms (:mod:`mammoflow.synth.mammogram`) laid out as the built-in demo data and
the test data of every stage.

:func:`write_mias_dataset` and :func:`write_dicom_dataset` lay phantoms out like the MIAS mini-database and
like a CBIS-DDSM download (``mammoflow demo-data``), with a ``ground_truth.json`` listing every lesion. The same
seed lays out the same dataset, and a rerun on a folder that already holds it does nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from mammoflow.errors import ConfigError
from mammoflow.io.images import write_pgm
from mammoflow.logs import progress
from mammoflow.sources.duplicates import PHANTOM_MANUFACTURER  # the header mark a dicom-dir ingest recognises
from mammoflow.storage import atomic_write_bytes, atomic_write_text
from mammoflow.synth.dicom_writer import available_transfer_syntaxes, write_dicom
from mammoflow.synth.layouts import (
    CALC_COLUMNS,
    CALC_DISTRIBUTIONS,
    CALC_TYPES,
    CSV_FILES,
    MASS_COLUMNS,
    MASS_MARGINS,
    MASS_SHAPES,
    MIAS_CLASS,
    PATHOLOGIES,
    case_name,
    cbis_csv_text,
    csv_uid,
    mias_header,
    mias_line,
    mias_xy,
    tcia_series_folder,
    tcia_study_folder,
)
from mammoflow.synth.mammogram import (
    DENSITIES,
    KINDS,
    LESION_LABELS,
    Phantom,
    PhantomLesion,
    disc_mask,
    make_phantom,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- datasets

GROUND_TRUTH_FILE = "ground_truth.json"
# Bumped whenever the drawing changes, so an old demo folder is not mistaken for a finished new one.
GENERATOR_VERSION = 1


def _lesion_dict(lesion: PhantomLesion, **more: Any) -> dict[str, Any]:
    return {**asdict(lesion), **more}


def read_ground_truth(folder: str | Path) -> dict[str, Any] | None:
    """The ``ground_truth.json`` of a phantom dataset folder, or None when there is none (or it is unreadable)."""
    try:
        return json.loads((Path(folder) / GROUND_TRUTH_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _resume_or_start(out: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    """The finished ground truth if ``out`` already holds this very dataset; ``None`` to (re)generate.

    Generation is deterministic, so an interrupted run is simply redone; a folder holding a *different*
    demo dataset is refused rather than mixed.
    """
    done = read_ground_truth(out)
    if done is None:
        return None
    if done.get("params") == params:
        log.info("%s already holds this demo dataset: nothing to do", out)
        return done
    raise ConfigError(f"{out} already holds a different demo dataset ({done.get('params')}). "
                      "Fix: choose another --out folder or delete this one")


def _write_ground_truth(out: Path, truth: dict[str, Any]) -> None:
    atomic_write_text(out / GROUND_TRUTH_FILE, json.dumps(truth, indent=1, sort_keys=True) + "\n")


def write_mias_dataset(out: str | Path, n_images: int = 24, seed: int = 0, size: int = 1024) -> dict[str, Any]:
    """A MIAS-like folder: ``mdb001.pgm``... (8-bit P5, MLO views), ``Info.txt`` and ``ground_truth.json``.

    Consecutive pairs are the two breasts of one patient; as the MIAS notes say, even numbers are left
    breasts and odd numbers right ones. About a third of the images have lesions (some several); their
    ``Info.txt`` lines use the MIAS origin at the bottom-left (``x = col``, ``y = size - row``).
    ``ground_truth.json`` gives the same lesions in row/col. Returns the ground truth.
    """
    if n_images < 1:
        raise ValueError("n_images must be at least 1")
    out = Path(out)
    params = {"format": "mias", "n_images": n_images, "seed": seed, "size": size, "version": GENERATOR_VERSION}
    done = _resume_or_start(out, params)
    if done is not None:
        return done
    out.mkdir(parents=True, exist_ok=True)
    plan = np.random.default_rng([seed, 0])
    abnormal = set(plan.choice(n_images, size=max(1, round(n_images / 3)), replace=False).tolist())
    densities = plan.choice(DENSITIES, size=(n_images + 1) // 2, p=[0.35, 0.35, 0.3])
    lines: list[str] = []
    images: list[dict[str, Any]] = []
    for k in progress(range(1, n_images + 1), desc="MIAS phantoms", total=n_images, unit="img"):
        refnum, patient = f"mdb{k:03d}", (k - 1) // 2
        laterality = "L" if k % 2 == 0 else "R"
        wanted: list[tuple[str, str]] = []
        if k - 1 in abnormal:
            for _ in range(2 if plan.random() < 0.15 else 1):
                wanted.append((str(plan.choice(KINDS, p=[0.4, 0.3, 0.3])),
                               str(plan.choice(LESION_LABELS, p=[0.55, 0.45]))))
        density = str(densities[patient])
        phantom = make_phantom([seed, k], shape=(size, size), laterality=laterality, view="MLO", lesions=wanted,
                               density=density, bits=8, patient_index=patient)
        write_pgm(out / f"{refnum}.pgm", phantom.image)
        lesions = []
        for lesion in phantom.lesions:
            x, y = mias_xy(lesion.center_row, lesion.center_col, size)
            lines.append(mias_line(refnum, density, lesion.kind, lesion.label, x, y, lesion.radius))
            lesions.append(_lesion_dict(lesion, mias_class=MIAS_CLASS[lesion.kind], x=x, y=y))
        if not phantom.lesions:
            lines.append(mias_line(refnum, density))
        images.append({"refnum": refnum, "file": f"{refnum}.pgm", "patient_index": patient,
                       "laterality": laterality, "view": "MLO", "background": density, "height": size,
                       "width": size, "lesions": lesions, "text_box": list(phantom.text_box or ())})
    info = mias_header(seed, n_images, size) + "\n".join(lines) + "\n\n" + "=" * 65 + "\n"
    atomic_write_text(out / "Info.txt", info)
    truth = {"params": params, "coordinates": "row/col, row 0 at the top", "images": images}
    _write_ground_truth(out, truth)
    return truth


@dataclass
class _Breast:
    patient_id: str
    patient_number: int
    laterality: str
    abnormality: str  # mass / calc
    split: str  # Training / Test
    density: int  # BI-RADS breast density 1..4
    findings: list[dict[str, Any]]  # per abnormality: kind, label, pathology and the CSV attributes
    views: tuple[str, ...]


def _finding(rng: np.random.Generator, abnormality: str) -> dict[str, Any]:
    pathology = str(rng.choice(PATHOLOGIES, p=[0.4, 0.4, 0.2]))
    label = "malignant" if pathology == "MALIGNANT" else "benign"
    if abnormality == "mass":
        kind = "spiculated" if rng.random() < (0.65 if label == "malignant" else 0.15) else "circumscribed"
        attributes = {"mass shape": str(rng.choice(MASS_SHAPES[kind])),
                      "mass margins": str(rng.choice(MASS_MARGINS[kind]))}
    else:
        kind = "calcification"
        attributes = {"calc type": str(rng.choice(CALC_TYPES[label])),
                      "calc distribution": str(rng.choice(CALC_DISTRIBUTIONS))}
    assessment = int(rng.choice([4, 5])) if label == "malignant" else int(rng.choice([2, 3, 4]))
    return {"kind": kind, "label": label, "pathology": pathology, "assessment": assessment,
            "subtlety": int(rng.integers(1, 6)), **attributes}


def _plan_cbis(rng: np.random.Generator, n_images: int) -> list[_Breast]:
    """Patients with one or both breasts, each breast seen in CC and MLO, one abnormality type per breast.

    Splits are drawn per patient and abnormality type (so each type's split is patient-disjoint); some
    patients have a mass in one breast and calcifications in the other, and the first such patient is put
    in different splits for the two types, as happens in the real CSVs.
    """
    breasts: list[_Breast] = []
    remaining, number, both_seen = n_images, 0, False
    while remaining > 0:
        number += int(rng.integers(1, 4))
        pid = f"P_{number:05d}"
        both = remaining >= 4 and (not both_seen and n_images >= 8 or rng.random() < 0.15)
        if both:
            types = ["mass", "calc"] if rng.random() < 0.5 else ["calc", "mass"]
        else:  # the rarer type so far, so that both types (and so all four CSVs) fill up
            count = {t: len({b.patient_id for b in breasts if b.abnormality == t}) for t in ("mass", "calc")}
            rarer = min(count, key=count.get) if count["mass"] != count["calc"] else str(rng.choice(["mass", "calc"]))
            types = [rarer] * (2 if remaining >= 4 and rng.random() < 0.4 else 1)
        sides = ["L", "R"] if rng.random() < 0.5 else ["R", "L"]
        splits = {t: ("Test" if rng.random() < 0.3 else "Training") for t in dict.fromkeys(types)}  # in draw order
        if both and not both_seen:
            splits = {"mass": "Training", "calc": "Test"} if rng.random() < 0.5 else \
                {"mass": "Test", "calc": "Training"}
            both_seen = True
        for abnormality, side in zip(types, sides, strict=False):
            views = ("CC", "MLO") if remaining >= 2 else ("CC",)
            remaining -= len(views)
            n_findings = 2 if rng.random() < 0.2 else 1
            findings = [_finding(rng, abnormality) for _ in range(n_findings)]
            breasts.append(_Breast(pid, number, side, abnormality, splits[abnormality],
                                   int(rng.integers(1, 5)), findings, views))
            if remaining <= 0:
                break
    _cover_both_splits(breasts)
    return breasts


def _cover_both_splits(breasts: list[_Breast]) -> None:
    """Move a patient to the other split when all of a type's patients fell in one (fills all four CSVs)."""
    for abnormality in ("mass", "calc"):
        mine = [b for b in breasts if b.abnormality == abnormality]
        patients = sorted({b.patient_id for b in mine})
        if len(patients) >= 2 and len({b.split for b in mine}) == 1:
            # Prefer a patient with only this type, so the mass/calc split mismatch of another stays.
            single = [p for p in patients
                      if all(b.abnormality == abnormality for b in breasts if b.patient_id == p)]
            chosen = (single or patients)[-1]
            moved = "Test" if mine[0].split == "Training" else "Training"
            for breast in mine:
                if breast.patient_id == chosen:
                    breast.split = moved


def _patient_identity(rng: np.random.Generator, used: set[str]) -> dict[str, str]:
    """Fake but realistic identifiers for one patient (what de-identification must remove)."""
    surnames = ("HUGHES", "OKAFOR", "LINDQVIST", "MORENO", "TANAKA", "KOWALSKI", "BRENNAN", "HADDAD",
                "NGUYEN", "SCHMIDT", "OYELARAN", "FITZGERALD", "PETROVA", "ALVAREZ", "MACLEOD", "DUBOIS")
    given = ("MARGARET", "AMARA", "INGRID", "LUCIA", "YUKI", "HELENA", "SIOBHAN", "LAYLA", "MAI", "GRETA")
    while True:
        name = f"{rng.choice(surnames)}^{rng.choice(given)}^{chr(65 + int(rng.integers(26)))}"
        if name not in used:
            used.add(name)
            break

    def date(first_year: int, last_year: int) -> str:
        year = int(rng.integers(first_year, last_year + 1))
        return f"{year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"

    return {"PatientName": name, "PatientID": f"MRN-{int(rng.integers(10**7, 10**8))}",
            "PatientBirthDate": date(1935, 1975), "StudyDate": date(1998, 2007),
            "AccessionNumber": f"ACC{int(rng.integers(10**6, 10**7))}",
            "InstitutionName": "Phantom General Hospital Breast Unit"}


def _dicom_header(identity: dict[str, str], laterality: str, view: str) -> dict[str, str]:
    """Keyword arguments of :func:`mammoflow.synth.dicom_writer.write_dicom` for one image of a patient."""
    return {"patient_id": identity["PatientID"], "patient_name": identity["PatientName"],
            "birth_date": identity["PatientBirthDate"], "accession_number": identity["AccessionNumber"],
            "institution_name": identity["InstitutionName"], "study_date": identity["StudyDate"],
            "laterality": laterality, "view": view}


def _csv_row(breast: _Breast, view: str, number: int, finding: dict[str, Any], paths: tuple[str, str, str]
             ) -> dict[str, Any]:
    """One CSV line (one abnormality seen in one view), with the column names of its abnormality type."""
    full, crop, mask = paths
    row = {"patient_id": breast.patient_id,
           ("breast_density" if breast.abnormality == "mass" else "breast density"): breast.density,
           "left or right breast": {"L": "LEFT", "R": "RIGHT"}[breast.laterality], "image view": view,
           "abnormality id": number,
           "abnormality type": "mass" if breast.abnormality == "mass" else "calcification",
           "assessment": finding["assessment"], "pathology": finding["pathology"],
           "subtlety": finding["subtlety"], "image file path": full, "cropped image file path": crop,
           "ROI mask file path": mask}
    row.update({k: v for k, v in finding.items() if k in MASS_COLUMNS or k in CALC_COLUMNS})
    return row


def _csv_roi_paths(rng: np.random.Generator, roi_case: str) -> tuple[str, str]:
    """Crop and mask paths as the CSVs give them: shared UID folders, ``000000``/``000001`` in either order,
    and usually an embedded newline after the ``000001`` one."""
    folder = f"{roi_case}/{csv_uid(rng)}/{csv_uid(rng)}"
    names = ["000000.dcm", "000001.dcm"] if rng.random() < 0.5 else ["000001.dcm", "000000.dcm"]
    newline = "\n" if rng.random() < 0.75 else ""
    crop, mask = (f"{folder}/{n}" + (newline if n == "000001.dcm" else "") for n in names)
    return crop, mask


def _write_abnormality(out: Path, rng: np.random.Generator, roi_case: str, phantom: Phantom,
                       lesion: PhantomLesion, write: Callable[..., None]) -> dict[str, Any]:
    """Write the crop and the ROI mask of one lesion into one series folder, as ``1-1``/``1-2`` in random order.

    ``write(path, pixels, **kw)`` writes one DICOM with the full image's header. Returns the file names and
    the crop box (row0, col0, row1, col1; end exclusive) in the full image.
    """
    folder = Path("CBIS-DDSM", roi_case, tcia_study_folder(rng), tcia_series_folder(rng, "ROI mask images"))
    names = ["1-1.dcm", "1-2.dcm"] if rng.random() < 0.5 else ["1-2.dcm", "1-1.dcm"]
    crop_rel, mask_rel = folder / names[0], folder / names[1]
    height, width = phantom.image.shape
    half = int(lesion.radius * 1.25) + 4
    r0, c0 = max(0, lesion.center_row - half), max(0, lesion.center_col - half)
    r1, c1 = min(height, lesion.center_row + half + 1), min(width, lesion.center_col + half + 1)
    write(out / crop_rel, np.ascontiguousarray(phantom.image[r0:r1, c0:c1]), transfer_syntax="explicit_le",
          series_description="cropped images")
    mask = disc_mask((height, width), lesion.center_row, lesion.center_col, lesion.radius)
    write(out / mask_rel, mask.astype(np.uint8) * np.uint8(255), bits_stored=8, photometric="MONOCHROME2",
          transfer_syntax="rle" if rng.random() < 0.5 else "explicit_le", series_description="ROI mask images")
    return {"crop_file": crop_rel.as_posix(), "mask_file": mask_rel.as_posix(), "crop_box": [r0, c0, r1, c1]}


def _write_dicom_with(defaults: dict[str, Any], path: Path, pixels: np.ndarray, **kw: Any) -> None:
    write_dicom(path, pixels, **{**defaults, **kw})


def write_dicom_dataset(out: str | Path, n_images: int = 16, seed: int = 0,
                        size: tuple[int, int] = (640, 480)) -> dict[str, Any]:
    """A CBIS-DDSM-like folder of MG DICOMs, the four description CSVs and ``ground_truth.json``.

    Layout as a TCIA download writes it::

        out/CBIS-DDSM/Mass-Training_P_00001_LEFT_CC/<study>/<series>/1-1.dcm     full mammogram
        out/CBIS-DDSM/Mass-Training_P_00001_LEFT_CC_1/<study>/<series>/1-1.dcm   crop or ROI mask
        out/CBIS-DDSM/Mass-Training_P_00001_LEFT_CC_1/<study>/<series>/1-2.dcm   the other one
        out/mass_case_description_train_set.csv  (and the three other CSVs)

    Crop and mask are ``1-1``/``1-2`` in random order (tell them apart by content: the mask has the full
    image's size and only 0/255). The CSVs have the real headers, CRLF line ends, UID-style folder names
    that differ from the ones on disk (only the case folder matches) and ``000000.dcm``/``000001.dcm``
    names, the ``000001`` path often with an embedded trailing newline. Full images are 16-bit (BitsStored
    12, 14 or 16 per patient), some MONOCHROME1, in a mix of transfer syntaxes; headers carry fake
    identifiers (listed per image in the ground truth so that tests can check none leaks) and the Manufacturer
    ``mammoflow demo-data phantom``: the mark with which ``ingest --source dicom-dir`` reads phantoms without a
    site salt (with the public demo salt, said in records_meta.json); real images always need one.
    Returns the ground truth.
    """
    if n_images < 1:
        raise ValueError("n_images must be at least 1")
    height, width = int(size[0]), int(size[1])
    out = Path(out)
    params = {"format": "dicom", "n_images": n_images, "seed": seed, "size": [height, width],
              "version": GENERATOR_VERSION}
    done = _resume_or_start(out, params)
    if done is not None:
        return done
    rng = np.random.default_rng([seed, 1])
    breasts = _plan_cbis(rng, n_images)
    share = {"explicit_le": 5.0, "rle": 2.0, "jpeg2000": 1.5, "jpeg_lossless": 1.5}
    syntaxes = [t for t in share if t in available_transfer_syntaxes()]
    weights = np.array([share[t] for t in syntaxes]) / sum(share[t] for t in syntaxes)
    identities: dict[str, dict[str, str]] = {}
    bits_of: dict[str, int] = {}
    used_names: set[str] = set()
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {key: [] for key in CSV_FILES}
    images: list[dict[str, Any]] = []
    jobs = [(breast, view) for breast in breasts for view in breast.views]
    bar = progress(jobs, desc="DICOM phantoms", total=len(jobs), unit="img")
    for index, (breast, view) in enumerate(bar):
        pid = breast.patient_id
        if pid not in identities:
            identities[pid] = _patient_identity(rng, used_names)
            bits_of[pid] = int(rng.choice([12, 14, 16]))  # one scanner per patient
        bits = bits_of[pid]
        photometric = "MONOCHROME1" if rng.random() < 0.25 else "MONOCHROME2"
        syntax = str(rng.choice(syntaxes, p=weights))
        case = case_name(breast.abnormality, breast.split, pid, breast.laterality, view)
        phantom = make_phantom([seed, 2, index], shape=(height, width), laterality=breast.laterality,
                               view=view, lesions=[(f["kind"], f["label"]) for f in breast.findings],
                               density={1: "F", 2: "G", 3: "G", 4: "D"}[breast.density], bits=bits,
                               patient_index=breast.patient_number)
        write = partial(_write_dicom_with, {"photometric": photometric, "bits_stored": bits,
                                            **_dicom_header(identities[pid], breast.laterality, view),
                                            "extra": {"Manufacturer": PHANTOM_MANUFACTURER}})

        full_rel = Path("CBIS-DDSM", case, tcia_study_folder(rng),
                        tcia_series_folder(rng, "full mammogram images"), "1-1.dcm")
        write(out / full_rel, phantom.image, transfer_syntax=syntax,
              series_description="full mammogram images")
        csv_full = f"{case}/{csv_uid(rng)}/{csv_uid(rng)}/000000.dcm"
        lesions = []
        for number, (lesion, finding) in enumerate(zip(phantom.lesions, breast.findings, strict=False), 1):
            files = _write_abnormality(out, rng, f"{case}_{number}", phantom, lesion, write)
            csv_crop, csv_mask = _csv_roi_paths(rng, f"{case}_{number}")
            rows[(breast.abnormality, breast.split)].append(
                _csv_row(breast, view, number, finding, (csv_full, csv_crop, csv_mask)))
            lesions.append(_lesion_dict(lesion, abnormality_id=number, pathology=finding["pathology"], **files))
        if len(phantom.lesions) < len(breast.findings):
            log.warning("%s: only %d of %d lesions fit the image", case, len(phantom.lesions),
                        len(breast.findings))
        images.append({"case": case, "file": full_rel.as_posix(), "patient_id": pid,
                       "abnormality": breast.abnormality, "split": breast.split,
                       "laterality": breast.laterality, "view": view, "photometric": photometric,
                       "transfer_syntax": syntax, "bits_stored": bits, "height": height, "width": width,
                       "lesions": lesions, "header_identifiers": dict(identities[pid])})
    for (abnormality, split), name in CSV_FILES.items():
        ordered = sorted(rows[(abnormality, split)], key=lambda r: (
            r["patient_id"], r["left or right breast"], r["image view"], r["abnormality id"]))
        columns = MASS_COLUMNS if abnormality == "mass" else CALC_COLUMNS
        atomic_write_bytes(out / name, cbis_csv_text(columns, ordered).encode("utf-8"))
    truth = {"params": params, "coordinates": "row/col, row 0 at the top", "images": images,
             "csv_files": sorted(CSV_FILES.values())}
    _write_ground_truth(out, truth)
    return truth
