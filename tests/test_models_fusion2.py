"""Fusion2's branch built as pooling + moments -> BatchNormFromMoments gives what the paper's BatchNormalization ->
average pooling gives: outputs, moving statistics and gradients, in training and in inference; and a saved Fusion2
model loads and predicts the same."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from mammoflow.models import create_model, load_model, model_meta, split_frozen_backbone
from mammoflow.models.layers import BatchNormFromMoments, ChannelMoments


def _pair(channels: int, seed: int) -> tuple[layers.BatchNormalization, BatchNormFromMoments]:
    """A plain BN and ours with the same non-trivial weights and moving statistics."""
    rng = np.random.default_rng(seed)
    plain, ours = layers.BatchNormalization(momentum=0.9), BatchNormFromMoments(momentum=0.9)
    plain.build((None, 4, 4, channels))
    ours.build([(None, 2, 2, channels), (None, 2, channels)])
    weights = [rng.uniform(0.5, 2.0, channels), rng.normal(0, 1, channels), rng.normal(0, 1, channels),
               rng.uniform(0.5, 2.0, channels)]  # gamma, beta, moving mean, moving variance
    plain.set_weights(weights)
    ours.set_weights(weights)
    return plain, ours


@pytest.mark.parametrize(("size", "pool"), [(36, 16), (18, 8), (9, 4), (2, 1), (7, 3)])
@pytest.mark.parametrize("training", [True, False])
def test_pooling_first_is_bn_then_pooling(size: int, pool: int, training: bool) -> None:
    rng = np.random.default_rng(size * 10 + pool)
    channels = 5
    # feature maps like a ReLU block's: non-negative, a large mean beside their spread
    tap = tf.constant(rng.gamma(2.0, 30.0, (6, size, size, channels)).astype("float32") + 100.0)
    plain, ours = _pair(channels, seed=pool)
    pooling = layers.AveragePooling2D(pool) if pool > 1 else layers.Identity()
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(tap)
        want = pooling(plain(tap, training=training))
        got = ours([pooling(tap), ChannelMoments()(tap)], training=training)
        loss_want = tf.reduce_sum(want * tf.cos(want))  # any non-linear function of the outputs
        loss_got = tf.reduce_sum(got * tf.cos(got))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)
    for w_plain, w_ours in zip(plain.weights, ours.weights, strict=True):  # the moving statistics' update
        np.testing.assert_allclose(w_ours.numpy(), w_plain.numpy(), rtol=1e-5, atol=1e-5)
    for a, b in ((plain.gamma, ours.gamma), (plain.beta, ours.beta), (tap, tap)):
        np.testing.assert_allclose(tape.gradient(loss_got, b).numpy(), tape.gradient(loss_want, a).numpy(),
                                   rtol=2e-3, atol=2e-3)
    if training:  # the statistics did move: the comparison above is not of two untouched layers
        assert not np.allclose(ours.moving_mean.numpy(), _pair(channels, seed=pool)[1].moving_mean.numpy())


# Two replicas on two logical CPUs (set before TensorFlow starts: a process of its own), each with other examples,
# one of them none: ours against Keras' own synchronized BatchNormalization, then pooled.
_SYNCED = r"""
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from keras import layers
from mammoflow.models.layers import BatchNormFromMoments, ChannelMoments
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
rng = np.random.default_rng(5)
for sizes in ((3, 5), (2, 0)):
    taps = [tf.constant(rng.gamma(2.0, 30.0, (n, 8, 8, 3)).astype("float32") + 50.0) for n in sizes]
    with strategy.scope():
        plain = layers.BatchNormalization(momentum=0.5, synchronized=True)
        ours = BatchNormFromMoments(momentum=0.5, synchronized=True)
        plain.build((None, 8, 8, 3))
        ours.build([(None, 2, 2, 3), (None, 2, 3)])
    pool, moments = layers.AveragePooling2D(4), ChannelMoments()
    values = strategy.experimental_distribute_values_from_function(lambda ctx: taps[ctx.replica_id_in_sync_group])
    want, got = strategy.run(lambda t: (pool(plain(t, training=True)), ours([pool(t), moments(t)], training=True)),
                             args=(values,))
    for a, b in zip(strategy.experimental_local_results(want), strategy.experimental_local_results(got)):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-4)
    every = np.concatenate([t.numpy() for t in taps])  # the global batch's statistics, not a replica's
    np.testing.assert_allclose(ours.moving_mean.numpy(), 0.5 * every.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(ours.moving_variance.numpy(), 0.5 + 0.5 * every.var(axis=(0, 1, 2)), rtol=1e-4)
    np.testing.assert_allclose(ours.moving_variance.numpy(), plain.moving_variance.numpy(), rtol=1e-4)
print("synchronized: same")
"""


def test_synchronized_statistics_are_the_global_batchs() -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", _SYNCED], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and "synchronized: same" in done.stdout, done.stderr[-3000:]


def test_mixed_precision_keeps_the_statistics_in_float32() -> None:
    """Under mixed_float16 the moments stay float32: a variance above float16's 65504 (a standard deviation above
    256) must not become inf, as BatchNormalization computes it in float32 from float16 inputs."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        rng = np.random.default_rng(9)
        tap = tf.constant(rng.gamma(2.0, 400.0, (4, 8, 8, 3)).astype("float16"))  # variance about 320,000
        plain, ours = layers.BatchNormalization(momentum=0.5), BatchNormFromMoments(momentum=0.5)
        pool = layers.AveragePooling2D(4)
        want = pool(plain(tap, training=True))
        got = ours([pool(tap), ChannelMoments()(tap)], training=True)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert got.dtype == want.dtype == tf.float16
    assert np.isfinite(ours.moving_variance.numpy()).all() and ours.moving_variance.numpy().min() > 65504 / 2
    np.testing.assert_allclose(ours.moving_variance.numpy(), plain.moving_variance.numpy(), rtol=1e-3)
    np.testing.assert_allclose(got.numpy().astype("float32"), want.numpy().astype("float32"), rtol=2e-2, atol=2e-2)


