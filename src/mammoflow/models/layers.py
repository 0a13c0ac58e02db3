"""The project's own Keras layers (importing this module imports Keras and registers them, so that a saved model
that uses them loads: :func:`mammoflow.models.load_model`).

Yu et al.'s Fusion2 normalises each VGG block's output (BatchNormalization) and then average-pools it. Batch
normalisation is a per-channel affine map, so it commutes with average pooling: pooling first and normalising the
pooled map gives the same values, provided the batch statistics are still those of the whole map. So a Fusion2
branch is built as

    tap -> AveragePooling2D ---------------------\\
    tap -> ChannelMoments (per example: mean, variance over H, W) -> BatchNormFromMoments -> 1x1 conv -> ...

which is the paper's BN -> pool, exactly up to float rounding (in training the batch's mean and variance come from
the examples' moments by the law of total variance: every example has the same H x W), with the same variables
(``gamma``, ``beta``, ``moving_mean``, ``moving_variance``) and the same moving-average updates as a
``BatchNormalization``. What the layer after the frozen backbone reads is then the pooled map and 2 x C moments
instead of the whole map (block 1 at 72x72: 2 x 2 x 64 + 2 x 64 values instead of 36 x 36 x 64), so the head cache
holds and trains on some 200 times less data for that branch.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="mammoflow")
class ChannelMoments(layers.Layer):
    """Per example and channel, the mean and the (biased) variance of a feature map ``[B, H, W, C]`` over its
    spatial axes: ``[B, 2, C]`` (row 0 the means, row 1 the variances). No weights. Always float32, under mixed
    precision too (a variance of float16 values overflows float16 beyond 65504: a standard deviation above 256)."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, x: Any) -> Any:
        x = ops.cast(x, "float32")
        mean = ops.mean(x, axis=(1, 2))
        variance = ops.mean(ops.square(x - mean[:, None, None, :]), axis=(1, 2))
        return ops.stack([mean, variance], axis=1)

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return (input_shape[0], 2, input_shape[-1])


@keras.saving.register_keras_serializable(package="mammoflow")
class BatchNormFromMoments(layers.BatchNormalization):
    """``BatchNormalization`` of a feature map, applied to a linear summary of it (its average-pooled version), with
    the batch statistics of the whole map given by its :class:`ChannelMoments`: inputs ``[pooled, moments]``.

    In training the batch mean is the mean of the examples' means, and the batch variance the mean of their
    variances plus the variance of their means (every example has the same number of pixels), which is what
    ``BatchNormalization`` computes over the whole map; the moving averages are updated as it updates them.
    Otherwise (inference, or the layer frozen) the moving statistics are used. Only the plain layer is supported:
    channels last, no renormalisation. ``synchronized`` (several replicas, :func:`mammoflow.training.distribute.
    sync_batch_norm`) sums the moments over the replicas as ``BatchNormalization`` sums its inputs: the mean and the
    mean square of the global batch, all-reduced."""

    def __init__(self, **kwargs: Any):
        # The moments arrive in float32 and must stay so (Keras would cast every input to float16 under mixed
        # precision before call): the pooled map is cast here, as BatchNormalization casts its input.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        if self.axis != -1 or self.renorm:
            raise ValueError("BatchNormFromMoments: only axis=-1, without renorm")

    def build(self, input_shape: Any) -> None:
        super().build(input_shape[0])
        self.input_spec = None  # two inputs: the pooled map and its moments

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape[0]

    def call(self, inputs: Any, training: Any = None, mask: Any = None) -> Any:
        pooled, moments = inputs
        pooled, moments = ops.cast(pooled, "float32"), ops.cast(moments, "float32")
        if training and self.trainable:
            mean, variance = self._batch_moments(moments[:, 0, :], moments[:, 1, :])
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            mean, variance = self.moving_mean, self.moving_variance
        outputs = ops.batch_normalization(pooled, mean, variance, axis=-1, offset=self.beta if self.center else None,
                                          scale=self.gamma if self.scale else None, epsilon=self.epsilon)
        return ops.cast(outputs, self.compute_dtype)

    def _batch_moments(self, means: Any, variances: Any) -> tuple[Any, Any]:
        """The batch's per-channel mean and variance from its examples' (all of the same size)."""
        replicas = _replica_context() if self.synchronized else None
        if replicas is None:
            mean = ops.mean(means, axis=0)
            return mean, ops.mean(variances, axis=0) + ops.mean(ops.square(means - mean), axis=0)
        import tensorflow as tf

        total = replicas.all_reduce(tf.distribute.ReduceOp.SUM, ops.stack([  # a replica may have no example
            ops.sum(means, axis=0), ops.sum(variances + ops.square(means), axis=0),
            ops.sum(ops.ones_like(means), axis=0)]))
        mean = tf.math.divide_no_nan(total[0], total[2])
        return mean, ops.maximum(tf.math.divide_no_nan(total[1], total[2]) - ops.square(mean), 0.0)


def _replica_context() -> Any:
    """TensorFlow's replica context when there is one (inside a distribution strategy's step), else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    return tf.distribute.get_replica_context()
