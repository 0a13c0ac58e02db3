"""The model registry and the papers' architectures, built with random weights on tiny inputs."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
from keras import layers

from mammoflow.errors import ConfigError
from mammoflow.models import create_model, get_model_info, list_models, model_meta, set_backbone_trainable
from mammoflow.models.backbones import BACKBONES, tap
from mammoflow.models.jaamour2023 import default_extra_blocks
from mammoflow.models.yu2020 import fusion2_pool_size

PAPER_MODELS = {
    "yu2020": {"vgg16_gap", "vgg19_gap", "vgg16_fusion1", "vgg19_fusion1", "vgg16_fusion2", "vgg19_fusion2"},
    "jaamour2023": {f"jaamour_{b}" for b in ("vgg19", "resnet50", "inceptionv3", "densenet121", "mobilenetv2")},
    "xi2018": {"xi_alexnet", "xi_vgg16", "xi_inceptionv3", "xi_resnet50"},
    "mammoflow": {"compact_fusion"},
}
VGG16_BLOCK_CHANNELS = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}  # Yu et al.: 64+128+256+512+512 = 1,472


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    yield
    keras.backend.clear_session()


def tiny_shape(name: str, channels: int = 1) -> tuple[int, int, int]:
    """The smallest input each backbone accepts (InceptionV3 needs 75x75)."""
    return (75, 75, channels) if "inception" in name else (32, 32, channels)


def images(shape: tuple, n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def width(model: keras.Model, layer_name: str) -> int:
    return model.get_layer(layer_name).output.shape[-1]


def trainable_layer_types(model: keras.Model) -> set[str]:
    return {type(layer).__name__ for layer in model.layers if layer.trainable_weights}


# ------------------------------------------------------------------------------------------------ registry


def test_registry_lists_every_model_of_the_three_papers():
    infos = list_models()
    assert {i.name for i in infos} == set().union(*PAPER_MODELS.values())
    for family, names in PAPER_MODELS.items():
        assert {i.name for i in list_models(family)} == names
    assert [i.family for i in infos][0] == "yu2020"  # papers first, ours last
    assert infos[-1].name == "compact_fusion"
    for info in infos:
        assert info.paper and info.description and len(info.default_input_shape) == 3
    assert get_model_info("vgg16_fusion1").params == {"branches": (1, 2, 3, 4, 5), "fc_units": (1024, 1024),
                                                      "dropout": 0.0}


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ConfigError) as err:
        create_model("vgg16_fusion3")
    message = str(err.value)
    assert "Did you mean" in message and "vgg16_fusion1" in message
    assert all(i.name in message for i in list_models())


@pytest.mark.parametrize(("name", "kwargs", "needle"), [
    ("vgg16_fusion1", {"branch": (4, 5)}, "no parameter(s) ['branch']"),
    ("vgg16_fusion1", {"branches": (0, 5)}, "branches must be distinct block levels"),
    ("vgg16_fusion1", {"branches": (5, 5)}, "branches must be distinct block levels"),
    ("vgg16_fusion1", {"branches": ()}, "branches must be distinct block levels"),
    ("vgg16_fusion1", {"fc_units": (1024, 0)}, "fc_units must be a list of positive integers"),
    ("vgg16_fusion2", {"branch_filters": (32, 32)}, "branch_filters must be a list of 5 positive integers"),
    ("jaamour_vgg19", {"dropout": 1.5}, "dropout must be a number in [0, 1)"),
    ("jaamour_vgg19", {"pooling": "max"}, "pooling must be one of"),
    ("vgg16_gap", {"input_shape": (32, 32, 2)}, "1 (grey) or 3 channels"),
    ("vgg16_gap", {"input_shape": (32, 32)}, "(height, width, channels)"),
    ("vgg16_gap", {"num_classes": 1}, "num_classes must be an integer >= 2"),
    ("vgg16_gap", {"input_shape": (16, 16, 3)}, "below its minimum 32x32"),
    ("xi_inceptionv3", {"input_shape": (64, 64, 3)}, "below its minimum 75x75"),
    ("vgg16_fusion2", {"input_shape": (None, None, 3)}, "needs a fixed input size"),
    ("jaamour_vgg19", {"input_shape": (None, None, 1)}, "flatten needs a fixed input size"),
    ("compact_fusion", {"weights": "imagenet"}, "has no pretrained backbone"),
    ("vgg16_gap", {"weights": "best.h5"}, "must end in .weights.h5"),
])
def test_bad_arguments_raise_a_clear_config_error(name, kwargs, needle):
    with pytest.raises(ConfigError) as err:
        create_model(name, **kwargs)
    assert needle in str(err.value)


# ------------------------------------------------------------------------------------- every model trains


@pytest.mark.parametrize("name", sorted(set().union(*PAPER_MODELS.values())))
def test_every_model_builds_and_trains_one_step_with_frozen_backbone_unchanged(name):
    shape = tiny_shape(name)
    model = create_model(name, input_shape=shape, seed=0)
    meta = model_meta(model)
    for layer_name in (*meta.taps, *meta.head_inputs, meta.cam_layer, *meta.backbone_layers):
        model.get_layer(layer_name)  # every name in the metadata exists in the model
    assert model.output.shape[-1] == 2 and model.get_layer("predictions").activation.__name__ == "softmax"

    backbone = [w for n in meta.backbone_layers for w in model.get_layer(n).weights]
    frozen = {w.path: w.numpy().copy() for w in backbone}
    head = {w.path: w.numpy().copy() for w in model.trainable_weights}
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    loss = model.train_on_batch(images(shape), np.array([0, 1]))
    assert np.isfinite(loss)
    assert all(np.array_equal(w.numpy(), frozen[w.path]) for w in backbone)  # incl. BN statistics
    assert any(not np.array_equal(w.numpy(), head[w.path]) for w in model.trainable_weights)
    probs = model.predict(images(shape, seed=1), verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    if meta.backbone is None:  # trained from scratch: nothing frozen but BN moving statistics
        assert meta.backbone_layers == ()
        assert {type(layer).__name__ for layer in model.layers if layer.non_trainable_weights} <= {
            "BatchNormalization"}
    else:
        assert all(not model.get_layer(n).trainable_weights for n in meta.backbone_layers)


# --------------------------------------------------------------------------------------------- Yu et al.


def test_fusion1_vgg16_all_blocks_is_1472_wide_and_trains_only_bn_and_fc():
    model = create_model("vgg16_fusion1", input_shape=(72, 72, 3))
    assert width(model, "fusion_concat") == 1472
    assert [width(model, f"gap_l{level}") for level in range(1, 6)] == [64, 128, 256, 512, 512]
    assert trainable_layer_types(model) == {"BatchNormalization", "Dense"}
    assert all(not layer.trainable for layer in model.layers if isinstance(layer, layers.Conv2D))
    assert width(model, "fc1") == 1024 and width(model, "fc2") == 1024 and width(model, "predictions") == 2
    # the taps are the named block pooling layers
    for level in range(1, 6):
        assert model.get_layer(f"gap_l{level}").input is model.get_layer(f"block{level}_pool").output


def test_fusion1_trainable_backbone_unfreezes_the_convs():
    model = create_model("vgg16_fusion1", input_shape=(32, 32, 3), trainable_backbone=True)
    assert trainable_layer_types(model) == {"BatchNormalization", "Dense", "Conv2D"}
    assert model_meta(model).trainable_backbone


def test_fusion2_vgg16_is_224_wide_with_the_papers_pool_sizes():
    model = create_model("vgg16_fusion2", input_shape=(72, 72, 3))
    assert width(model, "fusion_concat") == 224
    assert [model.get_layer(f"avgpool_l{level}").pool_size for level in range(1, 5)] == [
        (16, 16), (8, 8), (4, 4), (2, 2)]
    assert "avgpool_l5" not in {layer.name for layer in model.layers}  # L5: no pooling
    # every branch ends at block 5's 2x2 size before its 1x1 conv
    assert {model.get_layer(f"conv1x1_l{level}").output.shape[1:3] for level in range(1, 6)} == {(2, 2)}
    assert [width(model, f"conv1x1_l{level}") for level in range(1, 6)] == [32, 32, 32, 64, 64]
    trainable_convs = {layer.name for layer in model.layers if isinstance(layer, layers.Conv2D) and layer.trainable}
    assert trainable_convs == {f"conv1x1_l{level}" for level in range(1, 6)}
    assert trainable_layer_types(model) == {"BatchNormalization", "BatchNormFromMoments", "Conv2D", "Dense"}
    # BN -> pooling, built as pooling and the tap's moments -> BN of the pooled map (tests/test_models_fusion2.py)
    tap = model.get_layer("block2_pool").output
    assert model.get_layer("avgpool_l2").input is tap and model.get_layer("moments_l2").input is tap
    assert model.get_layer("bn_l2").input == [model.get_layer("avgpool_l2").output,
                                              model.get_layer("moments_l2").output]


@pytest.mark.parametrize("branches", [(5,), (4, 5), (3, 4, 5), (2, 3, 4, 5), (1, 2, 3, 4, 5)])
def test_branch_subsets_give_the_right_widths(branches):
    fusion1 = create_model("vgg16_fusion1", input_shape=(32, 32, 3), branches=list(branches))
    assert width(fusion1, "fusion_concat") == sum(VGG16_BLOCK_CHANNELS[b] for b in branches)
    assert {n for n in (layer.name for layer in fusion1.layers) if n.startswith("gap_l")} == {
        f"gap_l{b}" for b in branches}
    fusion2 = create_model("vgg19_fusion2", input_shape=(32, 32, 3), branches=branches)
    filters = {1: 32, 2: 32, 3: 32, 4: 64, 5: 64}
    assert width(fusion2, "fusion_concat") == sum(filters[b] for b in branches)
    assert model_meta(fusion2).taps == tuple(f"block{b}_pool" for b in branches)


def test_branches_are_sorted_and_the_cam_layer_follows_the_deepest_branch():
    model = create_model("vgg16_fusion1", input_shape=(32, 32, 3), branches=(3, 1))
    meta = model_meta(model)
    assert meta.taps == ("block1_pool", "block3_pool")
    assert meta.cam_layer == "block3_conv3"
    assert "block5_conv1" not in {layer.name for layer in model.layers}  # unused blocks are not built in


@pytest.mark.parametrize(("tap_hw", "deepest_hw", "expected"), [
    ((36, 36), (2, 2), (16, 16)), ((18, 18), (2, 2), (8, 8)), ((9, 9), (2, 2), (4, 4)),
    ((4, 4), (2, 2), (2, 2)), ((2, 2), (2, 2), (1, 1)),  # the paper's 72x72 input
    ((112, 112), (7, 7), (16, 16)), ((28, 28), (7, 7), (4, 4)),  # 224x224 input
    ((64, 40), (4, 2), (16, 16)), ((16, 16), (1, 1), (16, 16)),  # non-square, tiny
])
def test_fusion2_pool_size(tap_hw, deepest_hw, expected):
    assert fusion2_pool_size(tap_hw, deepest_hw) == expected


def test_taps_are_found_by_name_and_a_renamed_layer_is_an_error():
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    assert tap(vgg, "block3_pool") is vgg.get_layer("block3_pool").output
    vgg.get_layer("block3_pool").name = "block3_maxpool"
    with pytest.raises(ConfigError) as err:
        tap(vgg, "block3_pool")
    assert "no layer named 'block3_pool'" in str(err.value)


def test_a_builder_whose_tap_name_does_not_exist_fails_instead_of_picking_another(monkeypatch):
    spec = BACKBONES["vgg16"]
    renamed = tuple(n.replace("block3_pool", "block3_maxpool") for n in spec.block_pools)
    monkeypatch.setitem(BACKBONES, "vgg16", dataclasses.replace(spec, block_pools=renamed))
    with pytest.raises(ConfigError, match="no layer named 'block3_maxpool'"):
        create_model("vgg16_fusion1", input_shape=(32, 32, 3), branches=(3, 4, 5))
    # a model that does not read block 3 is unaffected
    assert width(create_model("vgg16_fusion1", input_shape=(32, 32, 3), branches=(4, 5)), "fusion_concat") == 1024


# ----------------------------------------------------------------------------------------- Jaamour et al.


@pytest.mark.parametrize(("shape", "blocks"), [
    ((224, 224, 1), 0), ((512, 512, 1), 0), ((1024, 1024, 1), 1), ((2048, 2048, 1), 2), ((2048, 1376, 1), 2),
    ((1376, 2048, 3), 2), ((513, 100, 1), 1), ((None, None, 1), 0)])
def test_jaamour_default_extra_blocks(shape, blocks):
    assert default_extra_blocks(shape) == blocks


def test_jaamour_head_grey_and_rgb_inputs():
    grey = create_model("jaamour_vgg19", input_shape=(32, 32, 1), num_classes=3)
    names = [layer.name for layer in grey.layers]
    assert "grey_to_rgb" in names and grey.get_layer("grey_to_rgb").output.shape[-1] == 3
    assert names[-5:] == ["flatten", "dropout", "fc1", "fc2", "predictions"]
    assert grey.get_layer("dropout").rate == 0.2
    assert [width(grey, n) for n in ("fc1", "fc2", "predictions")] == [512, 32, 3]
    rgb = create_model("jaamour_vgg19", input_shape=(32, 32, 3), dropout=0.0, pooling="gap")
    names = [layer.name for layer in rgb.layers]
    assert "grey_to_rgb" not in names and "dropout" not in names and "gap" in names


def test_jaamour_extra_blocks_feed_the_backbone_three_channels():
    model = create_model("jaamour_mobilenetv2", input_shape=(256, 172, 1), extra_blocks=2)
    assert model.get_layer("extra_to_rgb").output.shape[1:] == (64, 43, 3)
    assert model.get_layer("extra1_conv").trainable  # new layers learn even with a frozen backbone
    assert model_meta(model).head_inputs == ()  # trainable layers in front: nothing to cache
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    assert np.isfinite(model.train_on_batch(images((256, 172, 1)), np.array([1, 0])))


def test_jaamour_takes_the_full_2048x1376_crop():
    model = create_model("jaamour_mobilenetv2", input_shape=(2048, 1376, 1), pooling="gap")
    assert model.get_layer("extra_to_rgb").output.shape[1:] == (512, 344, 3)  # two default extra blocks
    probs = model.predict(images((2048, 1376, 1), n=1), verbose=0)
    assert probs.shape == (1, 2)


def test_unfreezing_keeps_backbone_batchnorm_frozen():
    model = create_model("jaamour_mobilenetv2", input_shape=(32, 32, 1), pooling="gap")
    assert all(not model.get_layer(n).trainable for n in model_meta(model).backbone_layers)
    set_backbone_trainable(model, True)
    backbone = [model.get_layer(n) for n in model_meta(model).backbone_layers]
    assert all(layer.trainable for layer in backbone if isinstance(layer, layers.Conv2D))
    assert all(not layer.trainable for layer in backbone if isinstance(layer, layers.BatchNormalization))
    assert model_meta(model).trainable_backbone
    set_backbone_trainable(model, False)
    assert trainable_layer_types(model) == {"Dense"}


# -------------------------------------------------------------------------------------------- Xi et al.


@pytest.mark.parametrize(("name", "stride"), [("xi_alexnet", 16), ("xi_vgg16", 16), ("xi_resnet50", 32)])
def test_xi_models_are_fully_convolutional_and_cam_is_the_weighted_sum(name, stride):
    model = create_model(name, input_shape=(None, None, 1), seed=0)
    meta = model_meta(model)
    assert meta.cam_layer == "last_conv" and meta.cam_method == "cam"
    maps_model = keras.Model(model.inputs, [model.get_layer("last_conv").output, model.output])
    kernel, bias = model.get_layer("predictions").get_weights()
    for shape in ((64, 64, 1), (96, 160, 1)):
        x = images(shape, seed=2)
        maps, probs = maps_model.predict(x, verbose=0)
        assert maps.shape[1:3] == (shape[0] // stride, shape[1] // stride)
        cam = np.einsum("bhwk,kc->bhwc", maps, kernel)  # CAM_c = sum_k w_kc f_k  (Xi et al. 2018, Sec. 2.3)
        logits = cam.mean(axis=(1, 2)) + bias  # GAP commutes with the linear map: the CAM explains the score
        np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.softmax(logits)), probs, atol=1e-5)


def test_xi_inception_takes_any_size_above_its_minimum():
    model = create_model("xi_inceptionv3", input_shape=(None, None, 3))
    assert model.predict(images((75, 75, 3), n=1), verbose=0).shape == (1, 2)
    assert model.predict(images((107, 139, 3), n=1), verbose=0).shape == (1, 2)


# ------------------------------------------------------------------------------------------- ours


def test_compact_fusion_is_small_and_seeded():
    a = create_model("compact_fusion", seed=3)
    b = create_model("compact_fusion", seed=3)
    c = create_model("compact_fusion", seed=4)
    assert sum(isinstance(layer, layers.Conv2D) for layer in a.layers) == 8
    assert width(a, "fusion_concat") == 32 + 64 + 96 + 128
    assert a.count_params() < 1_000_000
    assert all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights(), strict=True))
    assert any(not np.array_equal(x, y) for x, y in zip(a.get_weights(), c.get_weights(), strict=True))
