"""The DICOM display pipeline: stored pixel values -> what a viewer displays, tissue bright, on 0..65535.

:func:`display_pixels` applies, in the standard's order:

1. stored values (bits above ``BitsStored`` masked off);
2. Modality LUT: ``ModalityLUTSequence`` or ``RescaleSlope``/``RescaleIntercept``;
3. VOI: ``VOILUTSequence`` if present, else ``WindowCenter``/``WindowWidth`` (first of each), else none;
4. the result is mapped linearly from the full output range of the last step that applied — the stored
   range ``[0, 2**BitsStored - 1]`` (or the signed range) sent through the Modality LUT, the window's
   output range, or the VOI LUT's lowest..highest entry — onto ``[0, 65535]``, and inverted when the
   image is ``MONOCHROME1`` (or has ``PresentationLUTShape`` ``INVERSE``).

The range is the *possible* one, not the image's min/max, so the mapping depends only on the header:
a MONOCHROME1 image stored as ``2**BitsStored - 1 - v`` and its MONOCHROME2 twin ``v`` give identical arrays,
a 16-bit MONOCHROME2 image without LUTs comes back unchanged, and a 12-bit one is scaled by 65535/4095.
A linear rescale alone does not change the displayed image (as on a viewer), but a window is applied in
rescaled units, as the standard defines (PS3.3 C.11.2.1.2 for LINEAR, LINEAR_EXACT and SIGMOID).

**Degenerate transforms** raise :class:`PixelTransformError`, which names the attribute and never its value
(:func:`mammoflow.io.dicom.read_dicom` quarantines the file as ``bad_pixel_transform``): a Rescale Slope of 0;
a Rescale or Window value that is empty, not a number, NaN or infinite, or multi-valued where one value is
allowed; Window Center and Width of different lengths or one without the other; a Window Width below 1
(LINEAR) or not above 0; an unknown VOI LUT Function; an output range that overflows or collapses to one value;
and a transform that turns an image of several grey levels into a uniform one (an all-black or flat image).
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from mammoflow.lut import ROWS_PER_BLOCK, lookup, min_max

FULL_SCALE = 65535
_LUT_ENTRIES = 1 << 16  # stored ranges up to 16 bits are mapped through a table of every storable value
_NAMES = {"RescaleSlope": "Rescale Slope", "RescaleIntercept": "Rescale Intercept", "WindowCenter": "Window Center",
          "WindowWidth": "Window Width", "VOILUTFunction": "VOI LUT Function",
          "ModalityLUTSequence": "Modality LUT Sequence", "VOILUTSequence": "VOI LUT Sequence",
          "BitsStored": "Bits Stored"}
_WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


class PixelTransformError(ValueError):
    """The header's pixel transform cannot give a usable image. ``attribute`` is the DICOM keyword at fault; the
    message names it and what was expected, never its value (a damaged header may hold anything, names included).
    """

    def __init__(self, attribute: str, problem: str):
        self.attribute = attribute
        super().__init__(problem)


def attribute_name(keyword: str) -> str:
    """The attribute's name as the standard writes it (``WindowCenter`` -> ``Window Center``)."""
    return _NAMES.get(keyword, keyword)


def header_numbers(ds: Any, keyword: str) -> list[float] | None:
    """The values of a numeric (DS/IS) attribute as finite floats; ``None`` when the attribute is absent.

    Present but empty, not a number, NaN or infinite: :class:`PixelTransformError`.
    """
    if keyword not in ds:
        return None
    name = attribute_name(keyword)
    try:
        value = ds[keyword].value  # pydicom converts lazily: a malformed string fails here
        items = [value] if value is None or isinstance(value, (str, bytes, int, float)) else list(value)
        if not items or any(v is None or (isinstance(v, (str, bytes)) and not v.strip()) for v in items):
            raise PixelTransformError(keyword, f"{name} is empty")
        numbers = [float(v) for v in items]
    except PixelTransformError:
        raise
    except Exception:  # ValueError, TypeError, OverflowError from pydicom's or Python's conversion
        raise PixelTransformError(keyword, f"{name} is not a number") from None
    if not all(math.isfinite(n) for n in numbers):
        raise PixelTransformError(keyword, f"{name} is not a finite number")
    return numbers


