"""The shard writer's fast path: bytes identical to TensorFlow's own writer, pixels passed on uncopied and guarded
while held, a spool that spills to its file giving the same shards, and short writes finished."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mammoflow.dataset import shards as S
from mammoflow.dataset.shard_io import write_all
from mammoflow.dataset.spool import Spool
from mammoflow.dataset.tfrecord import BLOB_BYTES, frame_pieces, frame_record


def varied_examples(n: int = 40) -> list[S.Example]:
    """Examples that take every branch of the encoder: uint8 and uint16 (native, big-endian, strided views),
    images and masks below and above BLOB_BYTES, lesions with 0.0 and -0.0, negative labels and folds, long and
    unicode text."""
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        dtype = np.uint16 if i % 3 == 0 else np.uint8
        h, w = (8, 10) if i % 4 == 0 else (40, 36)  # 80 or 160 bytes: under BLOB_BYTES; the others above
        image = rng.integers(0, np.iinfo(dtype).max, (h, w), dtype=dtype, endpoint=True)
        if i % 5 == 1:
            image = np.pad(image, 3)[3:-3, 3:-3]  # a strided view of a larger array
        if i % 7 == 2:
            image = image.astype(image.dtype.newbyteorder(">"))
        if i % 6 == 3:
            image = np.asfortranarray(image)
        mask = (rng.random((h, w)) > 0.5).astype(np.uint8) * 255 if i % 2 else None
        rows = [0.0, -0.0, 1.5][: i % 4]
        out.append(S.Example(
            example_id=f"ex{i:03d}-é", record_id=f"rec{i}", patient_id=f"pat{i // 3}", breast_id=f"pat{i // 3}:L",
            label=i % 3 - 1, label_name=("unlabelled", "normal", "tumour")[i % 3], split="train", fold=i % 4 - 1,
            image=image, mask=mask, lesion_rows=rows, lesion_cols=[-r for r in rows], lesion_radii=[2.25] * len(rows),
            extra=json.dumps({"i": i, "note": "x" * (600 if i % 8 == 5 else 3)})))
    return out


def tf_example(ex: S.Example):  # noqa: ANN201 - a tf.train.Example
    """``ex`` as a ``tf.train.Example`` built with TensorFlow's own classes."""
    import tensorflow as tf

    def blob(values: list[bytes]) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

    def ints(values: list[int]) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    def floats(values: list[float]) -> tf.train.Feature:
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    image = np.ascontiguousarray(ex.image, dtype=ex.image.dtype.newbyteorder("<"))
    feature = {
        "example_id": blob([ex.example_id.encode()]), "record_id": blob([ex.record_id.encode()]),
        "patient_id": blob([ex.patient_id.encode()]), "breast_id": blob([ex.breast_id.encode()]),
        "label": ints([ex.label]), "label_name": blob([ex.label_name.encode()]), "split": blob([ex.split.encode()]),
        "fold": ints([ex.fold]), "image/raw": blob([image.tobytes()]), "image/height": ints([image.shape[0]]),
        "image/width": ints([image.shape[1]]), "image/dtype": blob([image.dtype.name.encode()]),
        "lesion/row": floats(ex.lesion_rows), "lesion/col": floats(ex.lesion_cols),
        "lesion/radius": floats(ex.lesion_radii), "extra": blob([ex.extra.encode()]),
    }
    if ex.mask is not None:
        feature["mask/raw"] = blob([np.ascontiguousarray(ex.mask).tobytes()])
    return tf.train.Example(features=tf.train.Features(feature=feature))


def map_keys(example_bytes: bytes) -> list[str]:
    """The feature names in the order they are stored."""
    from mammoflow.dataset.tfrecord import _fields

    return [bytes(v).decode() for _, _, features in _fields(memoryview(example_bytes))
            for _, _, entry in _fields(features) for k, _, v in _fields(entry) if k == 1]


def test_shard_is_byte_identical_to_tensorflows_own_writer(tmp_path: Path) -> None:
    """The framing: TensorFlow's TFRecordWriter, given the same records, writes the same file. The records: the
    very message TensorFlow builds, with the features in sorted order of name (C++ protobuf's deterministic order;
    the Python runtime's upb puts "label_name" before "label", so its bytes are not a reference)."""
    import tensorflow as tf

    examples = varied_examples()
    assert any(e.image.nbytes < BLOB_BYTES for e in examples) and any(e.image.nbytes >= BLOB_BYTES for e in examples)
    result = S.write_split(examples, str(tmp_path / "ds"), "train", target_shard_bytes=1 << 30)
    assert len(result.shards) == 1
    shard = tmp_path / "ds" / result.shards[0].path
    theirs = tmp_path / "tf.tfrecord"
    with tf.io.TFRecordWriter(str(theirs)) as writer:
        for ex in sorted(examples, key=lambda e: e.example_id):
            data = S.serialize_example(ex)
            assert tf.train.Example.FromString(data) == tf_example(ex), ex.example_id
            assert map_keys(data) == sorted(map_keys(data))
            writer.write(data)
    assert shard.read_bytes() == theirs.read_bytes()
    assert result.shards[0].sha256 == hashlib.sha256(theirs.read_bytes()).hexdigest()
    assert sum(1 for _ in tf.data.TFRecordDataset(str(shard))) == len(examples)


