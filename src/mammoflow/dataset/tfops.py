"""The tf.data building blocks of :mod:`mammoflow.dataset.pipeline` and :mod:`mammoflow.dataset.cached`: options,
the explicitly seeded shuffle, the folds filter, and the augmentation and input-convention operations.

``cfg`` is always a :class:`mammoflow.dataset.pipeline.InputConfig`; this module does not import it, so that both
modules above can import this one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# ImageNet statistics used by Keras' preprocess_input modes (caffe: BGR means on 0..255; torch: RGB mean/std).
CAFFE_MEAN = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
AUTOTUNE = -1  # tf.data.AUTOTUNE, without importing TensorFlow here


def tf_module() -> Any:
    import tensorflow as tf

    return tf


def traced(fn: Any) -> Any:
    """``fn`` for ``Dataset.map``, traced as written, without AutoGraph's source conversion.

    The input functions branch on Python values only (the config's flags), never on a tensor, so AutoGraph has
    nothing to convert; converting them cost ~0.85 s of parsing and rewriting at the first epoch of every process
    (a training run, each sweep trial). A function that did branch on a tensor fails loudly at trace time
    ("using a tf.Tensor as a Python bool is not allowed"), it does not run differently."""
    return tf_module().autograph.experimental.do_not_convert(fn)


def parallel(cfg: Any) -> int:
    return AUTOTUNE if cfg.num_parallel_calls is None else cfg.num_parallel_calls


def options() -> Any:
    tf = tf_module()
    opts = tf.data.Options()
    opts.deterministic = True  # parallel map/interleave keep their input order
    return opts


def memory_options() -> Any:
    """:func:`options` for a dataset whose functions capture the examples kept in memory: without tf.data's static
    graph rewrites, which serialise every captured tensor into a graph each time an iterator is made (tens of ms per
    epoch for a few dozen MB, more than the epoch's own work on a small set)."""
    opts = options()
    opts.experimental_optimization.apply_default_optimizations = False
    return opts


def seeded_shuffle(ds: Any, buffer_size: int, seed: int, seed2: int) -> Any:
    """``ds.shuffle`` with both op seeds given explicitly.

    ``Dataset.shuffle(seed=s)`` mixes ``s`` with TensorFlow's global seed (``tf.random.set_seed``), so the order
    would change whenever a trainer seeds TensorFlow differently; the underlying op takes both seeds directly.
    """
    tf = tf_module()
    flat = tf.nest.flatten(ds.element_spec)
    variant = tf.raw_ops.ShuffleDataset(
        input_dataset=tf.data.experimental.to_variant(ds), buffer_size=tf.constant(buffer_size, tf.int64),
        seed=tf.constant(seed, tf.int64), seed2=tf.constant(seed2, tf.int64),
        output_types=[s.dtype for s in flat], output_shapes=[s.shape for s in flat],
        reshuffle_each_iteration=False)
    return tf.data.experimental.from_variant(variant, ds.element_spec)


def in_folds(cfg: Any) -> Any:
    tf = tf_module()
    wanted = tf.constant(sorted(int(k) for k in cfg.folds or ()), tf.int64)
    return lambda roi: tf.reduce_any(tf.equal(wanted, roi["fold"]))


def affine(cfg: Any, centre_rows: Any, centre_cols: Any, uniforms: Any,
           out_size: Sequence[int] | None = None) -> Any:
    """Projective-transform rows ``[n, 8]`` mapping output pixels to ROI coordinates (see :mod:`mammoflow.dataset.pipeline`).

    The output pixel grid (``out_size``, default ``P x P``) is centred on ``(centre_rows, centre_cols)`` (float
    ``[n]``). ``uniforms`` ``[n, 5]`` in [0, 1): rotation, zoom x, zoom y, horizontal flip, vertical flip.
    """
    tf = tf_module()
    out_h, out_w = out_size or (cfg.patch_size, cfg.patch_size)
    pcy, pcx = (out_h - 1) / 2.0, (out_w - 1) / 2.0
    theta = (2.0 * uniforms[:, 0] - 1.0) * (cfg.rotation_deg * np.pi / 180.0)
    zx = 1.0 + (2.0 * uniforms[:, 1] - 1.0) * cfg.zoom
    zy = 1.0 + (2.0 * uniforms[:, 2] - 1.0) * cfg.zoom
    fx = tf.where(uniforms[:, 3] < 0.5, -1.0, 1.0) if cfg.hflip else tf.ones_like(zx)
    fy = tf.where(uniforms[:, 4] < 0.5, -1.0, 1.0) if cfg.vflip else tf.ones_like(zy)
    cos, sin = tf.cos(theta), tf.sin(theta)
    # A = R(theta) @ diag(zx * fx, zy * fy); ROI point = centre + A @ (output point - output centre)
    a00, a01 = cos * zx * fx, -sin * zy * fy
    a10, a11 = sin * zx * fx, cos * zy * fy
    cx = tf.cast(centre_cols, tf.float32)
    cy = tf.cast(centre_rows, tf.float32)
    zeros = tf.zeros_like(a00)
    return tf.stack([a00, a01, cx - (a00 * pcx + a01 * pcy), a10, a11, cy - (a10 * pcx + a11 * pcy), zeros, zeros],
                    axis=1)


def warp(image: Any, transform: Any, size: Sequence[int], fill_mode: str) -> Any:
    """Resample a 2-D image through one projective transform into a ``size`` float32 ``[h, w, 1]`` patch."""
    tf = tf_module()
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis, :, :, tf.newaxis], transforms=transform[tf.newaxis],
        output_shape=tf.constant(list(size), tf.int32), fill_value=tf.constant(0.0, tf.float32),
        interpolation="BILINEAR", fill_mode=fill_mode.upper())
    return out[0]