def _single(ds: Any, keyword: str, default: float) -> float:
    numbers = header_numbers(ds, keyword)
    if numbers is None:
        return default
    if len(numbers) != 1:
        raise PixelTransformError(keyword, f"{attribute_name(keyword)} holds several values (one expected)")
    return numbers[0]


def rescale(ds: Any) -> tuple[float, float]:
    """``(slope, intercept)`` of the Modality rescale, validated (1, 0 when absent)."""
    slope = _single(ds, "RescaleSlope", 1.0)
    intercept = _single(ds, "RescaleIntercept", 0.0)
    if slope == 0.0:
        raise PixelTransformError("RescaleSlope", "Rescale Slope is 0 (every pixel would get the same value)")
    return slope, intercept


def window(ds: Any) -> tuple[float, float, str] | None:
    """``(center, width, function)`` of the first VOI window, validated; ``None`` when the file has no window."""
    centers, widths = header_numbers(ds, "WindowCenter"), header_numbers(ds, "WindowWidth")
    if centers is None and widths is None:
        return None
    if centers is None or widths is None:
        missing = "WindowCenter" if centers is None else "WindowWidth"
        raise PixelTransformError(missing, f"{attribute_name(missing)} is missing while "
                                           f"{attribute_name('WindowWidth' if centers is None else 'WindowCenter')} "
                                           "is present (both or neither are expected)")
    if len(centers) != len(widths):
        raise PixelTransformError("WindowCenter", "Window Center and Window Width hold different numbers of values "
                                                  "(they are expected in pairs)")
    try:
        function = str(ds.get("VOILUTFunction", "") or "").strip().upper() or "LINEAR"
    except Exception:
        function = "?"
    if function not in _WINDOW_FUNCTIONS:
        raise PixelTransformError("VOILUTFunction", f"VOI LUT Function is not one of {', '.join(_WINDOW_FUNCTIONS)}")
    center, width = centers[0], widths[0]
    if function == "LINEAR" and width < 1:
        raise PixelTransformError("WindowWidth", "Window Width is below 1 (a LINEAR window needs at least 1)")
    if width <= 0:
        raise PixelTransformError("WindowWidth", "Window Width is not above 0")
    return center, width, function


def _bits_stored(ds: Any) -> int:
    return int(ds.get("BitsStored") or ds.BitsAllocated)  # BitsStored is type 1, yet sometimes missing


def _signed(ds: Any) -> bool:
    return int(ds.get("PixelRepresentation", 0) or 0) == 1


def check_transform(ds: Any) -> None:
    """Everything about the transform that the header alone tells (the rescale, its range, the window): a
    header-only read rejects a degenerate transform as a full read does. :class:`PixelTransformError` if not."""
    if not ds.get("ModalityLUTSequence"):
        slope, intercept = rescale(ds)
        s_lo, s_hi = stored_range(_bits_stored(ds), _signed(ds))
        with np.errstate(over="ignore", invalid="ignore"):
            _check_range(s_lo * slope + intercept, s_hi * slope + intercept, "RescaleSlope")
    if not ds.get("VOILUTSequence"):
        window(ds)


