"""The tf.data input pipeline: random training patches, the evaluation grid, and whole images.

Reads local shard files (from :class:`mammoflow.dataset.cache.LocalCache`), never ``gs://``. Three datasets:

- :func:`train_dataset` -> ``(patches [B, P, P, C] float32, labels [B] int32)``: random ``P x P`` patches cut on
  the fly from each ROI (Yu et al. 2020, Sec. 3.2: 500 per normal ROI, 2,000 per abnormal ROI, 72 x 72), with
  augmentation (rotation up to 180 deg, zoom 0.2, horizontal flip) and patch-wise centring. Patches are not
  stored: the shards hold ROIs, so changing the patch count or size needs no rebuild.
- :func:`eval_dataset` -> ``(patches, labels, example_ids)``: a deterministic ``rows x cols`` grid of patches per
  ROI (Yu et al.: 25 windows of 72 x 72 with stride 12 in a 120 x 120 ROI), in row-major order, so the ``k``-th
  patch of an ROI sits at ``grid_patch_origins(...)[k]`` and votes are gathered by ``example_id``.
- :func:`whole_image_dataset` -> ``(images, labels, example_ids)``: whole images resized for whole-image models.

**Determinism.** The training data of an epoch is a pure function of ``(seed, epoch)`` and the shards: the
shard order, the ROI and patch shuffles and every random draw are keyed by the seed, the epoch and a stable
hash of the example id (stateless random ops), never by global RNG state, TensorFlow's global seed, or the
order in which parallel workers finish. A resumed training run therefore sees exactly the data it would have
seen, and :func:`train_dataset` with the same arguments yields the same batches. ``sample_per_epoch=False``
(Yu et al.'s setting: patches generated once) keeps each ROI's patch positions across epochs and re-draws only
the augmentation and order; ``True`` draws new positions every epoch.

**Augmentation in one resampling.** Crop, rotation, zoom and flips are composed into one affine map from patch
to ROI coordinates and applied by one bilinear resampling of the ROI, so a rotated patch is filled with real
tissue from around it rather than with padding (the window only reflects at the ROI border). Without
augmentation the map is an integer translation and the patch equals the ROI's pixels exactly.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from mammoflow.dataset import cached
from mammoflow.dataset.memory import MemoryCache
from mammoflow.dataset.tfops import AUTOTUNE as _AUTOTUNE
from mammoflow.dataset.tfops import affine as _affine
from mammoflow.dataset.tfops import finish as _finish
from mammoflow.dataset.tfops import flip as _flip
from mammoflow.dataset.tfops import in_folds as _in_folds
from mammoflow.dataset.tfops import options as _options
from mammoflow.dataset.tfops import parallel as _parallel
from mammoflow.dataset.tfops import seeded_shuffle as _seeded_shuffle
from mammoflow.dataset.tfops import tf_module as _tf
from mammoflow.dataset.tfops import traced
from mammoflow.dataset.tfops import warp as _warp
from mammoflow.errors import ConfigError

log = logging.getLogger(__name__)
_MEMORY = MemoryCache()  # decoded training examples, shared by every dataset this process builds

Centring = Literal["patch_mean", "none", "caffe", "tf", "torch"]
FillMode = Literal["reflect", "nearest", "constant", "wrap"]

_HASH_BUCKETS = 1 << 62
finish_batch = _finish  # public name: centring and channels on a [B, h, w, 1] batch (CAM code mirrors it)


@dataclass
class InputConfig:
    """How shards become model inputs. Defaults follow Yu et al. 2020 (Sec. 3.2).

    ``patches_per_roi`` maps a label name (or a label index written as a string/int) to the number of random
    patches cut from each ROI of that label per epoch. ``value_range``: pixel values are scaled so that the
    image dtype's maximum maps to it (255: uint8 and uint16 ROIs alike on the 0..255 scale ImageNet models
    expect). ``centring``: ``patch_mean`` subtracts each patch's own mean (Yu et al.'s patch-wise centring);
    ``caffe``/``tf``/``torch`` are the ImageNet input conventions of Keras' ``preprocess_input``; ``none`` keeps
    the scaled values. ``channels`` 3 repeats the grey channel for ImageNet backbones. ``zoom`` z draws
    independent x/y scale factors in [1 - z, 1 + z] (the Keras ``zoom_range`` convention).
    """

    patch_size: int = 72
    patches_per_roi: dict[str, int] = field(default_factory=lambda: {"normal": 500, "tumour": 2000})
    sample_per_epoch: bool = False
    batch_size: int = 32
    shuffle_buffer: int = 8192
    roi_shuffle_buffer: int = 64
    rotation_deg: float = 180.0
    zoom: float = 0.2
    hflip: bool = True
    vflip: bool = False
    fill_mode: FillMode = "reflect"
    centring: Centring = "patch_mean"
    channels: int = 3
    value_range: float = 255.0
    eval_grid: tuple[int, int] = (5, 5)
    seed: int = 0
    cycle_length: int = 4  # shards read at once
    roi_cycle_length: int = 16  # ROIs whose patches are interleaved ahead of the shuffle buffer
    num_parallel_calls: int | None = None  # None: tf.data.AUTOTUNE
    prefetch: int | None = None  # batches; None: tf.data.AUTOTUNE
    drop_remainder: bool = False
    # Cross-validation: keep only the examples of these folds (None: all). Xi et al. 2018 train on four folds and
    # validate on the fifth.
    folds: tuple[int, ...] | None = None
    # Keep decoded, un-augmented training examples in memory across epochs (mammoflow.dataset.memory): at most
    # this many MiB; None: a quarter of the available memory (capped); 0: off, every epoch reads the shards.
    memory_cache_mb: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.patch_size < 1:
            problems.append("patch_size must be >= 1")
        if self.batch_size < 1:
            problems.append("batch_size must be >= 1")
        if self.channels not in (1, 3):
            problems.append("channels must be 1 or 3")
        if not 0 <= self.zoom < 1:
            problems.append("zoom must be in [0, 1)")
        if self.rotation_deg < 0:
            problems.append("rotation_deg must be >= 0")
        if self.centring not in ("patch_mean", "none", "caffe", "tf", "torch"):
            problems.append(f"centring {self.centring!r} is not patch_mean, none, caffe, tf or torch")
        if self.fill_mode not in ("reflect", "nearest", "constant", "wrap"):
            problems.append(f"fill_mode {self.fill_mode!r} is not reflect, nearest, constant or wrap")
        if len(self.eval_grid) != 2 or min(self.eval_grid) < 1:
            problems.append("eval_grid must be two positive integers (rows, cols)")
        if any(int(v) < 0 for v in self.patches_per_roi.values()):
            problems.append("patches_per_roi values must be >= 0")
        if min(self.shuffle_buffer, self.roi_shuffle_buffer, self.cycle_length, self.roi_cycle_length) < 1:
            problems.append("shuffle_buffer, roi_shuffle_buffer, cycle_length and roi_cycle_length must be >= 1")
        if problems:
            raise ConfigError("InputConfig: " + "; ".join(problems))
        self.patches_per_roi = {str(k): int(v) for k, v in self.patches_per_roi.items()}
        self.eval_grid = (int(self.eval_grid[0]), int(self.eval_grid[1]))

    def replace(self, **changes: Any) -> InputConfig:
        return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------------------------------ pure numpy


def grid_positions(length: int, patch_size: int, count: int) -> np.ndarray:
    """``count`` window starts evenly spread over ``[0, length - patch_size]`` (rounded half up; centred if 1)."""
    if length < patch_size:
        raise ValueError(f"ROI side {length} is smaller than the patch size {patch_size}")
    span = length - patch_size
    i = np.arange(count, dtype=np.int64)
    if count == 1:
        return np.array([span // 2], dtype=np.int64)
    return (2 * i * span + (count - 1)) // (2 * (count - 1))


def grid_patch_origins(roi_shape: Sequence[int], patch_size: int, grid: Sequence[int] = (5, 5)) -> np.ndarray:
    """Top-left ``(row, col)`` of the evaluation grid's patches, row-major, shape ``[rows * cols, 2]``.

    For a 120 x 120 ROI, 72 x 72 patches and a 5 x 5 grid: rows and cols 0, 12, 24, 36, 48 (Yu et al.'s stride
    12). Shared by :func:`eval_dataset` and the CAM code so both agree on where each patch came from.
    """
    rows = grid_positions(int(roi_shape[0]), patch_size, int(grid[0]))
    cols = grid_positions(int(roi_shape[1]), patch_size, int(grid[1]))
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return np.stack([rr.ravel(), cc.ravel()], axis=1)


def patch_counts(label_counts: Mapping[str, int], cfg: InputConfig,
                 label_names: Mapping[int | str, str] | None = None) -> dict[str, int]:
    """Training patches per label name in one epoch, from a manifest split's ``counts`` (ROIs per label)."""
    index = {name: str(i) for i, name in (label_names or {}).items()}
    out = {}
    for name, rois in label_counts.items():
        per_roi = cfg.patches_per_roi.get(name, cfg.patches_per_roi.get(index.get(name, "")))
        if per_roi is None:
            raise ConfigError(f"InputConfig.patches_per_roi has no entry for label {name!r}; "
                              f"it has {sorted(cfg.patches_per_roi)}")
        out[name] = int(rois) * per_roi
    return out


