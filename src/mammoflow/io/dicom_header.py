"""The safe fields of a DICOM header: validated, de-identified, and never echoing a value.

:func:`header_fields` checks what :func:`mammoflow.io.dicom.read_dicom` needs (modality, greyscale, size, bit
depth, one frame, a known transfer syntax, a usable pixel transform) and keeps only non-identifying fields: the
patient becomes a salted SHA-256 pseudonym; no name, id, date, accession number, institution or UID is kept.
An error names the attribute that failed a check and what was expected, never its value (a damaged header may
hold a patient's name in any attribute); only a well-formed Transfer Syntax UID is named (a UID of a syntax is
not an identifier).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, fields
from typing import Any

from mammoflow.errors import InputError
from mammoflow.io.dicom_pixels import PixelTransformError, check_transform, transform_name

MG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation
# DX, MG and intra-oral X-ray Image Storage - For Processing: raw detector data, not meant to be displayed.
_FOR_PROCESSING_CLASSES = ("1.2.840.10008.5.1.4.1.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.2.1",
                           "1.2.840.10008.5.1.4.1.1.1.3.1")
# SNOMED / SRT codes of the two standard views, for files without ViewPosition.
_VIEW_CODES = {"R-10242": "CC", "399162004": "CC", "R-10226": "MLO", "399368009": "MLO"}
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR", "YBR_PARTIAL_420")
# Modality defined terms (PS3.3 C.7.3.1.1.1): any other value is kept as "unrecognised", never copied.
_MODALITIES = frozenset(
    "AR ASMT AU BDUS BI BMD CR CT CTPROTOCOL DG DOC DX ECG EPS ES FID GM HC HD IO IOL IVOCT IVUS KER KO LEN LS MG "
    "MR M3D NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PLAN POS PR PT PX REG RESP RF RG RTDOSE RTIMAGE RTINTENT "
    "RTPLAN RTRAD RTRECORD RTSEGANN RTSTRUCT RWV SEG SM SMR SR SRF STAIN TEXTUREMAP TG US VA XA XAPROTOCOL XC".split())
_INTENTS = ("FOR PRESENTATION", "FOR PROCESSING")
_UID_FORM = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


@dataclass(repr=False)
class DicomHeader:
    """The safe, non-identifying header fields of one DICOM image.

    ``pseudo_patient_id`` is ``p-`` + the first 16 hex digits of SHA-256(salt, PatientID); ``None`` when the
    file has no PatientID. ``transfer_syntax`` is the syntax's name, ``photometric`` the original value.
    ``modality`` is a defined term (``MG``, ``CT``...), ``"unrecognised"`` for any other value, ``None`` when
    missing. ``for_processing``: the image is raw detector data ("FOR PROCESSING" in Presentation Intent Type or
    Image Type, or a For Processing SOP class), not the processed image a radiologist reads.
    """

    pseudo_patient_id: str | None
    laterality: str | None  # "L" / "R"
    view: str | None  # "CC" / "MLO"
    modality: str | None
    bits_allocated: int
    bits_stored: int
    photometric: str
    transfer_syntax: str
    rows: int
    cols: int
    presentation_intent: str | None  # FOR PRESENTATION / FOR PROCESSING (any other value: None)
    voi: str  # "lut", "window" or "none": which VOI step the header asks for
    pixel_spacing_mm: tuple[float, float] | None
    for_processing: bool

    def _summary(self) -> str:
        parts = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(DicomHeader)]
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"DicomHeader({self._summary()})"



def pseudonym(value: str, salt: str, prefix: str = "p-") -> str:
    """Salted SHA-256 pseudonym: ``prefix`` + 16 hex digits. The same (value, salt) always gives the same id."""
    digest = hashlib.sha256(f"{salt}\x00{value}".encode()).hexdigest()
    return prefix + digest[:16]



class _BadValue(Exception):
    """A header attribute whose value pydicom cannot convert (it is read lazily, so it fails when first used)."""

    def __init__(self, keyword: str):
        super().__init__(keyword)
        self.keyword = keyword


def _value(ds: Any, keyword: str, default: Any = None) -> Any:
    try:
        return ds.get(keyword, default)
    except Exception:  # noqa: BLE001 - whatever pydicom raises, the attribute is named, not its value
        raise _BadValue(keyword) from None


def _text(ds: Any, keyword: str) -> str:
    return str(_value(ds, keyword, "") or "").strip().upper()


def _int(ds: Any, keyword: str, default: int | None = None) -> int | None:
    value = _value(ds, keyword, default)
    try:
        return default if value is None or value == "" else int(value)
    except (TypeError, ValueError, OverflowError):
        return default


def _laterality(ds: Any) -> str | None:
    for keyword in ("ImageLaterality", "Laterality"):
        value = _text(ds, keyword)
        if value in ("L", "R"):
            return value
    return None


def _view(ds: Any) -> str | None:
    value = _text(ds, "ViewPosition")
    if value in ("CC", "MLO"):
        return value
    for item in _value(ds, "ViewCodeSequence", []) or []:
        code = str(item.get("CodeValue", "")).strip()
        if code in _VIEW_CODES:
            return _VIEW_CODES[code]
    return None


def _pixel_spacing(ds: Any) -> tuple[float, float] | None:
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        try:
            value = ds.get(keyword)
            if value is not None and len(value) == 2:
                return float(value[0]), float(value[1])
        except Exception:  # noqa: BLE001 - a malformed optional value: no spacing
            continue
    return None


def _multi(ds: Any, keyword: str) -> list[str]:
    value = _value(ds, keyword, None)
    if value is None:
        return []
    items = [value] if isinstance(value, (str, bytes)) else list(value)
    return [str(v).strip().upper() for v in items]


def _for_processing(ds: Any) -> bool:
    meta = getattr(ds, "file_meta", None)
    classes = {str(_value(ds, "SOPClassUID", "") or "").strip(),
               str(meta.get("MediaStorageSOPClassUID", "") or "").strip() if meta is not None else ""}
    return _text(ds, "PresentationIntentType") == "FOR PROCESSING" or "FOR PROCESSING" in _multi(ds, "ImageType") \
        or bool(classes & set(_FOR_PROCESSING_CLASSES))


def supported_transfer_syntaxes() -> list[str]:
    """Names of the transfer syntaxes this installation decodes (native ones and those with a plugin)."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID, AllTransferSyntaxes

    names = []
    for uid in AllTransferSyntaxes:
        try:
            decoder = get_decoder(uid)
        except NotImplementedError:
            continue
        if not decoder.is_encapsulated or decoder.is_available:
            names.append(UID(uid).name)
    return names


