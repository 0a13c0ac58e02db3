"""Preprocessing chains: configs and presets, validation, geometry that masks and lesions follow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from mammoflow.config import preset_names
from mammoflow.errors import ConfigError, InputError
from mammoflow.preprocess import ops
from mammoflow.preprocess.chain import Chain, PreprocessConfig, load_preprocess_config, step_names

PRESETS = ("yu2020", "jaamour2023", "jaamour2023_breast", "xi2018", "minimal", "none")


def mammogram(h: int = 160, w: int = 120, dtype: type = np.uint8, right: bool = False,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A half-ellipse breast against the left edge (right edge if ``right``), noisy dark background, a bright
    burned-in label in the opposite top corner; returns the image and the true breast region."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[:h, :w]
    d = ((rr - h / 2) / (0.45 * h)) ** 2 + (cc / (0.75 * w)) ** 2
    breast = d < 1
    img = np.where(breast, 0.35 + 0.4 * (1 - d), 0.03) + rng.normal(0, 0.01, (h, w))
    img[4:14, w - 24:w - 6] = 0.95
    top = np.iinfo(dtype).max
    img = np.clip(img * top, 0, top).astype(dtype)
    return (img[:, ::-1].copy(), breast[:, ::-1].copy()) if right else (img, breast)


def disk(shape: tuple[int, int], row: float, col: float, radius: float) -> np.ndarray:
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return ((rr - row) ** 2 + (cc - col) ** 2 <= radius**2).astype(np.uint8) * 255


# --------------------------------------------------------------------------------------------------- presets


def test_every_preset_ships_and_runs() -> None:
    assert set(PRESETS) <= set(preset_names("preprocess"))
    img, _ = mammogram()
    for name in PRESETS:
        chain = Chain.from_config(name)
        out = chain(img).image
        expected = img.dtype if chain.config.output_dtype == "same" else np.dtype(chain.config.output_dtype)
        assert out.dtype == expected, name
        assert out.ndim == 2 and out.any(), name


def test_yu2020_removes_the_label_and_keeps_the_frame() -> None:
    img, breast = mammogram()
    res = Chain.from_config("yu2020")(img)
    assert res.image.shape == img.shape and res.transform.allclose(ops.Transform.identity())
    assert not res.image[4:14, -24:-6].any()  # burned-in label gone
    assert res.image[breast].mean() > 50


def test_jaamour2023_is_512_square_with_padding() -> None:
    img, _ = mammogram(h=200, w=100)
    res = Chain.from_config("jaamour2023")(img)
    assert res.image.shape == (512, 512)
    cols = np.flatnonzero(res.image.any(axis=0))
    assert 250 <= cols.size <= 260  # aspect ratio 1:2 kept, the rest is padding
    assert res.transform.scale == pytest.approx(512 / 200, rel=0.01)


def test_xi2018_crops_to_the_breast() -> None:
    img, breast = mammogram()
    res = Chain.from_config("xi2018")(img)
    r0, c0, r1, c1 = ops.mask_bbox(breast)
    assert abs(res.image.shape[0] - (r1 - r0)) <= 3 and abs(res.image.shape[1] - (c1 - c0)) <= 3
    assert res.image.max() == 255


def test_none_is_the_identity_and_keeps_16_bit() -> None:
    img, _ = mammogram(dtype=np.uint16)
    res = Chain.from_config("none")(img)
    assert res.image.dtype == np.uint16 and np.array_equal(res.image, img)
    assert res.image is not img


def test_preset_by_name_and_by_yaml_path_agree(tmp_path: Path) -> None:
    by_name = load_preprocess_config("yu2020")
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"output_dtype": "uint8", "steps": [
        "median", "breast_mask", {"clahe": {"clip_limit": 2.0}}, {"name": "remove_background"}, "normalize"]}))
    by_path = Chain.from_config(str(path))
    assert by_path.config_hash() == Chain(by_name).config_hash()  # shorthand + defaults = the preset


# --------------------------------------------------------------------------------------------------- validation


def test_unknown_step_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        Chain.from_config({"steps": [{"name": "median"}, {"name": "sharpen"}]})
    msg = str(info.value)
    assert "steps[1]" in msg and "'sharpen'" in msg
    for name in step_names():
        assert name in msg
    assert {"median", "clahe", "gaussian", "equalize", "breast_mask", "remove_background", "crop_breast",
            "resize", "resize_pad", "flip_left", "normalize"} <= set(step_names())


@pytest.mark.parametrize("step,match", [
    ({"median": {"size": 3}}, "unknown key"),
    ({"median": {"ksize": 4}}, "odd"),
    ({"gaussian": {"sigma": "wide"}}, "expected float"),
    ({"resize": {"height": 64}}, "width"),
    ({"resize_pad": {"height": 64, "width": 64, "align": "middle"}}, "not one of"),
    ({"clahe": {"tile_grid": [8]}}, "tile_grid"),
    ({"normalize": {"low_pct": 50, "high_pct": 10}}, "low_pct"),
])
def test_wrong_params_are_refused_clearly(step: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Chain.from_config({"steps": [step]})


def test_wrong_output_dtype_and_unknown_key() -> None:
    with pytest.raises(ConfigError, match="output_dtype"):
        PreprocessConfig.from_dict({"output_dtype": "int32"})
    with pytest.raises(ConfigError, match="unknown key"):
        PreprocessConfig.from_dict({"stepz": []})
    with pytest.raises(ConfigError, match="neither"):
        load_preprocess_config("no_such_preset")


def test_config_hash_is_stable_and_sensitive() -> None:
    base = {"steps": [{"name": "gaussian", "params": {"sigma": 0.5}}, {"name": "equalize"}]}
    h = Chain.from_config(base).config_hash()
    assert h == Chain.from_config({"steps": ["gaussian", "equalize"]}).config_hash()  # defaults resolved
    assert h == Chain.from_config({**base, "description": "words"}).config_hash()
    assert len(h) == 64 and h == Chain.from_config(dict(base)).config_hash()
    assert h != Chain.from_config({"steps": [{"gaussian": {"sigma": 0.6}}, "equalize"]}).config_hash()
    assert h != Chain.from_config({"steps": ["equalize", "gaussian"]}).config_hash()
    assert h != Chain.from_config({**base, "output_dtype": "uint16"}).config_hash()


# --------------------------------------------------------------------------------------------------- running


def test_bad_inputs_raise_input_errors_naming_the_file() -> None:
    chain = Chain.from_config("yu2020")
    rgb = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(InputError) as info:
        chain(rgb, path="a.png", record_id="r1")
    assert info.value.code == "rgb" and info.value.path == "a.png" and info.value.record_id == "r1"
    with pytest.raises(InputError) as info:
        chain(np.zeros((10, 10), np.float32), path="b.png")
    assert info.value.code == "bit_depth"
    img, _ = mammogram()
    with pytest.raises(InputError) as info:
        chain(img, masks=[np.zeros((10, 10), np.uint8)], path="c.png")
    assert info.value.code == "mask_size"
    with pytest.raises(InputError) as info:
        chain(np.zeros((50, 50), np.uint8), path="blank.png")
    assert info.value.code == "blank_image" and "blank.png" in str(info.value)


def test_same_chain_same_result() -> None:
    img, _ = mammogram(dtype=np.uint16)
    a = Chain.from_config("jaamour2023_breast")(img)
    b = Chain.from_config("jaamour2023_breast")(img.copy())
    assert np.array_equal(a.image, b.image) and a.transform == b.transform


def test_sixteen_bit_stays_sixteen_bit() -> None:
    img, breast = mammogram(dtype=np.uint16)
    cfg = {"output_dtype": "uint16", "steps": ["median", "clahe", "remove_background"]}
    res = Chain.from_config(cfg)(img)
    assert res.image.dtype == np.uint16
    assert len(np.unique(res.image[breast])) > 256  # not squeezed through 8 bits


def test_mask_and_lesion_follow_the_image_through_crop_flip_and_resize() -> None:
    """A lesion drawn as a bright disk, and its mask, land where the transform maps the centre."""
    img, _ = mammogram(h=240, w=180, right=True)
    row, col, radius = 150.0, 140.0, 8.0  # inside the (right-facing) breast
    lesion = disk(img.shape, row, col, radius)
    img = np.maximum(img, (lesion > 0).astype(np.uint8) * 250)
    res = Chain.from_config("jaamour2023_breast")(img, masks=[lesion])
    assert res.image.shape == (512, 512)
    assert not ops.is_right_facing(res.breast_mask)  # mirrored: chest wall on the left
    new_row, new_col, new_radius = res.map_lesion(row, col, radius)
    mask = res.masks[0]
    assert mask.dtype == bool and mask.shape == res.image.shape
    rr, cc = np.nonzero(mask)
    assert abs(rr.mean() - new_row) < 1.0 and abs(cc.mean() - new_col) < 1.0
    assert np.sqrt(mask.sum() / np.pi) == pytest.approx(new_radius, rel=0.1)
    # The brightest area of the output is the lesion, under the mask.
    assert res.image[mask].mean() > 240
    # And the inverse transform takes the mask's centre back to the drawn centre.
    back_r, back_c = res.transform.inverse().apply_points(rr.mean(), cc.mean())
    assert abs(float(back_r) - row) < 1.0 and abs(float(back_c) - col) < 1.0


def test_flip_left_leaves_left_facing_images_alone() -> None:
    img, _ = mammogram()
    res = Chain.from_config({"steps": ["flip_left"], "output_dtype": "same"})(img)
    assert np.array_equal(res.image, img) and res.transform.allclose(ops.Transform.identity())
    right, _ = mammogram(right=True)
    assert np.array_equal(Chain.from_config({"steps": ["flip_left"], "output_dtype": "same"})(right).image, img)


def test_float32_output_in_memory() -> None:
    img, _ = mammogram(dtype=np.uint16)
    res = Chain.from_config({"output_dtype": "float32", "steps": ["gaussian", "normalize"]})(img)
    assert res.image.dtype == np.float32 and res.image.min() == 0.0 and res.image.max() == 1.0