def stream_seed(seed: int, *key: int) -> int:
    """A 31-bit seed for one random stream, derived from ``seed`` and integer ``key``s (SeedSequence mixing)."""
    words = [int(seed) & 0xFFFFFFFF, *(int(k) & 0xFFFFFFFF for k in key)]
    return int(np.random.SeedSequence(words).generate_state(1)[0] & 0x7FFFFFFF)


# Stream ids: each kind of random draw has its own stream, so changing one never shifts another.
_FILES, _ROI_SHUFFLE, _PATCH_SHUFFLE, _ORIGINS, _AUGMENT, _WHOLE = range(1, 7)
_NO_EPOCH = 0xFFFFFFFF


# --------------------------------------------------------------------------------------------- tf.data



def _records(shard_paths: Sequence[str], cfg: InputConfig, *, all_folds: bool = False) -> Any:
    """Parsed ROIs of the shards, interleaved ``cycle_length`` files at a time, in a deterministic order; only those
    of ``cfg.folds`` unless ``all_folds``."""
    tf = _tf()
    paths = [str(p) for p in shard_paths]
    if not paths:
        raise ValueError("no shard files given (did the split get any examples?)")
    files = tf.data.Dataset.from_tensor_slices(paths)
    ds = files.interleave(lambda f: tf.data.TFRecordDataset(f, buffer_size=1 << 20),
                          cycle_length=min(cfg.cycle_length, len(paths)),
                          block_length=1, num_parallel_calls=_parallel(cfg), deterministic=True)
    ds = ds.map(traced(_parser(cfg)), num_parallel_calls=_parallel(cfg), deterministic=True)
    return ds if cfg.folds is None or all_folds else ds.filter(traced(_in_folds(cfg)))


