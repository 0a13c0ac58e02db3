"""Read a PyTorch state dict (``torch.save``) with numpy alone: no torch, no arbitrary code.

Two serialisations exist (torch/serialization.py):

- **legacy** (torch < 1.6, or ``_use_new_zipfile_serialization=False``): five pickles in a row: the magic number,
  the protocol version (1001), the system info (byte order, type sizes), the object itself, whose storages are
  persistent ids ``("storage", StorageType, key, location, numel, view)``, then the list of storage keys; after
  them each storage's raw bytes, in that order, each preceded by its element count (int64).
- **zip** (torch >= 1.6): ``<folder>/data.pkl`` holds the object (persistent ids
  ``("storage", StorageType, key, location, numel)``) and ``<folder>/data/<key>`` each storage's raw bytes.

The object pickle is read by a restricted unpickler: only the classes and functions a state dict needs
(``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2``, ``torch._utils._rebuild_parameter``, the
``torch.*Storage`` types) are resolved, to local stand-ins; anything else is refused, so a checkpoint can never
run code. :func:`read_state_dict` returns ``{name: numpy array}``.
"""

from __future__ import annotations

import collections
import io
import logging
import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from mammoflow.errors import InputError

log = logging.getLogger(__name__)

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001  # torch.serialization.PROTOCOL_VERSION

# torch.<Name>Storage -> the little-endian numpy dtype of one element.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"), "FloatStorage": np.dtype("<f4"), "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"), "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"), "ByteStorage": np.dtype("u1"), "BoolStorage": np.dtype("?"),
    # bfloat16 has no numpy dtype: kept as its 16 raw bits, widened to float32 in _materialise.
    "BFloat16Storage": np.dtype("<u2"),
}


@dataclass(frozen=True)
class _StorageType:
    name: str  # e.g. FloatStorage

    @property
    def dtype(self) -> np.dtype:
        return STORAGE_DTYPES[self.name]