def test_the_head_cache_holds_pooled_maps_and_moments(tmp_path) -> None:
    model = create_model("vgg16_fusion2", input_shape=(72, 72, 3), fc_units=(8, 8), seed=0)
    meta = model_meta(model)
    assert meta.head_inputs == ("avgpool_l1", "moments_l1", "avgpool_l2", "moments_l2", "avgpool_l3", "moments_l3",
                                "avgpool_l4", "moments_l4", "block5_pool", "moments_l5")
    backbone, _ = split_frozen_backbone(model)
    widths = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}
    shapes = [tuple(t.shape[1:]) for t in backbone.outputs]
    assert shapes == [s for level in range(1, 6) for s in ((2, 2, widths[level]), (2, widths[level]))]
    # per patch: 8,832 values instead of the five whole block outputs' 155,392 (block 1 alone: 36 x 36 x 64)
    whole = sum(int(np.prod(model.get_layer(f"block{level}_pool").output.shape[1:])) for level in range(1, 6))
    assert (sum(int(np.prod(s)) for s in shapes), whole) == (8832, 155392)
    model.save(tmp_path / "model.keras")
    x = np.random.default_rng(0).uniform(0, 255, (3, 72, 72, 3)).astype("float32")
    np.testing.assert_allclose(load_model(tmp_path / "model.keras").predict(x, verbose=0),
                               model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_a_weights_file_of_another_layout_says_what_to_do(tmp_path) -> None:
    from mammoflow.errors import ConfigError
    from mammoflow.models.weights import load_model_weights

    other = create_model("vgg16_fusion1", input_shape=(32, 32, 3), fc_units=(8, 8), seed=0)
    other.save_weights(tmp_path / "fusion1.weights.h5")
    fusion2 = create_model("vgg16_fusion2", input_shape=(32, 32, 3), fc_units=(8, 8), seed=0)
    with pytest.raises(ConfigError, match="saved before December 2026.*warm_start: false"):
        load_model_weights(fusion2, tmp_path / "fusion1.weights.h5", "vgg16_fusion2")
    with pytest.raises(ConfigError) as err:  # another model gets the general message only
        load_model_weights(other, tmp_path / "nothing.weights.h5", "vgg16_fusion1")
    assert "Fusion2" not in str(err.value)


def test_only_the_plain_layer_is_supported() -> None:
    with pytest.raises(ValueError, match="axis=-1"):
        BatchNormFromMoments(axis=1)
    with pytest.raises(ValueError, match="renorm"):
        BatchNormFromMoments(renorm=True)
    assert isinstance(BatchNormFromMoments(), keras.layers.BatchNormalization)  # the distribution code finds it