def _parser(cfg: InputConfig) -> Any:
    """Serialized example -> the ROI dict the datasets work on."""
    from mammoflow.dataset.shards import parse_example

    tf = _tf()

    def parse(serialized: Any) -> dict[str, Any]:
        f = parse_example(serialized, value_range=cfg.value_range)
        return {"image": f["image"], "label": tf.cast(f["label"], tf.int32), "label_name": f["label_name"],
                "example_id": f["example_id"], "fold": tf.cast(f["fold"], tf.int64),
                "key": tf.strings.to_hash_bucket_fast(f["example_id"], _HASH_BUCKETS)}

    return parse


def _decoded(paths: Sequence[str], cfg: InputConfig, prepare: Any, prepare_key: Any) -> dict[str, Any] | None:
    """The examples of ``paths`` (all folds) after ``prepare``, as arrays in memory, or ``None``
    (:func:`mammoflow.dataset.cached.decoded`)."""
    return cached.decoded(paths, cfg, _parser(cfg), prepare, prepare_key, _MEMORY)


def _roi_stream(paths: Sequence[str], cfg: InputConfig) -> Any:
    """The ROIs of ``paths`` in exactly the order (and with the values) of ``_records(paths, cfg)``; from memory
    when the decoded examples fit (:mod:`mammoflow.dataset.memory`)."""
    entry = _decoded(paths, cfg, None, None)
    return _records(paths, cfg) if entry is None else cached.roi_stream(entry, paths, cfg)