def flip(cfg: Any, image: Any, uniforms: Any) -> Any:
    """The flips :func:`affine` draws from the same ``uniforms`` [5], applied to an ``[h, w, 1]`` image as exact
    pixel moves: what :func:`warp` gives for a transform without rotation or zoom, without the resampling."""
    tf = tf_module()
    if cfg.hflip:
        image = tf.cond(uniforms[3] < 0.5, lambda: tf.reverse(image, [1]), lambda: image)
    if cfg.vflip:
        image = tf.cond(uniforms[4] < 0.5, lambda: tf.reverse(image, [0]), lambda: image)
    return image


def flip_batch(cfg: Any, images: Any, uniforms: Any) -> Any:
    """:func:`flip` of each image of a batch ``[B, h, w, 1]`` by its row of ``uniforms`` ``[B, 5]``: the same pixels."""
    tf = tf_module()
    if cfg.hflip:
        images = tf.where((uniforms[:, 3] < 0.5)[:, None, None, None], tf.reverse(images, [2]), images)
    if cfg.vflip:
        images = tf.where((uniforms[:, 4] < 0.5)[:, None, None, None], tf.reverse(images, [1]), images)
    return images


def warp_batch(images: Any, transforms: Any, size: Sequence[int], fill_mode: str) -> Any:
    """:func:`warp` of each image of a batch ``[B, h, w, 1]`` through its row of ``transforms`` ``[B, 8]``."""
    tf = tf_module()
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.constant(list(size), tf.int32),
        fill_value=tf.constant(0.0, tf.float32), interpolation="BILINEAR", fill_mode=fill_mode.upper())


def finish(cfg: Any, x: Any) -> Any:
    """Centring and channel count on a batch ``[B, h, w, 1]`` (float32 on the ``value_range`` scale)."""
    tf = tf_module()
    if cfg.centring == "patch_mean":  # Yu et al. 2020: each patch minus its own mean
        x = x - tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    if cfg.channels == 3:
        x = tf.repeat(x, 3, axis=-1)
    scale = 255.0 / cfg.value_range
    if cfg.centring == "caffe":
        mean = np.array(CAFFE_MEAN, np.float32)
        x = x * scale - (mean if cfg.channels == 3 else mean.mean())
    elif cfg.centring == "tf":
        x = x * (scale / 127.5) - 1.0
    elif cfg.centring == "torch":
        mean, std = np.array(TORCH_MEAN, np.float32), np.array(TORCH_STD, np.float32)
        if cfg.channels == 1:
            mean, std = mean.mean(), std.mean()
        x = (x * (scale / 255.0) - mean) / std
    return x
