"""The tf.data input pipeline on small real shards: patch counts, determinism, augmentation, evaluation grid."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from mammoflow.dataset import shards as S
from mammoflow.dataset.pipeline import (
    InputConfig,
    eval_dataset,
    grid_patch_origins,
    grid_positions,
    patch_counts,
    train_dataset,
    whole_image_dataset,
)
from mammoflow.errors import ConfigError

P = 16  # small patches keep the tests fast; the maths is the same at 72


def _examples(n: int, shape: tuple[int, int] = (30, 34), dtype: type = np.uint8, seed: int = 0) -> list[S.Example]:
    rng = np.random.default_rng(seed)
    names = ("normal", "tumour")
    return [S.Example(example_id=f"roi{i:03d}", record_id=f"r{i}", patient_id=f"p{i}", breast_id=f"p{i}:L",
                      label=i % 2, label_name=names[i % 2], split="train",
                      image=rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True))
            for i in range(n)]


@pytest.fixture(scope="module")
def rois(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], dict[str, S.Example]]:
    """Six ROIs (3 normal, 3 tumour) in four shards; returns the shard paths and the examples by id."""
    out = tmp_path_factory.mktemp("shards")
    examples = _examples(6)
    result = S.write_split(examples, str(out), "train", target_shard_bytes=2_000)
    assert len(result.shards) >= 2
    return [str(out / s.path) for s in result.shards], {e.example_id: e for e in examples}


def _cfg(**kw) -> InputConfig:
    base = dict(patch_size=P, patches_per_roi={"normal": 4, "tumour": 10}, batch_size=8, shuffle_buffer=64)
    return InputConfig(**{**base, **kw})


def _collect(ds) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def _crops(image: np.ndarray, p: int) -> dict[bytes, tuple[int, int]]:
    """Every p x p crop of ``image`` (as float32 bytes) -> its origin."""
    h, w = image.shape
    return {image[r:r + p, c:c + p].astype(np.float32).tobytes(): (r, c)
            for r in range(h - p + 1) for c in range(w - p + 1)}


def test_patch_counts_shapes_and_labels(rois) -> None:
    paths, _ = rois
    x, y = _collect(train_dataset(paths, _cfg(), seed=3))
    assert x.shape == (3 * 4 + 3 * 10, P, P, 3) and x.dtype == np.float32
    assert Counter(y.tolist()) == {0: 12, 1: 30}
    assert np.allclose(x.mean(axis=(1, 2)), 0.0, atol=1e-3)  # patch-wise centring
    assert np.array_equal(x[..., 0], x[..., 2])  # grey repeated for ImageNet backbones
    assert patch_counts({"normal": 3, "tumour": 3}, _cfg()) == {"normal": 12, "tumour": 30}
    assert patch_counts({"normal": 3}, _cfg(patches_per_roi={"0": 7}), {0: "normal"}) == {"normal": 21}
    with pytest.raises(ConfigError):
        patch_counts({"benign": 1}, _cfg())


def test_deterministic_per_seed_and_epoch(rois) -> None:
    import tensorflow as tf

    paths, _ = rois
    cfg = _cfg()
    a = _collect(train_dataset(paths, cfg, seed=1, epoch=0))
    tf.random.set_seed(1234)  # a trainer seeding TensorFlow must not change the data order
    b = _collect(train_dataset(paths, cfg, seed=1, epoch=0))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    c = _collect(train_dataset(paths, cfg, seed=1, epoch=1))
    d = _collect(train_dataset(paths, cfg, seed=2, epoch=0))
    assert not np.allclose(a[0], c[0]) and not np.allclose(a[0], d[0])
    assert sorted(a[1]) == sorted(c[1])  # same class balance every epoch


def test_unaugmented_patches_are_exact_crops_and_sampling_per_epoch(rois) -> None:
    paths, by_id = rois
    cfg = _cfg(rotation_deg=0.0, zoom=0.0, hflip=False, centring="none", channels=1,
               patches_per_roi={"normal": 5, "tumour": 5})
    all_crops = {}  # crop bytes -> example id
    for e in by_id.values():
        all_crops.update(dict.fromkeys(_crops(e.image, P), e.example_id))

    def patches(epoch: int, cfg: InputConfig) -> list[bytes]:
        x, _ = _collect(train_dataset(paths, cfg, seed=0, epoch=epoch))
        return [p[..., 0].tobytes() for p in x]

    e0, e1 = patches(0, cfg), patches(1, cfg)
    assert all(p in all_crops for p in e0)  # bit-exact ROI pixels: the affine map is an integer shift
    first_batch = {all_crops[p] for p in e0[:cfg.batch_size]}
    assert len(first_batch) >= 3  # ROIs (from several shards) are mixed, not served one after another
    assert e0 != e1 and sorted(e0) == sorted(e1)  # patches fixed, order re-drawn (Yu et al.: generated once)
    resampled = cfg.replace(sample_per_epoch=True)
    r0, r1 = patches(0, resampled), patches(1, resampled)
    assert all(p in all_crops for p in r1)
    assert sorted(r0) != sorted(r1)  # new positions every epoch


def test_flips_mirror_whole_crops(rois) -> None:
    paths, by_id = rois
    cfg = _cfg(rotation_deg=0.0, zoom=0.0, hflip=True, vflip=True, centring="none", channels=1)
    plain, mirrored = set(), set()
    for e in by_id.values():
        for crop in _crops(e.image, P):
            a = np.frombuffer(crop, np.float32).reshape(P, P)
            plain.add(crop)
            mirrored.update({a[:, ::-1].tobytes(), a[::-1, :].tobytes(), a[::-1, ::-1].tobytes()})
    x, _ = _collect(train_dataset(paths, cfg, seed=5))
    kinds = Counter("plain" if p[..., 0].tobytes() in plain else
                    "mirrored" if p[..., 0].tobytes() in mirrored else "other" for p in x)
    assert kinds["other"] == 0 and kinds["mirrored"] > 0 and kinds["plain"] > 0


def test_rotation_and_zoom_resample_within_range(rois) -> None:
    paths, _ = rois
    x, _ = _collect(train_dataset(paths, _cfg(centring="none", channels=1), seed=0))
    assert x.min() >= 0.0 and x.max() <= 255.0  # bilinear resampling with reflection never leaves the range
    assert len({p.tobytes() for p in x}) == len(x)


def test_uint16_rois_share_the_value_scale(tmp_path: Path) -> None:
    examples = _examples(2, dtype=np.uint16)
    result = S.write_split(examples, str(tmp_path), "train")
    paths = [str(tmp_path / s.path) for s in result.shards]
    cfg = _cfg(centring="none", channels=1, rotation_deg=0.0, zoom=0.0, hflip=False)
    x, _ = _collect(train_dataset(paths, cfg))
    assert x.max() <= 255.0 and x.max() > 200.0
    candidates = np.stack([e.image[r:r + P, c:c + P] * (255.0 / 65535.0)
                           for e in examples for r in range(30 - P + 1) for c in range(34 - P + 1)])
    for patch in x:  # every patch is a crop of a uint16 ROI, rescaled to 0..255
        assert np.abs(candidates - patch[..., 0]).max(axis=(1, 2)).min() < 1e-3


def test_label_without_patch_count_fails_loudly(rois) -> None:
    import tensorflow as tf

    paths, _ = rois
    with pytest.raises(tf.errors.InvalidArgumentError, match="patches_per_roi"):
        _collect(train_dataset(paths, _cfg(patches_per_roi={"normal": 2})))


def test_roi_smaller_than_patch_fails_loudly(rois) -> None:
    import tensorflow as tf

    paths, _ = rois
    with pytest.raises(tf.errors.InvalidArgumentError, match="smaller than patch_size"):
        _collect(train_dataset(paths, _cfg(patch_size=31)))


def test_grid_origins_follow_yu() -> None:
    origins = grid_patch_origins((120, 120), 72, (5, 5))
    assert origins.shape == (25, 2)
    assert sorted({int(r) for r in origins[:, 0]}) == [0, 12, 24, 36, 48]  # stride 12, Yu et al. 2020
    assert origins[:6].tolist() == [[0, 0], [0, 12], [0, 24], [0, 36], [0, 48], [12, 0]]  # row-major
    assert grid_positions(100, 72, 1).tolist() == [14]  # a single window is centred
    assert grid_positions(72, 72, 3).tolist() == [0, 0, 0]
    assert grid_positions(101, 72, 3).tolist() == [0, 15, 29]  # 14.5 rounds half up
    with pytest.raises(ValueError):
        grid_patch_origins((50, 120), 72)


def test_eval_grid_patches_are_the_roi_pixels(rois) -> None:
    paths, by_id = rois
    cfg = _cfg(centring="none", channels=1, eval_grid=(3, 4))
    seen: dict[str, list[np.ndarray]] = defaultdict(list)
    labels = {}
    for x, y, ids in eval_dataset(paths, cfg):
        for patch, label, example_id in zip(x.numpy(), y.numpy(), ids.numpy(), strict=True):
            seen[example_id.decode()].append(patch[..., 0])
            labels[example_id.decode()] = int(label)
    assert set(seen) == set(by_id)
    for example_id, patches in seen.items():
        image = by_id[example_id].image
        origins = grid_patch_origins(image.shape, P, (3, 4))
        assert len(patches) == 12
        for patch, (r, c) in zip(patches, origins, strict=True):
            assert np.array_equal(patch, image[r:r + P, c:c + P].astype(np.float32))
        assert labels[example_id] == by_id[example_id].label
    # deterministic and ROI-contiguous (votes are gathered by example id)
    ids_a = [i for _, _, b in eval_dataset(paths, cfg) for i in b.numpy()]
    ids_b = [i for _, _, b in eval_dataset(paths, cfg) for i in b.numpy()]
    assert ids_a == ids_b and len(ids_a) == 6 * 12
    assert ids_a == [i for i in dict.fromkeys(ids_a) for _ in range(12)]


def test_yu_grid_on_a_120_pixel_roi(tmp_path: Path) -> None:
    example = _examples(1, shape=(120, 120))[0]
    result = S.write_split([example], str(tmp_path), "train")
    cfg = InputConfig(centring="none", channels=1)  # 72 x 72 patches, 5 x 5 grid
    x = np.concatenate([b[0].numpy() for b in eval_dataset([str(tmp_path / result.shards[0].path)], cfg)])
    assert x.shape == (25, 72, 72, 1)
    for patch, (r, c) in zip(x, grid_patch_origins((120, 120), 72), strict=True):
        assert np.array_equal(patch[..., 0], example.image[r:r + 72, c:c + 72].astype(np.float32))


def test_default_grid_is_25_per_roi(rois) -> None:
    paths, _ = rois
    ids = [i for _, _, b in eval_dataset(paths, _cfg()) for i in b.numpy()]
    assert Counter(ids) == {i: 25 for i in set(ids)} and len(set(ids)) == 6


def test_whole_image_dataset(rois) -> None:
    paths, by_id = rois
    cfg = _cfg(centring="none", channels=3, batch_size=4)
    batches = list(whole_image_dataset(paths, cfg, 20))
    x = np.concatenate([b[0].numpy() for b in batches])
    ids = [i.decode() for b in batches for i in b[2].numpy()]
    assert x.shape == (6, 20, 20, 3) and sorted(ids) == sorted(by_id)
    means = {i: float(v.mean()) for i, v in zip(ids, x, strict=True)}
    for i, e in by_id.items():  # resizing keeps the mean brightness
        assert abs(means[i] - e.image.mean()) < 3.0
    wide = next(iter(whole_image_dataset(paths, cfg, (12, 24), keep_aspect=True, training=True, seed=1)))
    assert tuple(wide[0].shape[1:]) == (12, 24, 3)
    again = next(iter(whole_image_dataset(paths, cfg, (12, 24), keep_aspect=True, training=True, seed=1)))
    assert np.array_equal(wide[0].numpy(), again[0].numpy())


@pytest.mark.parametrize("centring", ["caffe", "tf", "torch"])
def test_imagenet_conventions(rois, centring: str) -> None:
    paths, _ = rois
    cfg = _cfg(centring=centring, rotation_deg=0.0, zoom=0.0, hflip=False)
    x, _ = next((a.numpy(), b) for a, b, _ in eval_dataset(paths, cfg))
    raw, _ = next((a.numpy(), b) for a, b, _ in eval_dataset(paths, cfg.replace(centring="none")))
    expected = {
        "caffe": raw - np.array([103.939, 116.779, 123.68], np.float32),
        "tf": raw / 127.5 - 1.0,
        "torch": (raw / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
    }[centring]
    assert np.allclose(x, expected, atol=1e-4)


def test_config_validation() -> None:
    for bad in ({"channels": 2}, {"zoom": 1.5}, {"centring": "zscore"}, {"eval_grid": (0, 5)},
                {"patches_per_roi": {"normal": -1}}):
        with pytest.raises(ConfigError):
            _cfg(**bad)
    from mammoflow.config import from_dict

    cfg = from_dict(InputConfig, {"patch_size": 72, "patches_per_roi": {"normal": 500, "tumour": 2000},
                                  "eval_grid": [5, 5], "rotation_deg": 90})
    assert cfg.eval_grid == (5, 5) and cfg.rotation_deg == 90.0


def test_rotation_turns_the_window_about_its_centre() -> None:
    """A 90-degree draw maps the patch grid onto itself: the patch is the ROI crop turned by a quarter."""
    import tensorflow as tf

    from mammoflow.dataset.pipeline import _affine, _warp

    image = np.random.default_rng(0).integers(0, 256, (30, 34)).astype(np.float32)
    cfg = _cfg(rotation_deg=180.0, zoom=0.2, hflip=True)
    r0, c0 = 5, 9
    half = (P - 1) / 2
    # uniforms: rotation 0.75 -> +90 deg, zoom 0.5 -> 1.0, flips >= 0.5 -> none
    u = tf.constant([[0.75, 0.5, 0.5, 0.9, 0.9]], tf.float32)
    t = _affine(cfg, tf.constant([r0 + half]), tf.constant([c0 + half]), u)
    patch = _warp(tf.constant(image), t[0], (P, P), "reflect").numpy()[..., 0]
    crop = image[r0:r0 + P, c0:c0 + P]
    assert np.allclose(patch, np.rot90(crop, k=-1), atol=1e-3) or np.allclose(patch, np.rot90(crop, k=1), atol=1e-3)
    # a horizontal flip draw mirrors the same window
    flip = _affine(cfg, tf.constant([r0 + half]), tf.constant([c0 + half]),
                   tf.constant([[0.5, 0.5, 0.5, 0.1, 0.9]], tf.float32))
    assert np.allclose(_warp(tf.constant(image), flip[0], (P, P), "reflect").numpy()[..., 0], crop[:, ::-1],
                       atol=1e-3)
