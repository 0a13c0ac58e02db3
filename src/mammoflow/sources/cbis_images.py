"""CBIS-DDSM: one record joined to its DICOM files on disk, the work on one image that an ingest runs in its worker
pool (:mod:`mammoflow.sources.parallel`).

:func:`attach_images` reads the full mammogram (decode, validate, hash) and the abnormality folders (the ROI mask
told from the crop by content), and hands the decoded display pixels of the image on to the preprocess of the
same run (:mod:`mammoflow.io.handoff`). What :mod:`mammoflow.sources.cbis_ddsm` does with the
result (duplicates, quarantine, accounting) happens in file order in the reader's process.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from mammoflow.errors import InputError
from mammoflow.io.handoff import Handoff
from mammoflow.masks import is_binary_mask, mask_geometry
from mammoflow.records import Record
from mammoflow.sources._common import check_name
from mammoflow.sources.duplicates import pixel_digest, read_identity

log = logging.getLogger(__name__)


ImageKey = tuple[str, str, str]  # (patient, LEFT/RIGHT, CC/MLO)


class CaseFolders(Protocol):
    """The TCIA case folders under a root, by what their names say (:class:`mammoflow.sources.cbis_ddsm.DiskIndex`)."""

    root: Path
    full: dict[ImageKey, list[tuple[str, str, Path]]]  # -> (kind, split, folder)
    abnormal: dict[tuple[str, str, str, str, int], list[Path]]  # (kind, *key, abnormality) -> folders

    def dicoms(self, folder: Path) -> list[Path]: ...


@dataclass(frozen=True)
class ImageContext:
    """What every image's work needs: the folders on disk, the salt, and where decoded pixels are handed on."""

    index: CaseFolders
    salt: str
    handoff: Handoff


@dataclass(frozen=True)
class ImageJob:
    """One record to join to its files: its image's key, and each lesion's (calc/mass, abnormality number)."""

    record: Record
    key: ImageKey
    abnormalities: dict[str, tuple[str, int]]  # lesion id -> (kind, abnormality id)


def split_crop_and_mask(images: Sequence[np.ndarray], full_shape: tuple[int, int] | None) -> tuple[int, int | None]:
    """Indices ``(mask, crop)`` among the DICOM images of one abnormality folder, told apart by content.

    The mask is binary and, when ``full_shape`` is known, the size of the full mammogram; the crop is what is left
    (``None`` when the folder holds only the mask). Raises ``ValueError`` when the content does not say.
    """
    masks = [i for i, img in enumerate(images) if is_binary_mask(img)
             and (full_shape is None or tuple(img.shape[:2]) == tuple(full_shape))]
    if len(masks) != 1:
        sizes = ", ".join(f"{img.shape[1]}x{img.shape[0]}{' binary' if is_binary_mask(img) else ''}"
                          for img in images)
        want = "" if full_shape is None else f" of the full image size {full_shape[1]}x{full_shape[0]}"
        raise ValueError(f"{len(masks)} binary mask(s){want} among {len(images)} file(s) ({sizes or 'none'})")
    others = [i for i in range(len(images)) if i != masks[0]]
    if len(others) > 1:
        raise ValueError(f"{len(images)} files: expected one mask and at most one crop")
    return masks[0], (others[0] if others else None)


def _choose_full(candidates: list[tuple[str, str, Path]], rec: Record) -> tuple[Path, list[Path]]:
    """The full-image folder for ``rec``: CBIS stores the same mammogram under Calc- and Mass- names."""
    kinds = rec.extra["abnormality_types"]
    ranked = sorted(candidates, key=lambda c: (c[0] not in kinds, c[1] != rec.split, c[0], str(c[2])))
    return ranked[0][2], [c[2] for c in ranked[1:]]