def _transfer_syntax_name(ds: Any, where: str) -> str:
    """The name of the file's transfer syntax; ``unsupported_transfer_syntax`` when pydicom does not know it.

    A UID is not an identifier, so a well-formed one is named; anything else in the attribute is not echoed.
    """
    from pydicom.uid import UID

    text = str(ds.file_meta.get("TransferSyntaxUID") or "").strip()
    uid = UID(text)
    if uid.is_transfer_syntax:
        return str(uid.name)
    said = f"Transfer Syntax UID {text}" if _UID_FORM.fullmatch(text) and len(text) <= 64 else \
        "the Transfer Syntax UID (not a valid UID)"
    raise InputError(where, f"unsupported transfer syntax: {said} is not a transfer syntax this reader knows",
                     "re-export the image in a supported transfer syntax: " + ", ".join(supported_transfer_syntaxes()),
                     code="unsupported_transfer_syntax")


def header_fields(ds: Any, where: str, salt: str, expect_modality: str | None) -> DicomHeader:
    """Validate the image header and extract the safe fields (identifiers are read, hashed, dropped).

    Raises :class:`InputError` (a value that fails a check is never quoted: the error names the attribute and
    what was expected; an attribute pydicom cannot convert is ``corrupt``) or :class:`PixelTransformError`.
    """
    try:
        return _fields(ds, where, salt, expect_modality)
    except _BadValue as bad:
        raise InputError(where, f"malformed header value: the {bad.keyword} attribute cannot be read",
                         f"correct or remove {bad.keyword} in the header, or re-export the image",
                         code="corrupt") from None