def apply_window(values: np.ndarray, center: float, width: float, function: str, y_min: float,
                 y_max: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2 / C.11.2.1.3: a VOI window onto ``y_min..y_max`` (below the window -> ``y_min``)."""
    x = np.asarray(values, dtype=np.float64)
    if function == "SIGMOID":
        return (y_max - y_min) / (1 + np.exp(-4 * (x - center) / width)) + y_min
    if function == "LINEAR":
        center, width = center - 0.5, width - 1
    below = x <= center - width / 2
    above = x > center + width / 2
    between = ~(below | above)
    out = np.where(below, y_min, y_max)
    if between.any():
        out[between] = ((x[between] - center) / width + 0.5) * (y_max - y_min) + y_min
    return out


def stored_range(bits_stored: int, signed: bool) -> tuple[int, int]:
    """Lowest and highest value ``bits_stored`` bits can hold."""
    if signed:
        return -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
    return 0, (1 << bits_stored) - 1


def _lut_bits(ds: Any, keyword: str) -> int:
    return int(ds[keyword][0].LUTDescriptor[2])


def display_pixels(raw: np.ndarray, ds: Any, *, unused_bits: bool = False, overwrite: bool = False) -> np.ndarray:
    """Stored values -> display values on 0..65535, tissue bright (the mapping in the module docstring).

    ``unused_bits=False``: ``raw`` holds stored values; a value outside the stored range has its bits above
    ``BitsStored`` masked off (unsigned) or is clipped (signed). ``unused_bits=True``: ``raw`` is the pixel data as
    stored, bits above ``BitsStored`` included (pydicom's ``correct_unused_bits=False``, no copy): they are ignored
    and a signed value is sign-extended from its top stored bit, as pydicom's own correction does.

    An 8- or 16-bit image is mapped in one pass: a table of every bit pattern of its dtype (at most 65,536 entries),
    built from the display value of each storable value, is looked up (the masking or sign extension is part of
    the table). ``overwrite=True``: ``raw`` (writeable) is the caller's to give up, and may be returned holding the
    result (the commonest mammogram is mapped in place, see :func:`_full_scale_exactly`). Raises
    :class:`PixelTransformError` for a degenerate transform, and pydicom's own errors (``ValueError``,
    ``IndexError``, ...) for a Modality or VOI LUT that cannot be applied.
    """
    signed = _signed(ds)
    s_lo, s_hi = stored_range(_bits_stored(ds), signed)
    if raw.dtype.kind in "ui" and raw.dtype.itemsize <= 2:
        # Every step is a function of the stored value alone: map each storable value once, then each bit pattern.
        lut, stage = _display_values(np.arange(s_lo, s_hi + 1).astype(raw.dtype), ds, s_lo, s_hi)
        scaled = _full_scale_exactly(raw, lut, _bits_stored(ds), signed, in_place=overwrite and raw.flags.writeable)
        if scaled is not None:
            return scaled
        stored = _stored_values(raw.dtype, _bits_stored(ds), signed, unused_bits)
        patterns = raw.view(np.dtype(f"u{raw.dtype.itemsize}").newbyteorder(raw.dtype.byteorder))
        out = lookup(lut[stored - s_lo], patterns)
        if out.size and len(set(min_max(out))) == 1 and _several_values(stored, patterns):
            raise _flat_error(stage)
        return out
    r_lo, r_hi = min_max(raw)
    if r_lo < s_lo or r_hi > s_hi:
        # Bits above BitsStored may hold overlays or garbage: they are not part of the pixel value.
        raw = raw & np.asarray(s_hi, dtype=raw.dtype) if not signed else np.clip(raw, s_lo, s_hi)
        r_lo, r_hi = min_max(raw)
    if raw.dtype.kind in "ui" and s_hi - s_lo < _LUT_ENTRIES:
        lut, stage = _display_values(np.arange(s_lo, s_hi + 1).astype(raw.dtype), ds, s_lo, s_hi)
        out = lookup(lut, raw, first=s_lo)
    else:
        out, stage = _display_values(raw, ds, s_lo, s_hi)
    if out.size and r_lo != r_hi and len(set(min_max(out))) == 1:
        raise _flat_error(stage)
    return np.ascontiguousarray(out)


def _full_scale_exactly(raw: np.ndarray, lut: np.ndarray, bits: int, signed: bool,
                        in_place: bool = False) -> np.ndarray | None:
    """The display pixels of the commonest mammogram, computed in row blocks that stay in the cache instead of
    looked up (in ``raw`` itself when ``in_place``); None when the image is not one (``raw`` untouched).

    It is an unsigned 16-bit image whose stored values have no bit above ``BitsStored`` set, and whose table maps
    ``v`` to ``rint(v * 65535 / (2**bits - 1))`` (or 65535 minus that, inverted): a header without a window, a LUT
    or a rescale that changes the picture. With ``s = 16 - bits``, that value is ``(v << s) + q``, ``q =
    rint(v * (2**s - 1) / (2**bits - 1))`` below ``2**s``: OpenCV's ``convertScaleAbs`` rounds ``q`` in floating
    point, far from any half (the fraction is never within ``1 / (2 * (2**bits - 1))`` of one half, the float error is
    below 1e-5), so the result equals the table's for every value; the route is taken only when it does so for
    every storable value, checked on them.
    """
    if signed or raw.dtype != np.uint16 or raw.ndim != 2 or not 8 <= bits <= 16 or raw.size == 0:
        return None
    invert = bool(lut[0] != 0)
    if not np.array_equal(_scale_up(np.arange(1 << bits, dtype=np.uint16)[None, :], bits, invert)[0], lut):
        return None
    return _scale_up(raw, bits, invert, in_place=in_place)


def _scale_up(values: np.ndarray, bits: int, invert: bool, *, in_place: bool = False,
              rows: int = ROWS_PER_BLOCK) -> np.ndarray | None:
    """``rint(values * 65535 / (2**bits - 1))`` as ``uint16`` for 2-D ``uint16`` values, exactly (see
    :func:`_full_scale_exactly`), ``65535 -`` that when ``invert``, written over ``values`` when ``in_place``;
    None when a value is not below ``2**bits`` (``values`` then untouched)."""
    shift, top = 16 - bits, 1 << bits
    alpha = ((1 << shift) - 1) / (top - 1)
    # Bits above BitsStored set: the table masks them. Every row is checked before any is written (in place too).
    if bits < 16 and min_max(values)[1] >= top:
        return None
    out = values if in_place else np.empty(values.shape, dtype=np.uint16)
    q = np.empty((min(rows, values.shape[0]), values.shape[1]), dtype=np.uint8)
    for start in range(0, values.shape[0], rows):
        v, o = values[start:start + rows], out[start:start + rows]
        q_v = cv2.convertScaleAbs(v, dst=q[:len(v)], alpha=alpha) if shift else None  # before v is shifted
        np.left_shift(v, shift, out=o)
        if q_v is not None:
            np.add(o, q_v, out=o)
        if invert:
            np.invert(o, out=o)
    return out


def _flat_error(stage: str) -> PixelTransformError:
    return PixelTransformError(stage, f"the {transform_name(stage)} map every pixel of the image to one grey level "
                                      "(a flat image)")


def _stored_values(dtype: np.dtype, bits_stored: int, signed: bool, unused_bits: bool) -> np.ndarray:
    """The stored value (``int64``) that each bit pattern of the integer ``dtype`` stands for, indexed by the
    pattern read as unsigned (see :func:`display_pixels` for ``unused_bits``)."""
    width = 8 * dtype.itemsize
    patterns = np.arange(1 << width, dtype=np.int64)
    s_lo, s_hi = stored_range(bits_stored, signed)
    if not signed:
        return patterns & s_hi
    if unused_bits:
        sign = 1 << (bits_stored - 1)
        return ((patterns & ((1 << bits_stored) - 1)) ^ sign) - sign
    values = patterns - (1 << width) * (patterns >= 1 << (width - 1)) if dtype.kind == "i" else patterns
    return np.clip(values, s_lo, s_hi)


def _several_values(stored: np.ndarray, patterns: np.ndarray) -> bool:
    """Whether the image (bit patterns, read unsigned) holds more than one stored value."""
    present = np.flatnonzero(np.bincount(patterns.ravel(), minlength=stored.size))
    values = stored[present]
    return bool(values.min() != values.max())


def _display_values(raw: np.ndarray, ds: Any, s_lo: int, s_hi: int) -> tuple[np.ndarray, str]:
    """Stored values already within ``[s_lo, s_hi]`` -> display values on 0..65535 (``uint16``), and the keyword of
    the last step that applied (what a degenerate result is blamed on)."""
    from pydicom.pixels import apply_modality_lut, apply_voi

    has_mlut = bool(ds.get("ModalityLUTSequence"))
    slope, intercept = (1.0, 0.0) if has_mlut else rescale(ds)
    win = None if ds.get("VOILUTSequence") else window(ds)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is detected below, by the values
        if has_mlut:
            values: np.ndarray = apply_modality_lut(raw, ds)
            lo, hi, stage = 0.0, float((1 << _lut_bits(ds, "ModalityLUTSequence")) - 1), "ModalityLUTSequence"
        elif slope != 1.0 or intercept != 0.0:
            values = raw.astype(np.float64) * slope + intercept
            lo, hi = sorted((s_lo * slope + intercept, s_hi * slope + intercept))
            stage = "RescaleSlope"
        else:
            values = raw
            lo, hi, stage = float(s_lo), float(s_hi), "BitsStored"
        _check_range(lo, hi, stage)

        if ds.get("VOILUTSequence"):
            item = ds.VOILUTSequence[0]
            n_entries = int(item.LUTDescriptor[0]) or 65536
            lut = np.asarray(apply_voi(np.arange(n_entries) + int(item.LUTDescriptor[1]), ds))
            values = apply_voi(np.rint(values).astype(np.int64), ds)
            # The LUT's own output range: files often declare 16-bit entries that only reach 4095.
            lo, hi, stage = float(lut.min()), float(lut.max()), "VOILUTSequence"
        elif win is not None:
            # As pydicom does: values below the window go to the output for the lowest stored value, those above
            # it to the output for the highest (0 and 65535 here, whatever the sign of the slope).
            if not has_mlut:
                lo, hi = s_lo * slope + intercept, s_hi * slope + intercept
            values = apply_window(values, *win, y_min=lo, y_max=hi)
            stage = "WindowCenter"
        _check_range(lo, hi, stage)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise PixelTransformError(stage, f"the {transform_name(stage)} overflow: some pixel values are not finite "
                                             "after the transform")
    invert = str(ds.PhotometricInterpretation).upper() == "MONOCHROME1" or \
        str(ds.get("PresentationLUTShape", "") or "").upper() == "INVERSE"
    return to_full_scale(values, lo, hi, invert), stage


def transform_name(keyword: str) -> str:
    """The name of the step an attribute belongs to, as errors and fixes say it (``Window Center/Width``)."""
    steps = {"RescaleSlope": "Rescale Slope/Intercept", "RescaleIntercept": "Rescale Slope/Intercept",
             "WindowCenter": "Window Center/Width", "WindowWidth": "Window Center/Width",
             "VOILUTFunction": "Window Center/Width and VOI LUT Function"}
    return steps.get(keyword, attribute_name(keyword))


def _check_range(lo: float, hi: float, stage: str) -> None:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise PixelTransformError(stage, f"the {transform_name(stage)} overflow: the output range is not finite")
    if lo == hi:
        raise PixelTransformError(stage, f"the {transform_name(stage)} collapse the output range to one value "
                                         "(every pixel would get the same value)")


def to_full_scale(values: np.ndarray, lo: float, hi: float, invert: bool) -> np.ndarray:
    """Map ``lo``..``hi`` linearly onto 0..65535 as ``uint16`` (``lo`` -> 0), optionally inverted."""
    if hi == lo:
        raise ValueError(f"empty output range [{lo}, {hi}]")
    if values.dtype.kind in "ui" and lo == 0 and hi == FULL_SCALE:
        out = values.astype(np.uint16)  # 16-bit data without LUTs: exact, no float round trip
    else:
        frac = (values.astype(np.float64) - lo) / (hi - lo)
        out = np.rint(np.clip(frac, 0.0, 1.0) * FULL_SCALE).astype(np.uint16)
    if invert:
        out = np.uint16(FULL_SCALE) - out
    return np.ascontiguousarray(out)