def _full_image_file(rec: Record, key: ImageKey, index: CaseFolders) -> tuple[Path, list[Path]]:
    """The DICOM file of ``rec``'s full mammogram, and the other folders holding the same image."""
    candidates = index.full.get(key, [])
    name = f"{{Calc,Mass}}-{{Training,Test}}_{key[0]}_{key[1]}_{key[2]}"
    if not candidates:
        raise InputError(index.root / name, "full mammogram folder not found under --root",
                         "download this image from TCIA into --root, or use --metadata-only",
                         code="missing_file", record_id=rec.record_id)
    folder, alternates = _choose_full(candidates, rec)
    files = index.dicoms(folder)
    if not files:
        raise InputError(folder, "no DICOM file in the full mammogram folder", "re-download this series from TCIA",
                         code="missing_file", record_id=rec.record_id)
    for path in files:
        check_name(path, index.root, rec.record_id)
    if len(files) > 1:
        log.warning("%s: %d DICOM files in the full image folder, using the first (the others are listed in "
                    "skipped.jsonl)", rec.record_id, len(files))
        rec.extra["extra_files"] = [f.relative_to(index.root).as_posix() for f in files[1:]]
    return files[0], alternates


def attach_images(ctx: ImageContext, job: ImageJob) -> Record:
    """Join the job's record to its DICOM files on disk; fills path, size, hash, masks, lesion geometry and what
    tells the image from others (``extra.sop_instance``, ``extra.pixel_sha256``). Raises InputError for a file
    that cannot be used. The image's decoded pixels are handed on once everything is read (a quarantined image
    leaves nothing behind); the masks' are not (see :mod:`mammoflow.io.handoff`)."""
    from mammoflow.io.dicom import read_dicom
    from mammoflow.io.files import file_sha256
    from mammoflow.storage.copies import materialise  # fetches a file of a streamed data root when it is read

    rec, index = job.record, ctx.index
    file, alternates = _full_image_file(rec, job.key, index)
    image = read_dicom(materialise(file), salt=ctx.salt, expect_modality="MG")
    for what, found, want in (("laterality", image.laterality, rec.laterality), ("view", image.view, rec.view)):
        if found and want and found != want:
            raise InputError(file, f"DICOM header {what} {found} differs from the CSV's {want}",
                             "check that the folder holds the image the CSV describes", code="annotation_mismatch",
                             record_id=rec.record_id)
    rec.height, rec.width = int(image.rows), int(image.cols)
    if getattr(image, "for_processing", False):  # raw detector data: used, flagged in the record
        rec.extra["for_processing"] = True
    rec.image_path = file.relative_to(index.root).as_posix()
    rec.content_hash = file_sha256(materialise(file))
    identity = read_identity(materialise(file), ctx.salt)
    if identity.sop_instance:
        rec.extra["sop_instance"] = identity.sop_instance
    rec.extra["pixel_sha256"] = pixel_digest(image.pixels)
    if alternates:
        rec.extra["same_image_also_at"] = [f.relative_to(index.root).as_posix() for f in alternates]
    _attach_lesions(rec, job, index)
    ctx.handoff.put(rec.content_hash, image)
    return rec


def _attach_lesions(rec: Record, job: ImageJob, index: CaseFolders) -> None:
    """Each lesion's ROI mask and geometry from its abnormality folder."""
    from mammoflow.io.images import read_image
    from mammoflow.storage.copies import materialise

    for lesion in rec.lesions:
        kind, number = job.abnormalities[lesion.lesion_id]
        folders = index.abnormal.get((kind, *job.key, number), [])
        if not folders:
            lesion.extra["geometry"] = "missing"
            lesion.extra["geometry_note"] = "abnormality folder (crop and ROI mask) not under --root"
            continue
        dcm = [f for d in folders for f in index.dicoms(d)]
        for path in dcm:
            check_name(path, index.root, rec.record_id)
        pixels = [read_image(materialise(f), expect_modality=None) for f in dcm]
        try:
            mask_i, crop_i = split_crop_and_mask(pixels, (rec.height, rec.width))
            row_c, col_c, radius = mask_geometry(pixels[mask_i])
        except ValueError as exc:
            raise InputError(folders[0], f"cannot tell the ROI mask of abnormality {number}: {exc}",
                             "re-download this abnormality from TCIA (the mask must be binary and the size of "
                             "the full image)", code="bad_mask", record_id=rec.record_id) from None
        lesion.mask_path = dcm[mask_i].relative_to(index.root).as_posix()
        lesion.center_row, lesion.center_col, lesion.radius = row_c, col_c, radius
        lesion.extra["geometry_source"] = "ROI mask centroid and equivalent radius sqrt(area/pi)"
        if crop_i is not None:
            lesion.extra["crop_path"] = dcm[crop_i].relative_to(index.root).as_posix()
