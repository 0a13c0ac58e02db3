"""The pure image functions of mammoflow.preprocess.ops, each on a small image with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from mammoflow.preprocess import ops
from mammoflow.preprocess.ops import Transform


def mammogram(h: int = 160, w: int = 120, dtype: type = np.uint8, right: bool = False, label: bool = True,
              hole: bool = False, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A tiny mammogram-like image and its true breast region: a half ellipse against the left edge (tissue
    brighter towards the chest wall) on a dark noisy background, with a bright burned-in label top right."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[:h, :w]
    d = ((rr - h / 2) / (0.45 * h)) ** 2 + (cc / (0.75 * w)) ** 2
    breast = d < 1
    img = np.where(breast, 0.35 + 0.4 * (1 - d), 0.03) + rng.normal(0, 0.01, (h, w))
    if hole:  # a dark (fatty) patch inside the breast, still breast
        img[(rr - h // 2) ** 2 + (cc - w // 4) ** 2 < 36] = 0.03
    if label:
        img[4:14, w - 24:w - 6] = 0.95
    top = np.iinfo(dtype).max
    img = np.clip(img * top, 0, top).astype(dtype)
    if right:
        return img[:, ::-1].copy(), breast[:, ::-1].copy()
    return img, breast


def centroid(img: np.ndarray) -> tuple[float, float]:
    weights = img.astype(np.float64)
    rr, cc = np.mgrid[: img.shape[0], : img.shape[1]]
    return float((rr * weights).sum() / weights.sum()), float((cc * weights).sum() / weights.sum())


def blob(shape: tuple[int, int], row: float, col: float, sigma: float = 3.0) -> np.ndarray:
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    g = np.exp(-((rr - row) ** 2 + (cc - col) ** 2) / (2 * sigma**2))
    return np.rint(g * 60000).astype(np.uint16)


# --------------------------------------------------------------------------------------------------- filters


@pytest.mark.parametrize("dtype,ksize", [(np.uint8, 3), (np.uint16, 3), (np.uint16, 5), (np.uint16, 7)])
def test_median_removes_salt_noise_and_keeps_edges(dtype: type, ksize: int) -> None:
    top = np.iinfo(dtype).max
    img = np.full((40, 40), top // 3, dtype=dtype)
    img[:, 20:] = top // 2  # an edge the median must keep
    noisy = img.copy()
    rng = np.random.default_rng(1)
    rows, cols = rng.integers(2, 38, 30), rng.integers(2, 38, 30)
    noisy[rows, cols] = top
    out = ops.median_filter(noisy, ksize)
    assert out.dtype == dtype
    assert np.array_equal(out, img)
    assert np.array_equal(noisy[rows, cols], np.full(30, top))  # the input was not modified


def test_median_rejects_even_window() -> None:
    with pytest.raises(ValueError, match="odd"):
        ops.median_filter(np.zeros((8, 8), np.uint8), 4)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_clahe_increases_local_contrast(dtype: type) -> None:
    top = np.iinfo(dtype).max
    rng = np.random.default_rng(2)
    # Faint texture on a mid-grey background: little local contrast to start with.
    img = (top * (0.5 + 0.02 * rng.standard_normal((64, 64)))).astype(dtype)
    out = ops.clahe(img, clip_limit=4.0, tile_grid=(4, 4))
    assert out.dtype == dtype and out.shape == img.shape
    assert out.astype(float).std() > 3 * img.astype(float).std()
    # Contrast is enhanced, not invented: the ordering of pixel values in a tile centre is kept.
    tile = img[4:12, 4:12].astype(float).ravel()
    enhanced = out[4:12, 4:12].astype(float).ravel()
    assert np.corrcoef(tile, enhanced)[0, 1] > 0.9


def test_clahe_tile_grid_is_rows_then_cols() -> None:
    img = mammogram(dtype=np.uint8)[0]
    a = ops.clahe(img, tile_grid=(8, 2)).astype(int)
    transposed = ops.clahe(img.T.copy(), tile_grid=(2, 8)).T.astype(int)
    swapped = ops.clahe(img, tile_grid=(2, 8)).astype(int)
    assert np.abs(a - transposed).max() <= 1  # the same tiles (up to rounding)
    assert np.abs(a - swapped).mean() > 5  # other tiles give another result


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_gaussian_smooths_and_keeps_the_mean(dtype: type) -> None:
    top = np.iinfo(dtype).max
    rng = np.random.default_rng(3)
    img = (top * np.clip(0.5 + 0.1 * rng.standard_normal((50, 50)), 0, 1)).astype(dtype)
    out = ops.gaussian_filter(img, sigma=0.5)
    assert out.dtype == dtype
    assert out.astype(float).std() < 0.8 * img.astype(float).std()
    assert abs(out.astype(float).mean() - img.astype(float).mean()) < 0.01 * top
    assert ops.gaussian_filter(img, sigma=2.0).astype(float).std() < out.astype(float).std()
    with pytest.raises(ValueError, match="sigma"):
        ops.gaussian_filter(img, sigma=0)


def test_equalize_16bit_spreads_a_narrow_histogram_and_keeps_order() -> None:
    rng = np.random.default_rng(4)
    img = (1000 + rng.integers(0, 400, (60, 60))).astype(np.uint16)  # 12-bit-like data in a narrow band
    out = ops.equalize_histogram(img)
    assert out.dtype == np.uint16
    assert out.min() == 0 and out.max() == 65535
    order = np.argsort(img.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order].astype(np.int64)) >= 0)  # monotonic mapping
    # Roughly uniform: each quarter of the output range holds about a quarter of the pixels.
    quarters = np.histogram(out, bins=4, range=(0, 65536))[0] / out.size
    assert np.all(np.abs(quarters - 0.25) < 0.05)


def test_equalize_16bit_matches_opencv_8bit() -> None:
    img8 = mammogram(dtype=np.uint8)[0]
    eq8 = ops.equalize_histogram(img8)
    eq16 = ops.equalize_histogram(img8.astype(np.uint16) * np.uint16(257))
    assert np.abs(eq16.astype(float) / 257 - eq8.astype(float)).max() <= 1.0


def test_equalize_constant_image_is_unchanged() -> None:
    img = np.full((10, 10), 1234, np.uint16)
    assert np.array_equal(ops.equalize_histogram(img), img)


# --------------------------------------------------------------------------------------------------- breast mask


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_breast_mask_keeps_the_breast_and_drops_the_label(dtype: type) -> None:
    img, breast = mammogram(dtype=dtype, hole=True)
    mask = ops.breast_mask(img)
    assert mask.dtype == bool
    assert not mask[4:14, -24:-6].any()  # burned-in label excluded
    assert (mask & breast).sum() / breast.sum() > 0.97  # breast (including the dark patch) included
    assert (mask & ~breast).sum() / breast.sum() < 0.02
    assert mask[80, 30]  # the dark patch inside the breast is filled


def test_breast_mask_of_a_blank_image_is_empty() -> None:
    assert not ops.breast_mask(np.zeros((20, 20), np.uint16)).any()
    assert not ops.breast_mask(np.full((20, 20), 7, np.uint8)).any()


def test_breast_mask_threshold_override() -> None:
    img = np.zeros((20, 20), np.uint8)
    img[5:15, 0:10] = 50
    img[0:3, 17:20] = 200
    assert ops.breast_mask(img, threshold=100).sum() == 9  # only the bright square is above 100
    assert ops.breast_mask(img, threshold=10).sum() == 100  # the larger region wins


def test_fill_holes_only_fills_enclosed_background() -> None:
    mask = np.zeros((9, 9), bool)
    mask[1:8, 1:8] = True
    mask[3:6, 3:6] = False  # enclosed hole
    mask[4, 7] = False  # notch open to the outside (stays background)
    mask[4, 8] = False
    filled = ops.fill_holes(mask)
    assert filled[3:6, 3:6].all()
    assert not filled[0].any()


def test_remove_background_zeroes_outside_the_mask() -> None:
    img, _ = mammogram(dtype=np.uint16)
    mask = ops.breast_mask(img)
    out = ops.remove_background(img, mask)
    assert out.dtype == np.uint16
    assert (out[~mask] == 0).all()
    assert np.array_equal(out[mask], img[mask])
    with pytest.raises(ValueError, match="boolean mask"):
        ops.remove_background(img, mask[:10])


def test_mask_bbox_margin_and_clipping() -> None:
    mask = np.zeros((20, 30), bool)
    mask[5:9, 2:11] = True
    assert ops.mask_bbox(mask) == (5, 2, 9, 11)
    assert ops.mask_bbox(mask, margin=3) == (2, 0, 12, 14)
    with pytest.raises(ValueError, match="empty"):
        ops.mask_bbox(np.zeros((4, 4), bool))


# --------------------------------------------------------------------------------------------------- geometry


def test_crop_returns_the_window_and_its_shift() -> None:
    img = np.arange(100, dtype=np.uint16).reshape(10, 10)
    out, t = ops.crop(img, (2, 3, 7, 9))
    assert out.shape == (5, 6)
    assert out[0, 0] == img[2, 3]
    r, c = t.apply_points(4, 5)
    assert out[int(r), int(c)] == img[4, 5]
    with pytest.raises(ValueError):
        ops.crop(img, (0, 0, 11, 5))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_resize_shapes_and_area_interpolation(dtype: type) -> None:
    top = np.iinfo(dtype).max
    checker = (np.indices((40, 60)).sum(axis=0) % 2 * top).astype(dtype)
    out, t = ops.resize(checker, (20, 30))
    assert out.shape == (20, 30) and out.dtype == dtype
    # Area averaging of a 2x2 checkerboard is mid-grey everywhere (point sampling would keep 0/top).
    assert np.all(np.abs(out.astype(float) - top / 2) <= 1)
    big, _ = ops.resize(checker, (80, 90))
    assert big.shape == (80, 90)
    assert t.scale == pytest.approx(0.5)
    nearest, _ = ops.resize(checker, (20, 30), interpolation="nearest")
    assert set(np.unique(nearest)) <= {0, top}


def test_resize_with_padding_keeps_aspect_ratio() -> None:
    img = np.full((300, 200), 200, np.uint8)
    out, t = ops.resize_with_padding(img, (100, 100))
    assert out.shape == (100, 100)
    cols = np.flatnonzero(out.any(axis=0))
    assert cols.size == 67 and out.all(axis=1).sum() == 0  # 200/300*100 wide, centred, zero padding beside
    assert cols[0] == (100 - 67) // 2
    start, t_start = ops.resize_with_padding(img, (100, 100), align="start")
    assert np.flatnonzero(start.any(axis=0))[0] == 0
    # The corners of the input land on the corners of the content.
    r, c = t.apply_points(np.array([0, 299]), np.array([0, 199]))
    assert np.allclose(r, [0, 99], atol=0.5) and np.allclose(c, [cols[0], cols[-1]], atol=0.5)
    assert t_start.scale == pytest.approx(np.sqrt(100 / 300 * 67 / 200))


def test_flip_makes_a_right_facing_breast_left_facing() -> None:
    img, breast = mammogram(right=True)
    assert ops.is_right_facing(img) and ops.is_right_facing(breast)
    flipped, t = ops.flip_horizontal(img)
    assert not ops.is_right_facing(flipped)
    assert np.array_equal(flipped, mammogram()[0])
    r, c = t.apply_points(10, 0)
    assert (r, c) == (10, img.shape[1] - 1)
    assert not ops.is_right_facing(mammogram()[0])


# --------------------------------------------------------------------------------------------------- intensity


def test_normalize_intensity_ranges_and_dtypes() -> None:
    img = np.linspace(1000, 3000, 101).astype(np.uint16).reshape(1, 101)
    u8 = ops.normalize_intensity(img, out_dtype="uint8")
    assert u8.dtype == np.uint8 and u8.min() == 0 and u8.max() == 255
    f = ops.normalize_intensity(img, out_dtype="float32")
    assert f.dtype == np.float32 and f.min() == 0.0 and f.max() == 1.0
    assert f[0, 50] == pytest.approx(0.5, abs=1e-3)
    u16 = ops.normalize_intensity(img, 10, 90, out_dtype="uint16")
    assert u16.dtype == np.uint16
    assert (u16[0, :10] == 0).all() and (u16[0, 91:] == 65535).all()  # clipped outside the percentile range
    assert 0 < u16[0, 50] < 65535


def test_normalize_within_mask_ignores_the_background() -> None:
    img = np.zeros((10, 10), np.uint8)
    img[2:8, 2:8] = np.linspace(100, 150, 36).reshape(6, 6).astype(np.uint8)
    mask = img > 0
    out = ops.normalize_intensity(img, out_dtype="uint8", mask=mask)
    assert out[mask].min() == 0 and out[mask].max() == 255
    plain = ops.normalize_intensity(img, out_dtype="uint8")
    assert plain[mask].min() > 150  # without the mask, the black background sets the lower bound
    assert not ops.normalize_intensity(np.full((4, 4), 9, np.uint8)).any()  # constant -> zeros


def test_dtype_conversions() -> None:
    u16 = np.array([[0, 257, 65535, 32896]], np.uint16)
    assert ops.to_uint8(u16).tolist() == [[0, 1, 255, 128]]
    u8 = np.array([[0, 1, 255]], np.uint8)
    assert ops.to_uint16(u8).tolist() == [[0, 257, 65535]]
    assert np.array_equal(ops.to_uint8(ops.to_uint16(u8)), u8)
    f = ops.to_float01(u16)
    assert f.dtype == np.float32 and f.max() == 1.0 and f.min() == 0.0
    assert np.array_equal(ops.to_uint16(f), u16)
    assert ops.to_uint8(np.array([[True, False]])).tolist() == [[255, 0]]


# --------------------------------------------------------------------------------------------------- Transform


def test_transform_composition_follows_a_bright_dot() -> None:
    """A blob drawn at a lesion centre is found where the composed transform says, after crop+resize+flip."""
    row, col = 123.0, 37.0
    img = blob((200, 150), row, col)
    cropped, t1 = ops.crop(img, (20, 10, 190, 140))
    resized, t2 = ops.resize(cropped, (85, 52))  # anisotropic shrink, area interpolation
    flipped, t3 = ops.flip_horizontal(resized)
    t = t1.then(t2).then(t3)
    r, c = t.apply_points(row, col)
    found_r, found_c = centroid(flipped)
    # Intensity centroids are preserved by area and linear resampling: the match is sub-pixel exact.
    assert abs(found_r - float(r)) < 0.05 and abs(found_c - float(c)) < 0.05
    enlarged, t_up = ops.resize(cropped, (300, 260))
    up_r, up_c = t1.then(t_up).apply_points(row, col)
    assert np.allclose(centroid(enlarged), (float(up_r), float(up_c)), atol=0.05)
    # And back: the inverse lands on the original centre.
    back_r, back_c = t.inverse().apply_points(found_r, found_c)
    assert abs(float(back_r) - row) < 0.1 and abs(float(back_c) - col) < 0.1


def test_transform_resize_pad_follows_a_dot() -> None:
    img = blob((300, 180), 200.0, 40.0, sigma=4)
    out, t = ops.resize_with_padding(img, (128, 128))
    r, c = t.apply_points(200.0, 40.0)
    assert np.allclose(centroid(out), (float(r), float(c)), atol=0.05)


def test_transform_algebra() -> None:
    a = Transform.scaling(0.5, 0.25).then(Transform.translation(3, -2))
    assert a.then(a.inverse()).allclose(Transform.identity())
    assert Transform.from_list(a.to_list()) == a
    assert Transform.scaling(2, 2).scale == pytest.approx(2.0)
    assert Transform.hflip(10).scale == pytest.approx(1.0)
    rows, cols = Transform.translation(1, 2).apply_points(np.array([0, 5]), np.array([0, 5]))
    assert rows.tolist() == [1, 6] and cols.tolist() == [2, 7]
    with pytest.raises(ValueError):
        Transform(np.eye(3))
