"""ROI extraction: lesion ROIs (Yu et al.), seeded normal ROIs, whole images (Jaamour et al.), lesion crops (Xi et al.)."""

from __future__ import annotations

import numpy as np
import pytest

from mammoflow.dataset.rois import (
    box_transform,
    crop_padded,
    disk_mask,
    example_id,
    lesion_crop,
    lesion_roi,
    sample_normal_centres,
    square_box,
    whole_image,
)
from mammoflow.errors import InputError
from mammoflow.masks import mask_geometry
from mammoflow.preprocess.ops import breast_mask


def _mammogram(shape=(300, 220), lesions=((150, 60, 6),), seed=0) -> np.ndarray:
    """A dark background with a bright half-ellipse "breast" against the left edge and brighter disk lesions."""
    rng = np.random.default_rng(seed)
    h, w = shape
    rr, cc = np.ogrid[:h, :w]
    breast = ((rr - h / 2) / (h * 0.45)) ** 2 + (cc / (w * 0.8)) ** 2 <= 1.0
    img = np.where(breast, 110, 5).astype(np.float64) + rng.normal(0, 3, shape)
    for r, c, rad in lesions:
        img[disk_mask(shape, r, c, rad)] = 250
    return np.clip(img, 0, 255).astype(np.uint8)


def _bright_centroid(img: np.ndarray, threshold: int = 200) -> tuple[float, float]:
    rows, cols = np.nonzero(img > threshold)
    return rows.mean(), cols.mean()


def test_lesion_roi_is_centred_on_the_lesion():
    img = _mammogram(lesions=((140, 70, 6),))
    roi, box = lesion_roi(img, 140, 70, size=64)
    assert roi.shape == (64, 64) and roi.dtype == np.uint8
    assert box == (140 - 32, 70 - 32, 140 + 32, 70 + 32)
    r, c = _bright_centroid(roi)
    assert abs(r - 32) <= 0.5 and abs(c - 32) <= 0.5


def test_lesion_roi_near_a_border_is_shifted_not_padded():
    img = _mammogram(lesions=((4, 8, 3),))
    roi, box = lesion_roi(img, 4, 8, size=64)
    assert roi.shape == (64, 64)
    assert box == (0, 0, 64, 64)  # slid inwards: every pixel is an image pixel
    np.testing.assert_array_equal(roi, img[:64, :64])
    # The lesion is off-centre now, and box_transform says where.
    t = box_transform(box, 64)
    want_r, want_c = t.apply_points(4, 8)
    got_r, got_c = _bright_centroid(roi)
    assert abs(got_r - want_r) < 1 and abs(got_c - want_c) < 1
    # The bottom-right corner too.
    _, box = lesion_roi(img, 299, 219, size=64)
    assert box == (300 - 64, 220 - 64, 300, 220)


def test_roi_larger_than_the_image_is_padded_with_zeros():
    img = np.full((40, 300), 77, dtype=np.uint16)
    roi, box = lesion_roi(img, 20, 150, size=64)
    assert roi.shape == (64, 64) and roi.dtype == np.uint16
    assert box[0] == -12 and box[2] == 52  # centred on the image along the short axis
    assert (roi[:12] == 0).all() and (roi[52:] == 0).all() and (roi[12:52] == 77).all()


def test_non_breast_area_is_zeroed():
    img = _mammogram()
    mask = breast_mask(img)
    roi, box = lesion_roi(img, 150, 150, size=120, breast_mask=mask)
    crop_mask = crop_padded(mask, box)
    assert (roi[~crop_mask] == 0).all()
    assert (roi[crop_mask] > 0).mean() > 0.99
    raw, _ = lesion_roi(img, 150, 150, size=120)
    assert (raw[~crop_mask] > 0).any()  # the background was not black before


def test_scale_to_radius_keeps_large_lesions_whole():
    img = _mammogram(lesions=((150, 80, 50),))
    roi, box = lesion_roi(img, 150, 80, size=64, radius=50, scale_to_radius=True, margin=1.2)
    assert roi.shape == (64, 64)
    assert box[2] - box[0] == 120 and box[3] - box[1] == 120  # max(64, 2 * 50 * 1.2)
    # The whole lesion disk (diameter 100 px -> 53 px after scaling) is inside the ROI, centred.
    r, c = _bright_centroid(roi)
    assert abs(r - 31.5) < 1.5 and abs(c - 31.5) < 1.5
    assert (roi[0] < 200).all() and (roi[-1] < 200).all()
    fixed, fixed_box = lesion_roi(img, 150, 80, size=64, radius=50)
    assert fixed_box[2] - fixed_box[0] == 64 and (fixed > 200).mean() > 0.9  # Yu's fixed side: lesion fills it


