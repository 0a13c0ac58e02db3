"""A synthetic DICOM writer: valid single-frame MG files with realistic (fake) identifiers, for tests and demos.

The headers carry a patient name, id, birth date, accession number, institution and UIDs so that tests can
check that none of them leaks past :mod:`mammoflow.io.dicom`, which reads these files like any other.
Compressed transfer syntaxes use pydicom's encoders (RLE, JPEG 2000) or GDCM (JPEG Lossless, JPEG-LS).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mammoflow.io.dicom_header import MG_SOP_CLASS
from mammoflow.io.dicom_pixels import stored_range
from mammoflow.storage import atomic_write_bytes

# Transfer syntax names accepted by write_dicom -> (UID, encoder). "gdcm" encoders transcode an
# uncompressed file with GDCM; "pydicom" ones use Dataset.compress with pydicom's own plugins.
_TRANSFER_SYNTAXES: dict[str, tuple[str, str]] = {
    "explicit_le": ("1.2.840.10008.1.2.1", "none"),
    "implicit_le": ("1.2.840.10008.1.2", "none"),
    "rle": ("1.2.840.10008.1.2.5", "pydicom"),
    "jpeg2000": ("1.2.840.10008.1.2.4.90", "pydicom"),
    "jpeg_lossless": ("1.2.840.10008.1.2.4.70", "gdcm"),
    "jpeg_ls": ("1.2.840.10008.1.2.4.80", "gdcm"),
}



def available_transfer_syntaxes() -> list[str]:
    """Names :func:`write_dicom` can write here (compressed ones depend on the installed plugins)."""
    from pydicom.pixels import get_encoder

    names = []
    for name, (uid, how) in _TRANSFER_SYNTAXES.items():
        if how == "none":
            names.append(name)
        elif how == "pydicom":
            if get_encoder(uid).is_available:
                names.append(name)
        elif how == "gdcm":
            try:
                import gdcm  # noqa: F401
            except ImportError:
                continue
            names.append(name)
    return names


def write_dicom(
    path: str | Path,
    pixels: np.ndarray,
    *,
    patient_id: str,
    patient_name: str,
    laterality: str | None = None,
    view: str | None = None,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 16,
    transfer_syntax: str = "explicit_le",
    modality: str = "MG",
    birth_date: str = "19600101",
    accession_number: str = "A0000001",
    institution_name: str = "Synthetic Breast Clinic",
    study_date: str = "20000101",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    series_description: str = "",
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    voi_lut: tuple[int, int, np.ndarray] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write a valid single-frame MG DICOM file atomically (for tests and demo data).

    ``pixels`` is the image as it should be *displayed* in stored-value units (``uint8``/``uint16``,
    or ``int16`` for signed data) with values within ``bits_stored`` bits; for ``MONOCHROME1`` the stored
    values are inverted (``max + min - v``) so both photometrics encode the same picture. The header carries
    realistic identifiers (name, id, birth date, accession number, institution, UIDs) so that tests can
    check none leaks. ``rescale`` = (slope, intercept); ``window`` = (center, width); ``voi_lut`` =
    (first mapped value, bits per entry, entries); ``extra`` sets any further keyword = value.
    UIDs not given are derived from the other identifiers, so the same call writes the same bytes.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import UID, generate_uid

    if transfer_syntax not in _TRANSFER_SYNTAXES:
        raise ValueError(f"unknown transfer syntax {transfer_syntax!r}; use one of {sorted(_TRANSFER_SYNTAXES)}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError("photometric must be MONOCHROME1 or MONOCHROME2")
    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16, np.int16):
        raise ValueError(f"expected a 2-D uint8/uint16/int16 array, got {pixels.dtype} {pixels.shape}")
    signed = pixels.dtype == np.int16
    allocated = 8 if pixels.dtype == np.uint8 else 16
    if not 1 <= bits_stored <= allocated:
        raise ValueError(f"bits_stored {bits_stored} does not fit {pixels.dtype}")
    s_lo, s_hi = stored_range(bits_stored, signed)
    if pixels.size and (int(pixels.min()) < s_lo or int(pixels.max()) > s_hi):
        raise ValueError(f"pixel values must lie in [{s_lo}, {s_hi}] for {bits_stored} bits stored")
    stored = pixels
    if photometric == "MONOCHROME1":
        stored = (s_hi + s_lo - pixels.astype(np.int64)).astype(pixels.dtype)

    path = Path(path)
    entropy = [patient_id, patient_name, str(laterality), str(view), accession_number, path.name]
    study_uid = study_uid or generate_uid(entropy_srcs=[*entropy[:2], accession_number, "study"])
    series_uid = series_uid or generate_uid(entropy_srcs=[*entropy, "series"])
    sop_uid = sop_uid or generate_uid(entropy_srcs=[*entropy, "instance"])

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(MG_SOP_CLASS)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = UID(_TRANSFER_SYNTAXES["explicit_le"][0])
    ds.SOPClassUID = UID(MG_SOP_CLASS)
    ds.SOPInstanceUID = UID(sop_uid)
    ds.StudyInstanceUID = UID(study_uid)
    ds.SeriesInstanceUID = UID(series_uid)
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = "F"
    ds.AccessionNumber = accession_number
    ds.InstitutionName = institution_name
    ds.ReferringPhysicianName = "Referrer^Synthetic"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "090000"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = modality
    ds.PresentationIntentType = "FOR PRESENTATION"
    if series_description:
        ds.SeriesDescription = series_description
    if laterality:
        ds.ImageLaterality = laterality
        ds.Laterality = laterality
    if view:
        ds.ViewPosition = view
    ds.ImagerPixelSpacing = [0.1, 0.1]
    ds.set_pixel_data(np.ascontiguousarray(stored), photometric, bits_stored, generate_instance_uid=False)
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = (f"{float(v):g}" for v in rescale)
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = (f"{float(v):g}" for v in window)
    if voi_lut is not None:
        first, lut_bits, entries = voi_lut
        item = Dataset()
        entries = np.asarray(entries, dtype=np.uint16)
        # Both attributes have an ambiguous VR (US/SS, US/OW): give it explicitly.
        n_entries = len(entries) if len(entries) < 65536 else 0  # 0 means 65536 entries
        item.add_new("LUTDescriptor", "US", [n_entries, int(first), int(lut_bits)])
        item.add_new("LUTData", "US", entries.tolist())
        ds.VOILUTSequence = Sequence([item])
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)

    uid, how = _TRANSFER_SYNTAXES[transfer_syntax]
    if how == "pydicom":
        ds.compress(UID(uid), np.ascontiguousarray(stored), generate_instance_uid=False)
    elif how == "none":
        ds.file_meta.TransferSyntaxUID = UID(uid)
    data = _dataset_bytes(ds)
    if how == "gdcm":
        data = _gdcm_transcode(data, uid, path)
    atomic_write_bytes(path, data)


def _dataset_bytes(ds: Any) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _gdcm_transcode(data: bytes, uid: str, path: Path) -> bytes:
    """Re-encode an uncompressed DICOM byte string with GDCM (JPEG Lossless SV1, JPEG-LS)."""
    import gdcm

    syntax = {"1.2.840.10008.1.2.4.70": gdcm.TransferSyntax.JPEGLosslessProcess14_1,
              "1.2.840.10008.1.2.4.80": gdcm.TransferSyntax.JPEGLSLossless}[uid]
    with tempfile.TemporaryDirectory(prefix=".gdcm-", dir=path.parent if path.parent.exists() else None) as tmp:
        src, dst = os.path.join(tmp, "in.dcm"), os.path.join(tmp, "out.dcm")
        with open(src, "wb") as fh:
            fh.write(data)
        reader = gdcm.ImageReader()
        reader.SetFileName(src)
        if not reader.Read():
            raise RuntimeError("GDCM could not read the uncompressed file it was given")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(syntax))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise RuntimeError(f"GDCM could not encode transfer syntax {uid}")
        writer = gdcm.ImageWriter()
        writer.SetFileName(dst)
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError(f"GDCM could not write transfer syntax {uid}")
        with open(dst, "rb") as fh:
            return fh.read()

