"""The TFRecord file format and the ``tf.train.Example`` protobuf, encoded and decoded in pure Python.

Building and reading shards needs no TensorFlow (fast CLI start, light pipeline images), and the bytes are
deterministic by construction (features in sorted order). :mod:`mammoflow.dataset.shards` maps its ``Example`` to
and from these features; the tests check the bytes against ``tf.io.parse_single_example`` / ``TFRecordDataset``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from mammoflow.errors import InputError

# tf.train.Example wire format: Example{1: Features{1: repeated MapEntry{1: key, 2: Feature}}},
# Feature{1: BytesList{1: repeated bytes} | 2: FloatList{1: packed float} | 3: Int64List{1: packed int64}}.

_ONE_BYTE = [bytes((i,)) for i in range(128)]


def _varint(n: int) -> bytes:
    if 0 <= n < 128:  # the common case (tags, short lengths): no loop
        return _ONE_BYTE[n]
    if n < 0:
        n += 1 << 64  # int64 two's complement, as protobuf encodes negative int64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _feature(kind: str, values: Sequence[Any]) -> bytes:
    if kind == "bytes":
        inner = b"".join(_len_field(1, v) for v in values)
        return _len_field(1, inner)
    if kind == "float":
        packed = np.asarray(values, dtype="<f4").tobytes()
        return _len_field(2, _len_field(1, packed) if packed else b"")
    packed = b"".join(_varint(int(v)) for v in values)
    return _len_field(3, _len_field(1, packed) if packed else b"")


_KEYS: dict[str, bytes] = {}  # map-entry key fields, each encoded once


def _key(name: str) -> bytes:
    field = _KEYS.get(name)
    if field is None:
        field = _KEYS[name] = _len_field(1, name.encode())
    return field


def encode_features(features: Mapping[str, tuple[str, Sequence[Any]]]) -> bytes:
    """The ``tf.train.Example`` bytes of ``{name: (kind, values)}`` (kind ``bytes``, ``float`` or ``int64``), with
    the features in sorted order so that equal inputs give equal bytes."""
    entries = b"".join(
        _len_field(1, _key(name) + _len_field(2, _feature(kind, values)))
        for name, (kind, values) in sorted(features.items())
    )
    return _len_field(1, entries)


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message; LEN values are memoryviews."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 2:
            size, pos = _read_varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _decode_feature(buf: memoryview) -> list[Any]:
    for kind, _, payload in _fields(buf):
        values: list[Any] = []
        for _, wire, v in _fields(payload):
            if kind == 1:
                values.append(bytes(v))
            elif kind == 2:
                values.extend(np.frombuffer(v, dtype="<f4").tolist() if wire == 2 else
                              [struct.unpack("<f", v)[0]])
            elif kind == 3:
                if wire == 2:
                    pos = 0
                    while pos < len(v):
                        n, pos = _read_varint(v, pos)
                        values.append(n - (1 << 64) if n >= 1 << 63 else n)
                else:
                    values.append(v - (1 << 64) if v >= 1 << 63 else v)
        return values
    return []


def decode_features(data: bytes) -> dict[str, list[Any]]:
    """The inverse of :func:`encode_features`: ``{name: values}``."""
    out: dict[str, list[Any]] = {}
    for number, _, features in _fields(memoryview(data)):
        if number != 1:
            continue
        for _, _, entry in _fields(features):
            key, value = "", []
            for n, _, v in _fields(entry):
                if n == 1:
                    key = bytes(v).decode()
                elif n == 2:
                    value = _decode_feature(v)
            out[key] = value
    return out


def _masked_crc(data: bytes) -> int:
    import google_crc32c  # C-accelerated CRC-32C, installed with google-cloud-storage

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """One TFRecord frame: uint64 length, masked CRC-32C of the length, data, masked CRC-32C of the data."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data))


def read_records(path: str | os.PathLike[str]) -> Iterator[bytes]:
    """The records of a local TFRecord file, CRC-checked; InputError(code="corrupt") on damage."""
    def corrupt(index: int, what: str) -> InputError:
        return InputError(path, f"record {index}: {what}", "delete the file and fetch or rebuild it",
                          code="corrupt")

    with open(path, "rb") as fh:
        index = 0
        while header := fh.read(12):
            if len(header) < 12:
                raise corrupt(index, "truncated header")
            length_bytes, crc = header[:8], struct.unpack("<I", header[8:])[0]
            if _masked_crc(length_bytes) != crc:
                raise corrupt(index, "length checksum mismatch")
            (length,) = struct.unpack("<Q", length_bytes)
            data = fh.read(length)
            tail = fh.read(4)
            if len(data) < length or len(tail) < 4:
                raise corrupt(index, "truncated record")
            if _masked_crc(data) != struct.unpack("<I", tail)[0]:
                raise corrupt(index, "data checksum mismatch")
            yield data
            index += 1