def _patch_count_table(cfg: InputConfig) -> Any:
    tf = _tf()
    keys = list(cfg.patches_per_roi)
    values = [cfg.patches_per_roi[k] for k in keys]
    init = tf.lookup.KeyValueTensorInitializer(tf.constant(keys or [""], tf.string),
                                               tf.constant(values or [-1], tf.int64))
    return tf.lookup.StaticHashTable(init, default_value=-1)


def _check_roi_size(image: Any, patch_size: int, example_id: Any) -> Any:
    tf = _tf()
    shape = tf.shape(image)
    return tf.debugging.Assert(
        tf.reduce_all(shape >= patch_size),
        ["ROI smaller than patch_size", patch_size, "example", example_id, "shape", shape], summarize=4)



def prepare_patches(patches: np.ndarray, cfg: InputConfig) -> Any:
    """Model inputs from raw patches ``[B, h, w]`` (uint8 or uint16): the same scaling and centring as training,
    for inference outside tf.data (``mammoflow predict``), so there is no train/serve skew."""
    tf = _tf()
    patches = np.asarray(patches)
    full = 65535.0 if patches.dtype == np.uint16 else 255.0
    x = tf.constant(patches.astype(np.float32) * (cfg.value_range / full))[..., None]
    return _finish(cfg, x)