def joined(pieces: list) -> bytes:
    return b"".join(p if isinstance(p, bytes) else p.tobytes() for p in pieces)


def test_frame_pieces_equal_the_framed_bytes() -> None:
    image = np.arange(600, dtype=np.uint16).reshape(20, 30)
    for pieces in ([b"head", image, b"", image[:10].copy(), b"tail"], [image], [b""], []):
        framed = frame_pieces(pieces)
        assert joined(framed) == frame_record(joined(pieces))
        assert all(any(f is p for f in framed) for p in pieces if isinstance(p, np.ndarray))  # not copied


def test_pixels_are_passed_on_uncopied_unless_a_view_or_converted() -> None:
    ex = varied_examples(2)[1]
    owned = np.random.default_rng(0).integers(0, 255, (50, 50), dtype=np.uint8)
    ex.image = owned
    assert any(p is owned for p in S.example_pieces(ex))
    big = np.zeros((500, 500), np.uint8)
    ex.image = big[100:150, 100:150]  # a view would keep the whole image alive while held: copied
    held = [p for p in S.example_pieces(ex) if isinstance(p, np.ndarray)]
    assert held and not any(np.shares_memory(p, big) for p in held)
    ex.image = owned.astype(np.uint16).astype(">u2")  # big-endian: converted to the stored little-endian
    stored = [p for p in S.example_pieces(ex) if isinstance(p, np.ndarray) and p.dtype.itemsize == 2]
    assert stored[0].dtype.str == "<u2" and np.array_equal(stored[0], owned)


def test_held_pixels_are_read_only_while_spooled_and_writable_after(tmp_path: Path) -> None:
    examples = [e for e in varied_examples(12) if e.image.flags.owndata and e.image.flags.c_contiguous
                and e.image.dtype.isnative]
    assert len(examples) >= 3
    S.write_split(examples, str(tmp_path / "ok"), "train")
    assert all(e.image.flags.writeable for e in examples)

    def reusing_producer() -> Iterator[S.Example]:
        for ex in examples:
            yield ex
            ex.image[0, 0] += 1  # a producer that reuses its buffer: refused, not silently written

    with pytest.raises(ValueError, match="read-only"):
        S.write_split(reusing_producer(), str(tmp_path / "bad"), "train")
    assert all(e.image.flags.writeable for e in examples)
    assert not (tmp_path / "bad").exists()


def test_a_spool_that_spills_to_its_file_gives_the_same_shards(tmp_path: Path) -> None:
    examples = varied_examples()
    in_memory = S.write_split(examples, str(tmp_path / "memory"), "train", target_shard_bytes=8_000)
    spool = Spool(tmp_path / "spool.bin", memory_limit=20_000)  # spills part-way through
    try:
        index = S.spool_examples(examples, "train", spool)
        assert not spool.in_memory
        assert all(e.image.flags.writeable for e in examples)  # given back when it spilled
        spilled = S.write_spooled(index, spool, str(tmp_path / "file"), "train", target_shard_bytes=8_000,
                                  work_dir=tmp_path)
    finally:
        spool.release()
    assert [s.to_dict() for s in spilled.shards] == [s.to_dict() for s in in_memory.shards]
    for s in in_memory.shards:
        assert (tmp_path / "memory" / s.path).read_bytes() == (tmp_path / "file" / s.path).read_bytes()


def test_short_writes_are_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    buffers = [b"abc", np.arange(3000, dtype=np.uint16).reshape(50, 60), b"", b"x" * 5000,
               np.arange(7, dtype=np.uint8)]
    expected = joined(buffers)
    write = os.write

    def short_writev(fd: int, chunk: list) -> int:  # the kernel may write less than asked: a real partial write
        data = joined(chunk)
        return write(fd, data[: max(1, len(data) // 3)])

    monkeypatch.setattr(os, "writev", short_writev)
    with open(tmp_path / "out", "wb", buffering=0) as out:
        write_all(out.fileno(), buffers)
    assert (tmp_path / "out").read_bytes() == expected


def test_generic_encoder_takes_any_buffer_as_a_bytes_value() -> None:
    from mammoflow.dataset.tfrecord import encode_features, encode_pieces

    pixels = np.arange(2000, dtype=np.uint16).reshape(40, 50)
    raw = pixels.tobytes()
    for value in (pixels, np.asfortranarray(pixels).T.T, memoryview(raw), bytearray(raw), raw):
        pieces = encode_pieces({"a": ("int64", [1]), "image/raw": ("bytes", [value])})
        assert joined(frame_pieces(pieces)) == frame_record(encode_features({"a": ("int64", [1]),
                                                                             "image/raw": ("bytes", [raw])}))
    small = np.arange(10, dtype=np.uint8)  # under BLOB_BYTES: encoded inline
    assert encode_features({"m": ("bytes", [small])}) == encode_features({"m": ("bytes", [small.tobytes()])})
