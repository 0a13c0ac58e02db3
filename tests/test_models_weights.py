"""Model weights (files, gs:// URIs, ImageNet offline), the frozen-backbone/head split and ``mammoflow models``."""

from __future__ import annotations

import json
import os
import socket
import urllib.request
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from tests.gcs_emulator import gcs_bucket, gcs_emulator  # noqa: F401  (fixtures)

from mammoflow import storage
from mammoflow.cli import cli
from mammoflow.errors import ConfigError
from mammoflow.models import (
    attach_meta,
    create_model,
    head_variable_paths,
    list_models,
    model_meta,
    split_frozen_backbone,
)


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    yield
    keras.backend.clear_session()


def images(shape: tuple, n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def outputs(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return model.predict(x, verbose=0)


# ------------------------------------------------------------------------------------------------ weights


def test_whole_model_weights_file_round_trip(tmp_path):
    x = images((32, 32, 1))
    trained = create_model("compact_fusion", input_shape=(32, 32, 1), seed=1)
    path = tmp_path / "run" / "model.weights.h5"
    path.parent.mkdir()
    trained.save_weights(path)
    loaded = create_model("compact_fusion", input_shape=(32, 32, 1), weights=str(path), seed=2)
    np.testing.assert_allclose(outputs(loaded, x), outputs(trained, x), atol=1e-6)
    assert model_meta(loaded).weights == str(path)
    assert model_meta(loaded).create_kwargs()["weights"] == str(path)


def test_weights_file_errors_name_the_file_and_the_fix(tmp_path):
    path = tmp_path / "model.weights.h5"
    create_model("compact_fusion", input_shape=(32, 32, 1)).save_weights(path)
    with pytest.raises(ConfigError, match="cannot be loaded into model 'compact_fusion'"):
        create_model("compact_fusion", input_shape=(32, 32, 1), num_classes=3, weights=str(path))
    with pytest.raises(ConfigError, match="weights file not found"):
        create_model("compact_fusion", weights=str(tmp_path / "missing.weights.h5"))
    with pytest.raises(ConfigError, match="either weights"):
        create_model("vgg16_gap", weights="imagenet", backbone_weights=str(path))


def test_whole_model_weights_from_object_storage(gcs_bucket, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("MAMMOFLOW_CACHE", str(tmp_path / "cache"))
    x = images((32, 32, 1))
    trained = create_model("xi_alexnet", input_shape=(32, 32, 1), seed=5)
    local = tmp_path / "xi.weights.h5"
    trained.save_weights(local)
    uri = f"{gcs_bucket}/runs/r1/model.weights.h5"
    storage.put_file(local, uri)
    loaded = create_model("xi_alexnet", input_shape=(32, 32, 1), weights=uri)
    np.testing.assert_allclose(outputs(loaded, x), outputs(trained, x), atol=1e-6)
    cached = list((tmp_path / "cache" / "weights").rglob("*.weights.h5"))
    assert len(cached) == 1 and not list((tmp_path / "cache").rglob("*.partial"))


def test_backbone_only_weights_file(tmp_path):
    """A mirrored keras.applications notop file loads into the backbone, by layer name; the head stays random."""
    reference = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "vgg16_notop.weights.h5"
    reference.save_weights(path)
    model = create_model("vgg16_fusion1", input_shape=(32, 32, 1), backbone_weights=str(path))
    for name in ("block1_conv1", "block3_conv3", "block5_conv3"):
        for got, want in zip(model.get_layer(name).get_weights(), reference.get_layer(name).get_weights(),
                             strict=True):
            np.testing.assert_array_equal(got, want)
    assert model_meta(model).backbone_weights == str(path)


def _keras_cached(filename: str) -> bool:
    homes = [Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")), Path("/tmp/.keras")]
    return any((home / "models" / filename).exists() for home in homes)


def test_imagenet_weights_offline_give_a_clear_error(monkeypatch):
    if _keras_cached("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"):
        pytest.skip("VGG16 ImageNet weights are in the Keras cache: nothing would be downloaded")
    # Route every urllib request through a loopback port that this test holds bound but not listening: the
    # connection is refused at once, even where CI has a network, so the test never downloads anything; holding
    # the port keeps any other process from listening on it meanwhile.
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{blocker.getsockname()[1]}"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": closed, "https": closed}))
        monkeypatch.setattr(urllib.request, "_opener", opener)
        with pytest.raises(ConfigError) as err:
            create_model("vgg16_fusion1", input_shape=(32, 32, 3), weights="imagenet")
    message = str(err.value)
    assert "ImageNet weights for VGG16 could not be downloaded" in message
    assert "weights: none" in message and "backbone_weights" in message


# -------------------------------------------------------------------------------- frozen backbone / head


@pytest.mark.parametrize(("name", "kwargs", "head_inputs"), [
    ("vgg16_fusion1", {"input_shape": (32, 32, 3)}, ("fusion_concat",)),
    ("vgg19_fusion2", {"input_shape": (32, 32, 1), "branches": (2, 4, 5)},
     ("avgpool_l2", "moments_l2", "avgpool_l4", "moments_l4", "block5_pool", "moments_l5")),
    ("vgg16_gap", {"input_shape": (32, 32, 3)}, ("gap_l5",)),
    ("xi_resnet50", {"input_shape": (32, 32, 1)}, ("gap",)),
    ("jaamour_mobilenetv2", {"input_shape": (32, 32, 1)}, ("flatten",)),
])
def test_head_on_cached_backbone_features_equals_the_full_model(name, kwargs, head_inputs):
    model = create_model(name, seed=0, **kwargs)
    # give the head's BN layers non-trivial statistics so the comparison covers them
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy")
    model.train_on_batch(images(kwargs["input_shape"], n=8, seed=3), np.arange(8) % 2)
    backbone, head = split_frozen_backbone(model)
    assert model_meta(model).head_inputs == head_inputs
    assert not backbone.trainable_weights
    x = images(kwargs["input_shape"], n=4, seed=4)
    features = backbone.predict(x, verbose=0)
    if len(head_inputs) > 1:
        assert [f.shape[-1] for f in features] == [model.get_layer(n).output.shape[-1] for n in head_inputs]
    np.testing.assert_allclose(outputs(head, features), outputs(model, x), atol=1e-5)


def test_training_the_head_trains_the_full_model():
    model = create_model("vgg16_fusion1", input_shape=(32, 32, 3), fc_units=(16, 16), seed=0)
    backbone, head = split_frozen_backbone(model)
    assert head.get_layer("fc1") is model.get_layer("fc1")
    x = images((32, 32, 3), n=8, seed=5)
    features = backbone.predict(x, verbose=0)
    assert features.shape == (8, 1472)
    before = outputs(model, x)
    head.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    for _ in range(3):
        head.train_on_batch(features, np.arange(8) % 2)
    after = outputs(model, x)
    assert not np.allclose(before, after)
    np.testing.assert_allclose(outputs(head, features), after, atol=1e-5)


@pytest.mark.parametrize(("name", "kwargs", "needle"), [
    ("compact_fusion", {}, "no frozen part to cache"),
    ("xi_alexnet", {"input_shape": (32, 32, 1)}, "no frozen part to cache"),
    ("jaamour_vgg19", {"input_shape": (64, 64, 1), "extra_blocks": 1}, "no frozen part to cache"),
    ("vgg16_fusion1", {"input_shape": (32, 32, 3), "trainable_backbone": True}, "cached features would go stale"),
])
def test_models_without_a_frozen_prefix_refuse_to_split(name, kwargs, needle):
    with pytest.raises(ConfigError, match=needle):
        split_frozen_backbone(create_model(name, **kwargs))


def test_meta_rebuilds_the_same_model():
    model = create_model("vgg19_fusion2", input_shape=[32, 32, 3], branches=[3, 5], fc_units=[8, 8], seed=0)
    meta = model_meta(model)
    again = create_model(**meta.create_kwargs())
    assert [layer.name for layer in again.layers] == [layer.name for layer in model.layers]
    assert json.loads(json.dumps(meta.to_dict()))["params"]["branches"] == [3, 5]


def test_a_loaded_model_gets_its_metadata_back(tmp_path):
    model = create_model("jaamour_mobilenetv2", input_shape=(32, 32, 1), pooling="gap", seed=0)
    saved = json.loads(json.dumps(model_meta(model).to_dict()))  # as a run folder would keep it
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    with pytest.raises(ConfigError, match="attach_meta"):
        model_meta(loaded)
    attach_meta(loaded, saved)
    assert model_meta(loaded) == model_meta(model)
    x = images((32, 32, 1))
    backbone, head = split_frozen_backbone(loaded)
    np.testing.assert_allclose(outputs(head, backbone.predict(x, verbose=0)), outputs(model, x), atol=1e-5)
    other = model_meta(create_model("xi_vgg16", input_shape=(32, 32, 1)))
    with pytest.raises(ConfigError, match="does not match the metadata of 'xi_vgg16'"):
        attach_meta(loaded, other)


def test_head_variable_paths_are_the_layers_outside_the_backbone():
    assert head_variable_paths(create_model("xi_vgg16", input_shape=(32, 32, 1))) == ["predictions"]
    paths = head_variable_paths(create_model("vgg16_fusion2", input_shape=(32, 32, 3), branches=(4, 5)))
    assert sorted(paths) == ["bn_head", "bn_l4", "bn_l5", "conv1x1_l4", "conv1x1_l5", "fc1", "fc2", "predictions"]
    model = create_model("compact_fusion", input_shape=(32, 32, 1))
    assert head_variable_paths(model) == [layer.name for layer in model.layers if layer.weights]


def test_meta_is_required():
    with pytest.raises(ConfigError, match="was not built by mammoflow"):
        model_meta(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_lists_the_registry():
    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["NAME", "FAMILY", "PAPER", "INPUT"]
    assert {line.split()[0] for line in lines[1:]} == {i.name for i in list_models()}
    assert any(line.startswith("vgg16_fusion1 ") and "72x72x3" in line for line in lines)

    as_json = json.loads(CliRunner().invoke(cli, ["models", "--json", "--family", "xi2018"]).output)
    assert {m["name"] for m in as_json} == {"xi_alexnet", "xi_vgg16", "xi_inceptionv3", "xi_resnet50"}


def test_cli_shows_one_model():
    result = CliRunner().invoke(cli, ["models", "--show", "vgg16_fusion1", "--set", "branches=[4,5]",
                                      "--input-shape", "32,32,3"])
    assert result.exit_code == 0, result.output
    assert "taps:              block4_pool, block5_pool" in result.output
    assert "fusion_concat" in result.output and "bn_head" in result.output  # the Keras summary
    assert "(None, 1024)" in result.output


def test_cli_show_unknown_model_fails_with_the_list():
    result = CliRunner().invoke(cli, ["models", "--show", "alexnet"])
    assert result.exit_code != 0
    assert isinstance(result.exception, ConfigError) and "xi_alexnet" in str(result.exception)