def train_dataset(shard_paths: Sequence[str], cfg: InputConfig, seed: int | None = None, epoch: int = 0) -> Any:
    """One epoch of augmented random training patches: ``(x [B, P, P, C] float32, y [B] int32)``.

    ``seed`` defaults to ``cfg.seed``. Deterministic given ``(shards, cfg, seed, epoch)``; different epochs
    differ in order, augmentation and (with ``sample_per_epoch``) patch positions. Each ROI contributes
    ``cfg.patches_per_roi[label]`` patches; an ROI whose label has no entry stops the pipeline with an error.
    """
    tf = _tf()
    seed = cfg.seed if seed is None else int(seed)
    epoch = int(epoch)
    order = np.random.default_rng(stream_seed(seed, _FILES, epoch)).permutation(len(shard_paths))
    rois = _roi_stream([shard_paths[i] for i in order], cfg)
    rois = _seeded_shuffle(rois, cfg.roi_shuffle_buffer, stream_seed(seed, _ROI_SHUFFLE, epoch), epoch)
    table = _patch_count_table(cfg)
    p = cfg.patch_size
    origin_stream = stream_seed(seed, _ORIGINS, epoch if cfg.sample_per_epoch else _NO_EPOCH)
    augment_stream = stream_seed(seed, _AUGMENT, epoch)

    def patches_of(roi: dict[str, Any]) -> Any:
        image = roi["image"]
        n = table.lookup(roi["label_name"])
        n = tf.where(n < 0, table.lookup(tf.strings.as_string(roi["label"])), n)
        known = tf.debugging.Assert(n >= 0, ["label has no entry in InputConfig.patches_per_roi:",
                                             roi["label_name"], "example", roi["example_id"]])
        fits = _check_roi_size(image, p, roi["example_id"])
        with tf.control_dependencies([known, fits]):
            n = tf.identity(n)
            h, w = tf.shape(image)[0], tf.shape(image)[1]
        key = roi["key"]
        origin_seed = tf.stack([tf.constant(origin_stream, tf.int64), key])
        rows = tf.random.stateless_uniform([n], origin_seed, minval=0, maxval=h - p + 1, dtype=tf.int32)
        cols = tf.random.stateless_uniform([n], tf.random.experimental.stateless_fold_in(origin_seed, 1),
                                           minval=0, maxval=w - p + 1, dtype=tf.int32)
        uniforms = tf.random.stateless_uniform([n, 5], tf.stack([tf.constant(augment_stream, tf.int64), key]))
        half = (p - 1) / 2.0
        transforms = _affine(cfg, tf.cast(rows, tf.float32) + half, tf.cast(cols, tf.float32) + half, uniforms)
        labels = tf.fill([n], roi["label"])
        images = tf.data.Dataset.from_tensors(image).repeat(n)  # shares one buffer, no copies
        return tf.data.Dataset.zip((images, tf.data.Dataset.from_tensor_slices((transforms, labels))))

    patches = rois.interleave(traced(patches_of), cycle_length=cfg.roi_cycle_length, block_length=1,
                              num_parallel_calls=_parallel(cfg), deterministic=True)
    patches = _seeded_shuffle(patches, cfg.shuffle_buffer, stream_seed(seed, _PATCH_SHUFFLE, epoch), epoch)
    patches = patches.map(traced(lambda img, pair: (_warp(img, pair[0], (p, p), cfg.fill_mode), pair[1])),
                          num_parallel_calls=_parallel(cfg), deterministic=True)
    batches = patches.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder)
    batches = batches.map(traced(lambda x, y: (_finish(cfg, x), y)), num_parallel_calls=_parallel(cfg),
                          deterministic=True)
    return batches.prefetch(_AUTOTUNE if cfg.prefetch is None else cfg.prefetch).with_options(_options())