@pytest.mark.parametrize("stride", [None, 3])
def test_normal_centres_are_inside_the_breast_and_away_from_lesions(stride):
    lesions = [(150, 60, 6), (60, 40, 10)]
    img = _mammogram(lesions=lesions)
    mask = breast_mask(img)
    size, min_distance = 48, 30.0
    centres = sample_normal_centres(mask, 6, size, np.random.default_rng(3), avoid=lesions,
                                    min_distance=min_distance, min_breast_fraction=0.9, stride=stride)
    assert len(centres) == 6 and len(set(centres)) == 6
    if stride:
        assert all((r - size // 2) % stride == 0 and (c - size // 2) % stride == 0 for r, c in centres)
    for r, c in centres:
        assert mask[r, c]
        box = square_box(r, c, size, mask.shape)
        assert box[0] >= 0 and box[1] >= 0 and box[2] <= mask.shape[0] and box[3] <= mask.shape[1]
        assert crop_padded(mask, box).mean() >= 0.9
        for lr, lc, rad in lesions:
            assert np.hypot(r - lr, c - lc) - rad >= min_distance
        roi, _ = lesion_roi(img, r, c, size=size, breast_mask=mask)
        assert (roi > 200).sum() == 0  # no lesion pixel inside a normal ROI


def test_normal_centres_are_seeded():
    mask = breast_mask(_mammogram())
    a = sample_normal_centres(mask, 5, 40, np.random.default_rng(11))
    b = sample_normal_centres(mask, 5, 40, np.random.default_rng(11))
    c = sample_normal_centres(mask, 5, 40, np.random.default_rng(12))
    assert a == b
    assert a != c


def test_normal_centres_min_separation():
    mask = breast_mask(_mammogram())
    centres = sample_normal_centres(mask, 4, 40, np.random.default_rng(0), min_separation=40)
    assert len(centres) == 4
    for i, (r1, c1) in enumerate(centres):
        for r2, c2 in centres[i + 1:]:
            assert np.hypot(r1 - r2, c1 - c2) >= 40


def test_no_valid_normal_centre_is_a_clear_input_error():
    mask = np.zeros((200, 200), dtype=bool)
    mask[90:110, 90:110] = True  # a breast far smaller than the ROI
    with pytest.raises(InputError) as err:
        sample_normal_centres(mask, 1, 64, np.random.default_rng(0), path="img.png")
    assert err.value.code == "no_normal_roi" and "img.png" in str(err.value) and "Fix:" in str(err.value)
    # A lesion covering the whole breast leaves nothing either.
    full = np.ones((100, 100), dtype=bool)
    with pytest.raises(InputError):
        sample_normal_centres(full, 1, 40, np.random.default_rng(0), avoid=[(50, 50, 30)], min_distance=40)


def test_whole_image_keeps_the_aspect_ratio_with_padding():
    img = _mammogram(shape=(300, 150))
    out, t = whole_image(img, 128, pad=True)
    assert out.shape == (128, 128) and out.dtype == np.uint8
    # 300x150 -> 128x64, centred: 32 columns of padding on each side.
    assert (out[:, :32] == 0).all() and (out[:, 96:] == 0).all()
    assert (out[:, 32:96] > 0).any()
    r, c = t.apply_points(150, 60)
    r0, c0 = _bright_centroid(out)
    assert abs(r - r0) < 1.5 and abs(c - c0) < 1.5
    stretched, _ = whole_image(img, (96, 80), pad=False)
    assert stretched.shape == (96, 80) and (stretched[:, 0] > 0).any()


def test_lesion_crop_from_a_mask_holds_the_lesion_with_context():
    img = _mammogram(lesions=((120, 70, 12),))
    mask = disk_mask(img.shape, 120, 70, 12)
    crop, box = lesion_crop(img, 32, mask=mask, context=0.5, min_side=8)
    assert crop.shape == (32, 32)
    side = box[2] - box[0]
    assert side == box[3] - box[1] == 50  # 25 px extent * (1 + 2 * 0.5)
    rows, cols = np.nonzero(mask)
    assert box[0] <= rows.min() and rows.max() < box[2] and box[1] <= cols.min() and cols.max() < box[3]
    r, c = _bright_centroid(crop)
    assert abs(r - 15.5) < 1 and abs(c - 15.5) < 1
    by_disk, disk_box = lesion_crop(img, 32, center=(120, 70), radius=12, context=0.5, min_side=8)
    assert by_disk.shape == (32, 32) and abs((disk_box[2] - disk_box[0]) - side) <= 2
    with pytest.raises(ValueError):
        lesion_crop(img, 32)


def test_mask_geometry_and_example_ids():
    mask = disk_mask((100, 100), 30, 60, 10)
    r, c, rad = mask_geometry(mask)
    assert abs(r - 30) < 0.1 and abs(c - 60) < 0.1 and abs(rad - 10) < 0.5
    assert example_id("mias:mdb001", "lesion", 0) == "mias:mdb001#lesion0"
    assert example_id("mias:mdb003", "normal", 2) == "mias:mdb003#normal2"
    assert example_id("cbis-ddsm:P_1_LEFT_CC", "image") == "cbis-ddsm:P_1_LEFT_CC#image"
    with pytest.raises(ValueError):
        example_id("x", "lesion")


def test_rois_on_a_phantom_follow_its_ground_truth():
    from mammoflow.synth.phantoms import make_phantom

    ph = make_phantom(4, shape=(256, 256), view="CC", lesions=[("circumscribed", "benign"), ("spiculated", "malignant")])
    assert len(ph.lesions) == 2
    truth = ph.lesion_mask.astype(np.uint8) * 255
    for les in ph.lesions:
        _, box = lesion_roi(ph.image, les.center_row, les.center_col, size=64, breast_mask=ph.breast_mask)
        own = disk_mask(ph.image.shape, les.center_row, les.center_col, les.radius)
        roi_truth = crop_padded(own.astype(np.uint8), box)
        r, c = np.nonzero(roi_truth)
        want_r, want_c = box_transform(box, 64).apply_points(les.center_row, les.center_col)
        assert abs(r.mean() - want_r) < 1 and abs(c.mean() - want_c) < 1
    avoid = [(les.center_row, les.center_col, les.radius) for les in ph.lesions]
    centres = sample_normal_centres(ph.breast_mask, 3, 48, np.random.default_rng(0), avoid=avoid,
                                    min_distance=34, min_breast_fraction=0.9)
    for r, c in centres:
        box = square_box(r, c, 48, ph.image.shape)
        assert crop_padded(truth, box).max() == 0  # no lesion pixel in a normal ROI
        assert crop_padded(ph.breast_mask, box).mean() >= 0.9
