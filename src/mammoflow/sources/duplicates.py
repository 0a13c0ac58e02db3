"""The same image twice: caught by its SOP Instance UID or by its decoded pixels, the later copy quarantined.

A hospital export can hold one image twice: copied into two folders, or re-exported under another PatientID (a
merged or corrected patient record). Ingested twice, the two copies can land in different splits, so a model is
tested on an image it was trained on. Files are read in sorted path order and the first copy is kept; a later
file whose SOP Instance UID or decoded pixels (sha256 of the display pixels, their shape and type) equal an
earlier one's is quarantined as ``duplicate``, naming the first by its record id and, when their patients differ,
both pseudonymous patient ids (never the header's PatientID).

The SOP Instance UID itself is never kept: only its salted pseudonym (:func:`mammoflow.io.dicom.pseudonym`),
kept in the record (``extra.sop_instance``) with the pixel digest (``extra.pixel_sha256``) so that a later
incremental ingest can compare new files with the records it carries over.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mammoflow.errors import InputError
from mammoflow.io.dicom import pseudonym
from mammoflow.records import Record

#: The header mark of the built-in phantoms (`mammoflow demo-data`), the only images read with the demo salt.
PHANTOM_MANUFACTURER = "mammoflow demo-data phantom"


@dataclass(frozen=True)
class ImageIdentity:
    """What tells one image from another, without an identifier: the SOP Instance UID's salted pseudonym, and
    whether the file is one of mammoflow's phantoms (its Manufacturer)."""

    sop_instance: str | None
    phantom: bool


def read_identity(path: Path, salt: str) -> ImageIdentity:
    """The :class:`ImageIdentity` of a DICOM file, from its header (pixels not read). A file whose header cannot
    be read has none (``ImageIdentity(None, False)``): reading it as an image fails and quarantines it."""
    import pydicom

    from mammoflow.io.dicom import pydicom_warnings

    try:
        with pydicom_warnings():  # what pydicom says about the file is reported when the image is read
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True,
                                 specific_tags=["SOPInstanceUID", "Manufacturer"])
            uid = str(ds.get("SOPInstanceUID", "") or "").strip()
            if not uid and getattr(ds, "file_meta", None) is not None:
                uid = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "") or "").strip()
            maker = str(ds.get("Manufacturer", "") or "").strip()
    except Exception:  # noqa: BLE001 - any damage: no identity; the image reader quarantines the file
        return ImageIdentity(None, False)
    return ImageIdentity(pseudonym(uid, salt, prefix="sop-") if uid else None, maker == PHANTOM_MANUFACTURER)


def pixel_digest(pixels: np.ndarray) -> str:
    """sha256 of decoded pixels with their shape and type (the same picture however the file encodes it)."""
    array = np.ascontiguousarray(pixels)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass
class DuplicateFinder:
    """Remembers the first record of each SOP Instance UID pseudonym and pixel digest (see the module docstring)."""

    by_key: dict[tuple[str, str], Record] = field(default_factory=dict)

    def check(self, rec: Record, path: Path) -> InputError | None:
        """The ``duplicate`` error of ``rec`` when an earlier record is the same image; else remember it."""
        keys = [(what, value) for what, value in (("SOP Instance UID", rec.extra.get("sop_instance")),
                                                  ("decoded pixels", rec.extra.get("pixel_sha256"))) if value]
        for what, value in keys:
            first = self.by_key.get((what, value))
            if first is not None:
                return duplicate_error(rec, first, path, what)
        for key in keys:
            self.by_key[key] = rec
        return None


def duplicate_error(rec: Record, first: Record, path: Path | str, what: str) -> InputError:
    """``rec`` is the same image as ``first`` (same ``what``): the error that quarantines ``rec``."""
    patients = ""
    if rec.patient_id != first.patient_id:
        patients = (f"; it is filed under another patient (pseudonymous ids {first.patient_id} for the first, "
                    f"{rec.patient_id} for this one): the same image re-exported under another PatientID")
    return InputError(path, f"the same image as {first.record_id} (same {what}){patients}",
                      "remove one of the two copies (one image in two places could land in two splits); if the "
                      "patient ids differ, correct the PatientID of the wrong one", code="duplicate",
                      record_id=rec.record_id)