def _grid_positions_tf(length: Any, patch_size: int, count: int) -> Any:
    """TensorFlow twin of :func:`grid_positions` (same integer arithmetic, so the same origins)."""
    tf = _tf()
    span = tf.cast(length, tf.int64) - patch_size
    if count == 1:
        return tf.reshape(span // 2, [1])
    i = tf.range(count, dtype=tf.int64)
    return (2 * i * span + (count - 1)) // (2 * (count - 1))


def eval_dataset(shard_paths: Sequence[str], cfg: InputConfig, grid: Sequence[int] | None = None) -> Any:
    """The evaluation grid of every ROI: ``(x [B, P, P, C] float32, y [B] int32, example_id [B] string)``.

    ``grid`` (rows, cols) defaults to ``cfg.eval_grid``. ROIs come in shard order, each ROI's patches together
    and row-major (origins: :func:`grid_patch_origins`). No augmentation; patches are exact ROI pixels.
    """
    tf = _tf()
    g_rows, g_cols = (int(v) for v in (grid or cfg.eval_grid))
    p = cfg.patch_size
    offsets = tf.range(p, dtype=tf.int64)

    def grid_of(roi: dict[str, Any]) -> Any:
        image = roi["image"]
        with tf.control_dependencies([_check_roi_size(image, p, roi["example_id"])]):
            shape = tf.shape(image, out_type=tf.int64)
        rows = _grid_positions_tf(shape[0], p, g_rows)
        cols = _grid_positions_tf(shape[1], p, g_cols)
        strips = tf.gather(image, rows[:, None] + offsets, axis=0)  # [g_rows, P, W]
        tiles = tf.gather(strips, cols[:, None] + offsets, axis=2)  # [g_rows, P, g_cols, P]
        tiles = tf.reshape(tf.transpose(tiles, [0, 2, 1, 3]), [g_rows * g_cols, p, p, 1])
        k = g_rows * g_cols
        return tf.data.Dataset.from_tensor_slices(
            (tiles, tf.fill([k], roi["label"]), tf.fill([k], roi["example_id"])))

    ds = _records(shard_paths, cfg).flat_map(traced(grid_of))
    ds = ds.batch(cfg.batch_size)
    ds = ds.map(traced(lambda x, y, i: (_finish(cfg, x), y, i)), num_parallel_calls=_parallel(cfg),
                deterministic=True)
    return ds.prefetch(_AUTOTUNE if cfg.prefetch is None else cfg.prefetch).with_options(_options())


def whole_image_dataset(shard_paths: Sequence[str], cfg: InputConfig, size: int | Sequence[int], *,
                        keep_aspect: bool = False, training: bool = False, seed: int | None = None,
                        epoch: int = 0) -> Any:
    """Whole images resized to ``size``: ``(x [B, h, w, C] float32, y [B] int32, example_id [B] string)``.

    Resizing is bilinear with antialiasing; ``keep_aspect`` pads instead of stretching. ``training`` shuffles
    (deterministically, keyed like :func:`train_dataset`) and applies ``cfg``'s rotation/zoom/flips to the
    resized image. ``centring="patch_mean"`` subtracts each image's own mean.
    """
    tf = _tf()
    h, w = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    seed = cfg.seed if seed is None else int(seed)
    paths = list(shard_paths)
    if training:
        order = np.random.default_rng(stream_seed(seed, _FILES, epoch)).permutation(len(paths))
        paths = [paths[i] for i in order]
    augment_stream = stream_seed(seed, _WHOLE, epoch)

    def resize(roi: dict[str, Any]) -> dict[str, Any]:
        image = roi["image"][:, :, tf.newaxis]
        same = tf.reduce_all(tf.equal(tf.shape(image)[:2], [h, w]))  # already the size: nothing to resample
        if keep_aspect:
            image = tf.cond(same, lambda: image, lambda: tf.image.resize_with_pad(image, h, w, antialias=True))
        else:
            image = tf.cond(same, lambda: image, lambda: tf.image.resize(image, (h, w), antialias=True))
        return {**roi, "image": tf.ensure_shape(image, [h, w, 1])}

    def augment(roi: dict[str, Any]) -> tuple[Any, Any, Any]:
        image = roi["image"]
        if training:
            u = tf.random.stateless_uniform([1, 5], tf.stack([tf.constant(augment_stream, tf.int64), roi["key"]]))
            if cfg.rotation_deg == 0 and cfg.zoom == 0:  # flips alone move whole pixels: no resampling needed
                image = _flip(cfg, image, u[0])
            else:
                t = _affine(cfg, tf.constant([(h - 1) / 2]), tf.constant([(w - 1) / 2]), u, out_size=(h, w))
                image = _warp(image[:, :, 0], t[0], (h, w), cfg.fill_mode)
        return image, roi["label"], roi["example_id"]

    shuffle_seeds = (stream_seed(seed, _ROI_SHUFFLE, epoch), epoch)
    entry = _decoded(paths, cfg, resize, ("whole_image", h, w, keep_aspect)) if training else None
    if entry is not None:  # the same batches, from the examples kept in memory
        return cached.whole_image_batches(entry, paths, cfg, (h, w), shuffle_seeds, augment_stream)
    ds = _records(paths, cfg).map(traced(resize), num_parallel_calls=_parallel(cfg), deterministic=True)
    if training:
        ds = _seeded_shuffle(ds, cfg.roi_shuffle_buffer, *shuffle_seeds)
    ds = ds.map(traced(augment), num_parallel_calls=_parallel(cfg), deterministic=True)
    ds = ds.batch(cfg.batch_size, drop_remainder=cfg.drop_remainder and training)
    ds = ds.map(traced(lambda x, y, i: (_finish(cfg, x), y, i)), num_parallel_calls=_parallel(cfg),
                deterministic=True)
    return ds.prefetch(_AUTOTUNE if cfg.prefetch is None else cfg.prefetch).with_options(_options())
