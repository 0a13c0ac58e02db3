"""The TFRecord file format and the ``tf.train.Example`` protobuf, encoded and decoded in pure Python.

Building and reading shards needs no TensorFlow (fast CLI start, light pipeline images), and the bytes are
deterministic by construction (features in sorted order). :mod:`mammoflow.dataset.shards` maps its ``Example`` to
and from these features; the tests check the bytes against ``tf.io.parse_single_example`` / ``TFRecordDataset``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import google_crc32c  # C CRC-32C (installed with google-cloud-storage)
import numpy as np

from mammoflow.errors import InputError

# tf.train.Example wire format: Example{1: Features{1: repeated MapEntry{1: key, 2: Feature}}},
# Feature{1: BytesList{1: repeated bytes} | 2: FloatList{1: packed float} | 3: Int64List{1: packed int64}}.

_ONE_BYTE = [bytes((i,)) for i in range(128)]
BLOB_BYTES = 512  # a bytes value this long or longer is passed through by encode_pieces, not copied


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
        inner = b"".join(_len_field(1, v if type(v) is bytes else bytes(v)) for v in values)
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


_ENTRIES: dict[tuple[Any, ...], bytes] = {}  # encoded map entries by (name, kind, *values): most values repeat
_ENTRIES_MAX = 4096  # the cache is emptied when it holds this many (unique ids pass through it)


def _entry(name: str, kind: str, values: Sequence[Any]) -> bytes:
    """One map entry of ``Features.feature``: the key and its ``Feature``. Float values are never looked up in the
    cache (0.0 == -0.0, yet they are stored differently), nor are values that cannot be hashed."""
    key: tuple[Any, ...] | None = None
    if kind != "float" or not values:
        try:
            key = (name, kind, *values)
            cached = _ENTRIES.get(key)
        except TypeError:  # e.g. a small numpy array
            key = cached = None
        if cached is not None:
            return cached
    encoded = _len_field(1, _key(name) + _len_field(2, _feature(kind, values)))
    if key is not None:
        if len(_ENTRIES) >= _ENTRIES_MAX:
            _ENTRIES.clear()
        _ENTRIES[key] = encoded
    return encoded


_SHORT_BYTES_ENTRY = b"\x0a%c%b\x12%c\x0a%c\x0a%c%b"  # entry of one bytes value, every length one byte


def _bytes_entry(name: str, value: bytes) -> bytes:
    """The map entry of a bytes feature with the one value ``value`` (what ``_entry`` gives, made faster)."""
    key = _KEYS.get(name) or _key(name)
    body = len(key) + len(value) + 6
    if body < 128:
        n = len(value)
        return _SHORT_BYTES_ENTRY % (body, key, n + 4, n + 2, n, value)
    return _len_field(1, key + _len_field(2, _feature("bytes", [value])))


_BLOB_HEADS: dict[tuple[str, int], bytes] = {}


def _blob_entry_head(name: str, size: int) -> bytes:
    """The map entry of a bytes feature with one value of ``size`` bytes, all but the value itself."""
    head = _BLOB_HEADS.get((name, size))
    if head is None:
        bytes_list = 1 + len(_varint(size)) + size
        feature = 1 + len(_varint(bytes_list)) + bytes_list
        body = _key(name) + b"\x12" + _varint(feature) + b"\x0a" + _varint(bytes_list) + b"\x0a" + _varint(size)
        head = b"\x0a" + _varint(len(body) + size) + body
        if len(_BLOB_HEADS) >= _ENTRIES_MAX:
            _BLOB_HEADS.clear()
        _BLOB_HEADS[(name, size)] = head
    return head


def _as_piece(value: Any) -> Any:
    """``value`` as ``bytes`` or a C-contiguous numpy array: what CRC-32C, ``writev`` and hashlib take as it is."""
    if type(value) is np.ndarray:
        return value if value.flags.c_contiguous else np.ascontiguousarray(value)
    return value if type(value) is bytes else bytes(value)


def nbytes(piece: Any) -> int:
    """The size in bytes of a piece (``bytes`` or a C-contiguous numpy array)."""
    return piece.nbytes if type(piece) is np.ndarray else len(piece)


def encode_entries(entries: Iterable[tuple[str, str, Sequence[Any]]]) -> list[Any]:
    """The ``tf.train.Example`` of ``(name, kind, values)`` entries, given in sorted order of name, as pieces whose
    concatenation is its bytes: a bytes feature whose one value holds :data:`BLOB_BYTES` or more (``bytes`` or a
    C-contiguous numpy array, e.g. an image's pixels) is passed on as that very object, never copied. The pieces
    alternate ``bytes`` (first and last, maybe empty) and such values."""
    pieces: list[Any] = []
    run: list[bytes] = []
    size = 0
    for name, kind, values in entries:
        if kind == "bytes" and len(values) == 1:
            value = values[0]
            if type(value) is bytes and len(value) < BLOB_BYTES:
                run.append(_bytes_entry(name, value))
                continue
            value = _as_piece(value)
            n = nbytes(value)
            if n < BLOB_BYTES:
                run.append(_bytes_entry(name, value if type(value) is bytes else value.tobytes()))
                continue
            run.append(_blob_entry_head(name, n))
            small = b"".join(run)
            pieces += (small, value)
            size += len(small) + n
            run = []
        else:
            run.append(_entry(name, kind, values))
    small = b"".join(run)
    pieces.append(small)
    pieces[0] = b"\x0a" + _varint(size + len(small)) + pieces[0]  # Example.features
    return pieces


def encode_pieces(features: Mapping[str, tuple[str, Sequence[Any]]]) -> list[Any]:
    """:func:`encode_features` as pieces (see :func:`encode_entries`)."""
    return encode_entries((name, kind, values) for name, (kind, values) in sorted(features.items()))


def encode_features(features: Mapping[str, tuple[str, Sequence[Any]]]) -> bytes:
    """The ``tf.train.Example`` bytes of ``{name: (kind, values)}`` (kind ``bytes``, ``float`` or ``int64``), with
    the features in sorted order so that equal inputs give equal bytes."""
    return b"".join(encode_pieces(features))


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


def _mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    return _mask(google_crc32c.value(data))


def frame_record(data: bytes) -> bytes:
    """One TFRecord frame: uint64 length, masked CRC-32C of the length, data, masked CRC-32C of the data."""
    return b"".join(frame_pieces([data]))


_U64 = struct.Struct("<Q").pack
_U32 = struct.Struct("<I").pack
_FRAME_HEADS: dict[int, bytes] = {}  # the 12 framing bytes before a record, by its size (sizes repeat)


def _frame_head(size: int) -> bytes:
    head = _FRAME_HEADS.get(size)
    if head is None:
        length = _U64(size)
        head = length + _U32(_masked_crc(length))
        if len(_FRAME_HEADS) >= _ENTRIES_MAX:
            _FRAME_HEADS.clear()
        _FRAME_HEADS[size] = head
    return head


def frame_pieces(pieces: Sequence[Any]) -> list[Any]:
    """The TFRecord frame (see :func:`frame_record`) of the record whose bytes are the concatenation of ``pieces``
    (``bytes`` or C-contiguous numpy arrays, as :func:`encode_entries` gives them), as pieces: the framing joins the
    first and last ``bytes`` pieces, the others are passed on uncopied. The CRC-32C runs in C over each piece."""
    crc = size = 0
    for piece in pieces:
        crc = google_crc32c.extend(crc, piece)
        size += len(piece) if type(piece) is bytes else piece.nbytes
    head = _frame_head(size)
    tail = _U32(_mask(crc))
    out = list(pieces) or [b""]
    if type(out[0]) is bytes:
        out[0] = head + out[0]
    else:
        out.insert(0, head)
    if type(out[-1]) is bytes:
        out[-1] += tail
    else:
        out.append(tail)
    return out


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