def transform_error(where: str, exc: PixelTransformError) -> InputError:
    """The ``bad_pixel_transform`` InputError of a degenerate pixel transform (the attribute, never its value)."""
    return InputError(where, f"degenerate pixel transform: {exc}",
                      f"correct or remove the {transform_name(exc.attribute)} in the header (or re-export the image)",
                      code="bad_pixel_transform")


def _fields(ds: Any, where: str, salt: str, expect_modality: str | None) -> DicomHeader:
    modality = _text(ds, "Modality") or None
    if expect_modality is not None and modality != expect_modality.upper():
        said = "missing" if modality is None else f"not {expect_modality.upper()}"
        raise InputError(where, f"the Modality attribute is {said}",
                         f"give only {expect_modality} (mammography) images, or pass expect_modality=None "
                         "(CLI: --any-modality) to accept other modalities", code="modality")
    photometric = _text(ds, "PhotometricInterpretation")
    samples = _int(ds, "SamplesPerPixel", 1)
    if photometric in _COLOUR or (samples or 1) > 1:
        said = "Samples per Pixel is above 1" if (samples or 1) > 1 else "a colour Photometric Interpretation"
        raise InputError(where, f"colour image ({said})",
                         "give greyscale (MONOCHROME1/2) mammograms; convert colour images to greyscale",
                         code="rgb")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        said = "missing" if not photometric else "not MONOCHROME1 or MONOCHROME2"
        raise InputError(where, f"unsupported Photometric Interpretation (it is {said})",
                         "give MONOCHROME1 or MONOCHROME2 images", code="corrupt")
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    if rows is None or cols is None:
        raise InputError(where, "no Rows/Columns in the header", "re-export the image", code="corrupt")
    if rows <= 0 or cols <= 0:
        raise InputError(where, "the image has no pixels (Rows or Columns is 0)", "re-export the image",
                         code="empty")
    allocated, stored = _int(ds, "BitsAllocated"), _int(ds, "BitsStored")
    stored = stored if stored is not None else allocated
    if allocated not in (8, 16) or stored is None or not 8 <= stored <= allocated:
        raise InputError(where, "unsupported bit depth (Bits Allocated must be 8 or 16, Bits Stored from 8 to "
                                "Bits Allocated)",
                         "give images with 8 to 16 bits stored in 8 or 16 allocated bits", code="bit_depth")
    frames = _int(ds, "NumberOfFrames", 1) or 1
    if frames > 1:
        raise InputError(where, "multi-frame image (Number of Frames is above 1)",
                         "give 2-D mammograms (one frame); tomosynthesis volumes are not supported",
                         code="multiframe")
    transfer_syntax = _transfer_syntax_name(ds, where)
    check_transform(ds)
    patient = str(_value(ds, "PatientID", "") or "").strip()
    voi = "lut" if _value(ds, "VOILUTSequence") else "window" if "WindowCenter" in ds and "WindowWidth" in ds \
        else "none"
    intent = _text(ds, "PresentationIntentType")
    return DicomHeader(
        pseudo_patient_id=pseudonym(patient, salt) if patient else None,
        laterality=_laterality(ds),
        view=_view(ds),
        modality=None if modality is None else modality if modality in _MODALITIES else "unrecognised",
        bits_allocated=allocated,
        bits_stored=stored,
        photometric=photometric,
        transfer_syntax=transfer_syntax,
        rows=rows,
        cols=cols,
        presentation_intent=intent if intent in _INTENTS else None,
        voi=voi,
        pixel_spacing_mm=_pixel_spacing(ds),
        for_processing=_for_processing(ds),
    )


