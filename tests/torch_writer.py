"""A minimal ``torch.save`` for tests, without torch: state dicts in the legacy and the zip serialisation.

The object pickle is written opcode by opcode (protocol 2), as torch's pickler writes it: an OrderedDict whose
values are ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`` calls, the
storages as persistent ids. Pickling real objects would need a module named ``torch`` in ``sys.modules``.
"""

from __future__ import annotations

import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_NAMES = {np.dtype("float32"): "FloatStorage", np.dtype("float64"): "DoubleStorage",
                 np.dtype("float16"): "HalfStorage", np.dtype("int64"): "LongStorage",
                 np.dtype("int32"): "IntStorage", np.dtype("uint8"): "ByteStorage", np.dtype("bool"): "BoolStorage"}


@dataclass
class Tensor:
    """One tensor entry: a view (offset, size, stride in elements) into storage ``key``."""

    key: str
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    parameter: bool = False


class Ops:
    """Pickle protocol 2 opcodes."""

    @staticmethod
    def glob(module: str, name: str) -> bytes:
        return b"c" + f"{module}\n{name}\n".encode()

    @staticmethod
    def int(value: int) -> bytes:
        return b"J" + struct.pack("<i", value)

    @staticmethod
    def str(value: str) -> bytes:
        data = value.encode()
        return b"X" + struct.pack("<I", len(data)) + data

    @staticmethod
    def tuple(*items: bytes) -> bytes:
        return b"(" + b"".join(items) + b"t"

    @staticmethod
    def call(func: bytes, *args: bytes) -> bytes:
        return func + Ops.tuple(*args) + b"R"


def storage_pid(key: str, storage_name: str, numel: int, view: tuple[str, int, int] | None = None,
                legacy: bool = True) -> bytes:
    """The persistent id torch writes for a storage; legacy ones carry a sixth element (view metadata)."""
    items = [Ops.str("storage"), Ops.glob("torch", storage_name), Ops.str(key), Ops.str("cpu"), Ops.int(numel)]
    if legacy:
        items.append(b"N" if view is None else Ops.tuple(Ops.str(view[0]), Ops.int(view[1]), Ops.int(view[2])))
    return Ops.tuple(*items) + b"Q"


def tensor_pickle(entry: Tensor, storage_name: str, numel: int, legacy: bool,
                  view: tuple[str, int, int] | None = None) -> bytes:
    hooks = Ops.call(Ops.glob("collections", "OrderedDict"))
    tensor = Ops.call(Ops.glob("torch._utils", "_rebuild_tensor_v2"),
                      storage_pid(entry.key, storage_name, numel, view, legacy), Ops.int(entry.offset),
                      Ops.tuple(*map(Ops.int, entry.size)), Ops.tuple(*map(Ops.int, entry.stride)),
                      b"\x89", hooks)
    if entry.parameter:
        tensor = Ops.call(Ops.glob("torch._utils", "_rebuild_parameter"), tensor, b"\x88", hooks)
    return tensor


def state_dict_pickle(items: list[tuple[str, bytes]]) -> bytes:
    """``OrderedDict(items)`` where each value is already pickled; ends with STOP."""
    body = b"".join(Ops.str(name) + value for name, value in items)
    return b"\x80\x02" + Ops.call(Ops.glob("collections", "OrderedDict")) + b"(" + body + b"u" + b"."


def contiguous(arrays: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Tensor]]:
    """One storage per array, each tensor its whole storage."""
    arrays = {name: np.array(a, order="C") for name, a in arrays.items()}  # (ascontiguousarray makes 0-d 1-d)
    storages = {str(i): a.ravel() for i, a in enumerate(arrays.values())}
    tensors = {name: Tensor(str(i), 0, a.shape, tuple(s // a.itemsize for s in a.strides))
               for i, (name, a) in enumerate(arrays.items())}
    return storages, tensors


def object_pickle(storages: dict[str, np.ndarray], tensors: dict[str, Tensor], legacy: bool,
                  extra: list[tuple[str, bytes]] = ()) -> bytes:
    items = [(name, tensor_pickle(t, STORAGE_NAMES[storages[t.key].dtype], storages[t.key].size, legacy))
             for name, t in tensors.items()]
    return state_dict_pickle([*items, *extra])


def write_legacy(path: Path, storages: dict[str, np.ndarray], tensors: dict[str, Tensor],
                 obj: bytes | None = None) -> Path:
    """torch.save(..., _use_new_zipfile_serialization=False): header pickles, object, keys, raw storages."""
    with open(path, "wb") as f:
        for header in (MAGIC, 1001, {"protocol_version": 1001, "little_endian": True,
                                     "type_sizes": {"short": 2, "int": 4, "long": 8}}):
            pickle.dump(header, f, protocol=2)
        f.write(obj if obj is not None else object_pickle(storages, tensors, legacy=True))
        pickle.dump(list(storages), f, protocol=2)
        for data in storages.values():
            f.write(struct.pack("<q", data.size))
            f.write(data.astype(data.dtype.newbyteorder("<")).tobytes())
    return path


def write_zip(path: Path, storages: dict[str, np.ndarray], tensors: dict[str, Tensor],
              obj: bytes | None = None, folder: str = "archive") -> Path:
    """torch.save's zip format: <folder>/data.pkl, <folder>/data/<key>, byteorder and version."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{folder}/data.pkl", obj if obj is not None else object_pickle(storages, tensors, False))
        archive.writestr(f"{folder}/byteorder", "little")
        for key, data in storages.items():
            archive.writestr(f"{folder}/data/{key}", data.astype(data.dtype.newbyteorder("<")).tobytes())
        archive.writestr(f"{folder}/version", "3\n")
    return path


def save(path: Path, arrays: dict[str, np.ndarray], fmt: str) -> Path:
    """``{name: array}`` as a state dict file in format ``legacy`` or ``zip``."""
    storages, tensors = contiguous(arrays)
    return (write_legacy if fmt == "legacy" else write_zip)(path, storages, tensors)