@dataclass(frozen=True)
class _StorageRef:
    """A storage named by a persistent id; its bytes come later (legacy) or from the archive (zip)."""

    key: str
    kind: _StorageType
    numel: int
    offset: int = 0  # legacy views: elements into the root storage


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage: _StorageRef, storage_offset: int, size: Any, stride: Any, *_: Any) -> _TensorRef:
    # The trailing arguments (requires_grad, backward_hooks, metadata) do not change the values.
    return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data: _TensorRef, *_: Any) -> _TensorRef:
    return data  # a Parameter is its tensor; requires_grad and hooks do not matter here


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    """Resolves only :data:`_ALLOWED`; storages become :class:`_StorageRef`."""

    def __init__(self, file: BinaryIO, path: Path, legacy: bool):
        super().__init__(file)
        self.path, self.legacy = path, legacy

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise InputError(self.path, f"the checkpoint refers to {module}.{name}, which is not part of a plain "
                             "state dict and is refused (a pickle can run code)",
                             "save only the model's state_dict (torch.save(model.state_dict(), path))",
                             code="refused") from None

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage" and len(pid) in (5, 6)
                and isinstance(pid[1], _StorageType)):
            raise InputError(self.path, f"unexpected persistent id {str(pid)[:80]!r} in the checkpoint",
                             "give a state dict saved by torch.save", code="corrupt")
        _, kind, key, _location, numel = pid[:5]
        view = pid[5] if len(pid) == 6 else None
        if not self.legacy:
            # Zip format: numel counts elements of typed storages (bytes of untyped ones, not used by state dicts).
            return _StorageRef(str(key), kind, int(numel))
        if view is None:
            return _StorageRef(str(key), kind, int(numel))
        _view_key, offset, view_size = view
        return _StorageRef(str(key), kind, int(view_size), int(offset))


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{name: array}`` of the state dict in torch checkpoint ``path`` (legacy or zip serialisation).

    Nested dicts (``{"model": {...}}``) are flattened with dots; values that are not tensors (an epoch number)
    are skipped. Any damage (truncated file, wrong magic number, missing storage, refused class) raises
    :class:`InputError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint file not found", "give an existing .pth/.pt file", code="missing_file")
    try:
        if zipfile.is_zipfile(path):
            tree, storages = _read_zip(path)
        else:
            with open(path, "rb") as file:
                tree, storages = _read_legacy(file, path)
        tensors = {name: _materialise(ref, storages, path) for name, ref in _flatten(tree, path)}
    except InputError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            zipfile.BadZipFile, UnicodeDecodeError, OverflowError) as exc:
        raise InputError(path, f"not a readable PyTorch checkpoint ({type(exc).__name__}: {str(exc)[:200]})",
                         "the file is damaged or not written by torch.save: download it again", code="corrupt") from None
    if not tensors:
        raise InputError(path, "the checkpoint holds no tensors", "give a state dict saved by torch.save",
                         code="corrupt")
    return tensors


def _read_legacy(file: BinaryIO, path: Path) -> tuple[Any, dict[str, bytes]]:
    def header() -> Any:
        return _Unpickler(file, path, legacy=True).load()

    if header() != LEGACY_MAGIC:
        raise InputError(path, "not a PyTorch checkpoint (no zip archive, wrong magic number)",
                         "give a file written by torch.save", code="corrupt")
    protocol = header()
    if protocol != LEGACY_PROTOCOL:
        raise InputError(path, f"legacy serialisation protocol {protocol}, expected {LEGACY_PROTOCOL}",
                         "save it again with a current torch", code="corrupt")
    info = header()
    if not isinstance(info, dict) or not info.get("little_endian", False):
        raise InputError(path, "a big-endian (or unknown) byte order", "save it on a little-endian machine",
                         code="corrupt")
    tree = header()
    keys = header()
    if not isinstance(keys, list):
        raise InputError(path, "no storage key list after the state dict", "download the file again",
                         code="corrupt")
    storages: dict[str, bytes] = {}
    sizes = {ref.storage.key: ref.storage.kind.dtype.itemsize for _, ref in _flatten(tree, path)}
    for key in keys:
        key = str(key)
        count = np.frombuffer(_exactly(file, 8, path), "<i8")[0]
        if key not in sizes or count < 0:
            raise InputError(path, f"storage {key!r} is not used by any tensor or has a bad size",
                             "download the file again", code="corrupt")
        storages[key] = _exactly(file, int(count) * sizes[key], path)
    return tree, storages


def _exactly(file: BinaryIO, n: int, path: Path) -> bytes:
    data = file.read(n)
    if len(data) != n:
        raise InputError(path, f"truncated: the storages end {n - len(data)} bytes early",
                         "the download was cut short: download the file again", code="truncated")
    return data


def _read_zip(path: Path) -> tuple[Any, dict[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise InputError(path, "a zip file without one <folder>/data.pkl", "give a file written by torch.save",
                             code="corrupt")
        folder = pickles[0].rsplit("/", 1)[0]
        order = f"{folder}/byteorder"
        if order in archive.namelist() and archive.read(order).strip() != b"little":
            raise InputError(path, "a big-endian checkpoint", "save it on a little-endian machine", code="corrupt")
        tree = _Unpickler(io.BytesIO(archive.read(pickles[0])), path, legacy=False).load()
        storages = {}
        for _, ref in _flatten(tree, path):
            member = f"{folder}/data/{ref.storage.key}"
            if ref.storage.key not in storages:
                if member not in archive.namelist():
                    raise InputError(path, f"storage {member} is missing from the archive",
                                     "download the file again", code="truncated")
                storages[ref.storage.key] = archive.read(member)
    return tree, storages


def _flatten(tree: Any, path: Path, prefix: str = "") -> list[tuple[str, _TensorRef]]:
    if not isinstance(tree, Mapping):
        raise InputError(path, f"the checkpoint holds a {type(tree).__name__}, not a state dict",
                         "save model.state_dict()", code="corrupt")
    out: list[tuple[str, _TensorRef]] = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, _TensorRef):
            out.append((name, value))
        elif isinstance(value, Mapping):
            out += _flatten(value, path, f"{name}.")
        else:
            log.debug("%s: skipping %s (a %s, not a tensor)", path, name, type(value).__name__)
    return out


def _materialise(ref: _TensorRef, storages: dict[str, bytes], path: Path) -> np.ndarray:
    storage = ref.storage
    dtype = storage.kind.dtype
    flat = np.frombuffer(storages[storage.key], dtype)
    start = storage.offset + ref.offset
    if len(ref.size) != len(ref.stride) or any(s < 0 for s in (*ref.size, *ref.stride)):
        raise InputError(path, f"a tensor with size {ref.size} and stride {ref.stride}", "download the file again",
                         code="corrupt")
    # The last element any index reaches must lie inside the storage (as_strided does not check).
    reach = start + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
    if all(ref.size) and reach >= flat.size:
        raise InputError(path, f"a tensor of shape {ref.size} reaches past its storage ({flat.size} elements)",
                         "download the file again", code="corrupt")
    array = np.lib.stride_tricks.as_strided(flat[start:], shape=ref.size,
                                            strides=tuple(s * dtype.itemsize for s in ref.stride))
    array = np.array(array)  # own, writable, contiguous copy
    if storage.kind.name == "BFloat16Storage":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


# ------------------------------------------------------------------------------------------------ into Keras layers


def keras_arrays(layer_type: str, state: Mapping[str, np.ndarray], prefix: str, path: str | os.PathLike = "",
                 ) -> list[np.ndarray]:
    """The weights of one torch module ``prefix`` (``features.0.0``) in the order and layout of a Keras layer.

    Conv2d (out, in, kh, kw) -> Conv2D (kh, kw, in, out); a depthwise Conv2d (channels, 1, kh, kw) ->
    DepthwiseConv2D (kh, kw, channels, 1); Linear (out, in) -> Dense (in, out); BatchNorm2d -> gamma, beta,
    moving mean, moving variance. A bias is appended when the module has one.
    """
    def get(name: str) -> np.ndarray:
        key = f"{prefix}.{name}"
        if key not in state:
            raise InputError(path, f"no tensor {key!r} for a Keras {layer_type}",
                             "check the layer-name map against the state dict's names", code="layer_map")
        return state[key]

    bias = [get("bias")] if f"{prefix}.bias" in state else []
    if layer_type == "Conv2D":
        return [get("weight").transpose(2, 3, 1, 0), *bias]
    if layer_type == "DepthwiseConv2D":
        return [get("weight").transpose(2, 3, 0, 1), *bias]
    if layer_type == "Dense":
        return [get("weight").T, *bias]
    if layer_type == "BatchNormalization":
        return [get("weight"), get("bias"), get("running_mean"), get("running_var")]
    raise InputError(path, f"no torch conversion for a Keras {layer_type} ({prefix})",
                     "map only Conv2D, DepthwiseConv2D, Dense and BatchNormalization layers", code="layer_map")


def assign(model: Any, state: Mapping[str, np.ndarray], layer_map: Mapping[str, str],
           path: str | os.PathLike = "") -> list[str]:
    """Set every Keras layer named in ``layer_map`` (Keras name -> torch module prefix) from ``state``.

    Shapes must match exactly; returns the Keras layer names assigned, in ``layer_map`` order.
    """
    names = {layer.name for layer in model.layers}
    missing = sorted(set(layer_map) - names)
    if missing:
        raise InputError(path, f"the layer-name map names layers the model does not have: {missing[:5]}",
                         "map the Keras layer names of this backbone (`mammoflow models --show NAME`)",
                         code="layer_map")
    for keras_name, prefix in layer_map.items():
        layer = model.get_layer(keras_name)
        arrays = keras_arrays(type(layer).__name__, state, prefix, path)
        expected = [tuple(w.shape) for w in layer.weights]
        got = [a.shape for a in arrays]
        if expected != got:
            raise InputError(path, f"{prefix} has shapes {got}, Keras layer {keras_name} needs {expected}",
                             "map each Keras layer to the torch module of the same size", code="layer_map")
        layer.set_weights([a.astype(np.float32) for a in arrays])
    return list(layer_map)
