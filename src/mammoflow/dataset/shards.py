"""TFRecord shards of examples plus a ``manifest.json``: deterministic, resumable, verifiable.

A dataset folder (local path or ``gs://``; all I/O through :mod:`mammoflow.storage`)::

    <out_uri>/manifest.json                                  written LAST, by write_manifest
    <out_uri>/<split>/<split>-00000-of-00004.tfrecord        one file per shard

How to build one (what ``mammoflow build-dataset`` does)::

    results = [write_split(examples_of(split), out_uri, split) for split in ("train", "val", "test")]
    manifest = build_manifest(results, config=cfg_dict, code_version=__version__, git_commit=commit)
    write_manifest(out_uri, manifest)      # publish: readers only ever follow a manifest
    prune_stale(out_uri, manifest)         # optional: drop shards no manifest refers to any more

and to read one: ``shard_cache().fetch(out_uri)`` (:mod:`mammoflow.dataset.cache`) gives verified local shard
paths per split for :mod:`mammoflow.dataset.pipeline`; :func:`iter_examples` reads a shard without TensorFlow.

**Records.** Each record is a ``tf.train.Example`` (feature names in :data:`FEATURES`). Images are stored as raw
little-endian pixel bytes with height, width and dtype (``uint8`` / ``uint16``), not PNG: lossless, the fastest
possible decode (``tf.io.decode_raw``, no codec), and byte-stable across machines (PNG/zlib output may change
with library versions, which would break byte-identical shards and resume-by-hash). The price is size: ROIs are
small (120x120 uint8 = 14 KiB) and whole images can be stored downsampled upstream. The protobuf and the TFRecord
framing (length, masked CRC-32C) are encoded in a few lines of pure Python (:mod:`mammoflow.dataset.tfrecord`), so
building and reading shards needs no TensorFlow (fast CLI start, light pipeline images) and the bytes are
deterministic by construction (features in sorted order). The tests check the bytes against ``tf.io.parse_single_example`` / ``TFRecordDataset``.

**Fed from memory.** An example's pixels are never re-encoded or copied on their way to the shard: the record is
built as pieces (the protobuf fields around them as small ``bytes``, the image and mask as the example's own arrays;
:func:`example_pieces`), its CRC-32C is taken in C over the pieces, the in-memory spool holds the pieces (the arrays
read-only meanwhile, see :class:`~mammoflow.dataset.spool.Spool`), and each shard file is written from them with
``writev`` while a thread hashes the same buffers for its sha256 (:mod:`mammoflow.dataset.shard_io`); uploads run in
other threads while the next shard is written.

**Shard membership** is by hash: an example goes to shard ``h(example_id) mod N`` with ``h`` the first 8 bytes of
sha256 and ``N`` the smallest power of two with ``total_bytes / N <= target_shard_bytes``; inside a shard, records
are sorted by ``example_id``. Contiguous ranges of sorted ids would shift every later boundary when one example is
added; hashing confines a change to the one shard that holds it, so a rebuild after an edit rewrites only that
shard. ``N`` changes only when the split's size crosses a power of two (then every shard is rewritten once).
Shards therefore hold between about half and all of the target size. The result depends only on the examples
(never on their input order, the machine or the time), so two builds of the same inputs give identical bytes.

**Resume / incremental rebuild.** Every shard is built locally, hashed, and uploaded only if the object at its
final name is missing or has a different sha256 (recorded in object metadata on upload, see
:mod:`mammoflow.storage`). A rerun therefore uploads nothing; a run killed mid-way resumes where it stopped and
ends with the same manifest; changed inputs re-upload only the shards whose bytes changed. The check looks at
the objects themselves rather than at a progress file, which could disagree with the bucket.

**Manifest.** ``manifest.json`` is sorted-key JSON with no timestamps: per split the record, byte and per-label
counts, and per shard its path, sha256, record count, bytes and per-label counts; plus the build config and code
version passed by the caller. Same inputs and config give a byte-identical manifest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mammoflow import storage
from mammoflow.dataset.shard_io import sha256_of_buffers, write_buffers, write_frames
from mammoflow.dataset.spool import Spool, spool_folder
from mammoflow.dataset.spool_index import Spooled, SpoolIndex
from mammoflow.dataset.tfrecord import decode_features, encode_entries, frame_pieces, nbytes, read_records
from mammoflow.errors import InputError
from mammoflow.logs import progress

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "mammoflow.shards/1"
SHARD_SUFFIX = ".tfrecord"
MiB = 1 << 20
DEFAULT_TARGET_SHARD_BYTES = 128 * MiB
IMAGE_DTYPES = ("uint8", "uint16")
_DTYPE_NAMES = {"B": b"uint8", "H": b"uint16"}  # dtype.char -> stored name (dtype.name is slow to compute)
_LITTLE_ENDIAN = sys.byteorder == "little"

# Feature name -> kind ("bytes", "int64", "float"). The contract between the writer and parse_example.
FEATURES: dict[str, str] = {
    "example_id": "bytes",
    "record_id": "bytes",
    "patient_id": "bytes",
    "breast_id": "bytes",
    "label": "int64",
    "label_name": "bytes",
    "split": "bytes",
    "fold": "int64",
    "image/raw": "bytes",
    "image/height": "int64",
    "image/width": "int64",
    "image/dtype": "bytes",
    "mask/raw": "bytes",  # absent when the example has no mask
    "lesion/row": "float",
    "lesion/col": "float",
    "lesion/radius": "float",
    "extra": "bytes",
}


@dataclass(kw_only=True, eq=False)
class Example:
    """One training/evaluation example: an ROI, a lesion crop or a whole image, with its labels and ids.

    ``image`` is 2-D ``uint8`` or ``uint16``; ``mask`` (optional) is 2-D ``uint8`` of the same shape. Lesion
    geometry is in the image's pixel coordinates (row 0 at the top; stored as float32). ``label`` is the class
    index the model learns (``-1``: unlabelled), ``label_name`` its name. ``fold`` is the cross-validation fold
    (``-1``: none). ``extra`` is a JSON string for anything else (never DICOM identifiers).
    """

    example_id: str
    record_id: str
    patient_id: str
    breast_id: str
    label: int
    label_name: str
    split: str
    fold: int = -1
    image: np.ndarray
    mask: np.ndarray | None = None
    lesion_rows: list[float] = field(default_factory=list)
    lesion_cols: list[float] = field(default_factory=list)
    lesion_radii: list[float] = field(default_factory=list)
    extra: str = "{}"

    def validate(self) -> None:
        """Raise InputError (naming the example and the fix) if this example cannot be stored."""
        where = self.example_id or "<example without id>"

        def bad(problem: str, fix: str, code: str) -> InputError:
            return InputError(where, problem, fix, code=code, record_id=self.record_id or None)

        if not self.example_id:
            raise bad("empty example_id", "give every example a unique id (the ROI or image id)", "invalid")
        img = self.image
        if not isinstance(img, np.ndarray) or img.ndim != 2:
            shape = getattr(img, "shape", None)
            raise bad(f"image must be 2-D greyscale, got shape {shape}", "convert RGB images to greyscale first",
                      "rgb" if shape is not None and len(shape) == 3 else "invalid")
        if img.dtype.char not in _DTYPE_NAMES:
            raise bad(f"image dtype {img.dtype} is not uint8/uint16", "rescale the image to uint8 or uint16",
                      "bit_depth")
        if img.size == 0:
            raise bad("empty image", "check the crop that produced it", "invalid")
        if self.mask is not None:
            m = self.mask
            if not isinstance(m, np.ndarray) or m.shape != img.shape or m.dtype != np.uint8:
                raise bad(f"mask must be uint8 with the image's shape {img.shape}, got "
                          f"{getattr(m, 'dtype', None)} {getattr(m, 'shape', None)}",
                          "resample the mask with the image (nearest neighbour) and store 0/255", "invalid")
        if not len(self.lesion_rows) == len(self.lesion_cols) == len(self.lesion_radii):
            raise bad("lesion_rows, lesion_cols and lesion_radii differ in length",
                      "give one row, col and radius per lesion", "invalid")
        try:
            if self.extra != "{}":
                json.loads(self.extra)
        except (TypeError, ValueError):
            raise bad("extra is not a JSON string", "pass json.dumps(...) of a dict", "invalid") from None


@dataclass(frozen=True)
class ShardInfo:
    """One written shard, as listed in the manifest."""

    path: str  # relative to the dataset folder, e.g. "train/train-00000-of-00002.tfrecord"
    sha256: str
    records: int
    bytes: int
    counts: dict[str, int]  # records per label_name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SplitResult:
    """What :func:`write_split` wrote. ``uploaded``/``unchanged`` say what this run did (not in the manifest)."""

    split: str
    shards: list[ShardInfo]
    counts: dict[str, int]
    label_names: dict[int, str]
    patients: int
    folds: dict[int, int]
    uploaded: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    @property
    def records(self) -> int:
        return sum(s.records for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def to_manifest(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "bytes": self.bytes,
            "counts": dict(sorted(self.counts.items())),
            "patients": self.patients,
            "folds": {str(k): v for k, v in sorted(self.folds.items())},
            "shard_count": len(self.shards),
            "shards": [s.to_dict() for s in self.shards],
        }


# ----------------------------------------------------------------------------- tf.train.Example
# The wire format is encoded in mammoflow.dataset.tfrecord (no TensorFlow needed).


def _pixels(array: np.ndarray) -> np.ndarray:
    """``array`` as stored: C-contiguous and little-endian. ``array`` itself when it already is and owns its memory
    (a view may hold a whole image alive: it is copied, as is any other array that needs converting)."""
    dtype = array.dtype
    if array.flags.c_contiguous and array.flags.owndata and (dtype.byteorder == "<" or (
            dtype.byteorder in "=|" and _LITTLE_ENDIAN)):
        return array
    return np.array(array, dtype=dtype.newbyteorder("<"), order="C")


def example_pieces(ex: Example) -> list[Any]:
    """The ``tf.train.Example`` bytes of ``ex`` as pieces (see :func:`~mammoflow.dataset.tfrecord.encode_entries`):
    the pixels of the image and the mask are arrays, not copies, whenever they can be (see :func:`_pixels`)."""
    image = _pixels(ex.image)
    mask = [("mask/raw", "bytes", [_pixels(ex.mask)])] if ex.mask is not None else []
    return encode_entries([  # in sorted order of name, as the format wants (a test checks it)
        ("breast_id", "bytes", [ex.breast_id.encode()]),
        ("example_id", "bytes", [ex.example_id.encode()]),
        ("extra", "bytes", [ex.extra.encode()]),
        ("fold", "int64", [int(ex.fold)]),
        ("image/dtype", "bytes", [_DTYPE_NAMES[image.dtype.char]]),
        ("image/height", "int64", [image.shape[0]]),
        ("image/raw", "bytes", [image]),
        ("image/width", "int64", [image.shape[1]]),
        ("label", "int64", [int(ex.label)]),
        ("label_name", "bytes", [ex.label_name.encode()]),
        ("lesion/col", "float", ex.lesion_cols),
        ("lesion/radius", "float", ex.lesion_radii),
        ("lesion/row", "float", ex.lesion_rows),
        *mask,
        ("patient_id", "bytes", [ex.patient_id.encode()]),
        ("record_id", "bytes", [ex.record_id.encode()]),
        ("split", "bytes", [ex.split.encode()]),
    ])


def serialize_example(ex: Example) -> bytes:
    """The ``tf.train.Example`` bytes of ``ex`` (deterministic; see the module docstring)."""
    return b"".join(example_pieces(ex))


def deserialize_example(data: bytes) -> Example:
    """The inverse of :func:`serialize_example` (pure Python)."""
    f = decode_features(data)

    def text(name: str) -> str:
        return f[name][0].decode() if f.get(name) else ""

    h, w = int(f["image/height"][0]), int(f["image/width"][0])
    dtype = np.dtype(text("image/dtype")).newbyteorder("<")
    image = np.frombuffer(f["image/raw"][0], dtype=dtype).reshape(h, w).astype(dtype.newbyteorder("="))
    mask = np.frombuffer(f["mask/raw"][0], dtype=np.uint8).reshape(h, w).copy() if f.get("mask/raw") else None
    return Example(
        example_id=text("example_id"), record_id=text("record_id"), patient_id=text("patient_id"),
        breast_id=text("breast_id"), label=int(f["label"][0]), label_name=text("label_name"),
        split=text("split"), fold=int(f["fold"][0]), image=image, mask=mask,
        lesion_rows=list(f.get("lesion/row", [])), lesion_cols=list(f.get("lesion/col", [])),
        lesion_radii=list(f.get("lesion/radius", [])), extra=text("extra") or "{}",
    )


def iter_examples(path: str | os.PathLike[str]) -> Iterator[Example]:
    """The examples of one local shard file, in stored order (sorted by example_id)."""
    for data in read_records(path):
        yield deserialize_example(data)


# ------------------------------------------------------------------------------------------ writing


def shard_key(example_id: str) -> int:
    """Stable 64-bit hash of an example id (first 8 bytes of sha256): the basis of shard membership."""
    return int.from_bytes(hashlib.sha256(example_id.encode()).digest()[:8], "big")


def shard_count(total_bytes: int, target_shard_bytes: int) -> int:
    """The smallest power of two ``N`` with ``total_bytes / N <= target_shard_bytes`` (0 for no data)."""
    if total_bytes <= 0:
        return 0
    if target_shard_bytes <= 0:
        raise ValueError("target_shard_bytes must be positive")
    return 1 << max(0, math.ceil(math.log2(total_bytes / target_shard_bytes)))


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


def write_split(
    examples: Iterable[Example],
    out_uri: str,
    split: str,
    *,
    target_shard_bytes: int = DEFAULT_TARGET_SHARD_BYTES,
    work_dir: str | os.PathLike[str] | None = None,
    upload_workers: int = 4,
    on_shard: Callable[[ShardInfo, bool], None] | None = None,
) -> SplitResult:
    """Write one split's examples as shards under ``out_uri/<split>/``; return what the manifest needs.

    Examples are validated (InputError on a bad one, naming it), spooled to a local temporary file (so memory
    holds only ids and offsets; in a :func:`~mammoflow.dataset.spool.spool_folder` under ``work_dir``, default the
    system temp folder), grouped into shards by hash and sorted by id (see the module docstring), then
    each shard is written locally, hashed, and uploaded unless an identical object is already there.
    ``on_shard(info, uploaded)`` is called after each shard, in shard order. The manifest is not written here:
    call :func:`write_manifest` once every split is done.
    """
    if not split or "/" in split:
        raise ValueError(f"bad split name {split!r}")
    # The spool folder is locked while this build lives; the next build removes those of killed builds.
    with spool_folder(split, work_dir) as tmp:
        spool = Spool(Path(tmp) / "spool.bin")  # in memory when the split fits
        try:
            index = spool_examples(examples, split, spool)
            return write_spooled(index, spool, out_uri, split, target_shard_bytes=target_shard_bytes,
                                 work_dir=tmp, upload_workers=upload_workers, on_shard=on_shard)
        finally:
            spool.release()


def write_spooled(index: SpoolIndex, spool: str | os.PathLike[str] | Spool, out_uri: str, split: str, *,
                  target_shard_bytes: int = DEFAULT_TARGET_SHARD_BYTES, work_dir: str | os.PathLike[str],
                  upload_workers: int = 4, on_shard: Callable[[ShardInfo, bool], None] | None = None
                  ) -> SplitResult:
    """Cut the spool (a file, or a :class:`~mammoflow.dataset.spool.Spool`) described by ``index`` into the split's
    shards (see :func:`write_split`;
    the shard files are made in ``work_dir``). The shards depend only on the examples, never on how they were
    spooled: a build in partitions gives the same bytes as a build in one piece."""
    items = index.items
    n = shard_count(index.bytes, target_shard_bytes)
    if n == 0:
        log.warning("split %s has no examples: no shards written", split)
    members: list[list[Spooled]] = [[] for _ in range(n)]
    for item in items:
        members[item.key % n].append(item)
    result = SplitResult(split=split, shards=[], counts=dict(index.counts), label_names=dict(index.names),
                         patients=len(index.patients), folds=dict(index.folds))
    source = spool if isinstance(spool, Spool) else Spool(spool, memory_limit=0)
    with source.reader() as read, ThreadPoolExecutor(max(1, upload_workers)) as pool, \
            ThreadPoolExecutor(_HASHERS) as hasher:
        pending: list[Future[tuple[ShardInfo, bool]]] = []
        for i in progress(range(n), desc=f"{split} shards", unit="shard"):
            group = sorted(members[i], key=lambda it: it.example_id)
            local = Path(work_dir) / shard_name(split, i, n)
            digest: Future[str] | None = None
            if source.in_memory:  # hashed from memory in a thread while the same buffers are written
                buffers = [b for item in group for b in read(item.offset, item.length)]
                digest = hasher.submit(sha256_of_buffers, buffers)
                write_buffers(local, buffers)
            else:
                write_frames(read, [(item.offset, item.length) for item in group], local)
            # published (after hashing from the file, for a file spool) in a worker while the next shard is written
            pending.append(pool.submit(_publish, group, digest, local, out_uri, f"{split}/{local.name}"))
            # keep at most `upload_workers` finished shard files waiting on local disk
            while len(pending) > max(1, upload_workers):
                _finish(pending.pop(0), result, on_shard)
        while pending:
            _finish(pending.pop(0), result, on_shard)
    log.info("%s: %d records in %d shards (%.1f MiB): %d uploaded, %d unchanged", split, result.records,
             len(result.shards), result.bytes / MiB, len(result.uploaded), len(result.unchanged))
    return result


def spool_examples(examples: Iterable[Example], split: str, spool: Path | Spool) -> SpoolIndex:
    """Validate and frame ``examples`` (all of split ``split``) into ``spool`` (a local file, or a
    :class:`~mammoflow.dataset.spool.Spool` kept in memory while it fits); its index."""
    index = SpoolIndex()
    seen: set[str] = set()
    offset = 0
    target = spool if isinstance(spool, Spool) else Spool(spool, memory_limit=0)
    with contextlib.closing(target) as spool:
        for ex in progress(examples, desc=f"{split} examples", unit="ex"):
            ex.validate()
            if ex.split != split:
                raise InputError(ex.example_id, f"example of split {ex.split!r} passed to write_split({split!r})",
                                 "pass each split's examples separately", code="invalid", record_id=ex.record_id)
            if ex.example_id in seen:
                raise InputError(ex.example_id, "example id appears twice in the split",
                                 "make example ids unique (e.g. record_id + ROI index)", code="duplicate_id",
                                 record_id=ex.record_id)
            names = index.names
            if names.setdefault(int(ex.label), ex.label_name) != ex.label_name:
                raise InputError(ex.example_id, f"label {ex.label} is named both {names[int(ex.label)]!r} and "
                                 f"{ex.label_name!r}", "use one name per label index", code="unknown_label",
                                 record_id=ex.record_id)
            seen.add(ex.example_id)
            frame = frame_pieces(example_pieces(ex))
            size = sum(map(nbytes, frame))
            spool.write_pieces(frame, size)
            index.items.append(Spooled(ex.example_id, shard_key(ex.example_id), offset, size, ex.label_name))
            offset += size
            index.counts[ex.label_name] += 1
            index.patients.add(ex.patient_id)
            index.folds[int(ex.fold)] += 1
    return index


_HASHERS = 2  # threads hashing shards from memory (hashlib lets go of the GIL), beside the one writing them


def _publish(group: list[Spooled], digest: Future[str] | None, local: Path, out_uri: str, rel_path: str
             ) -> tuple[ShardInfo, bool]:
    """Upload a written shard file unless the same bytes are already at its URI (its sha256: ``digest``, or read
    from the file); its manifest entry, and whether it was uploaded."""
    sha = storage.file_sha256(local) if digest is None else digest.result()
    counts = Counter(i.label_name for i in group)
    info = ShardInfo(path=rel_path, sha256=sha, records=len(group), bytes=sum(i.length for i in group),
                     counts=dict(sorted(counts.items())))
    # the local shard is a temporary: a rename beats a copy
    uploaded = storage.put_file_if_changed(local, storage.join(out_uri, rel_path), sha256=sha, move=True)
    local.unlink(missing_ok=True)
    return info, uploaded


def _finish(future: Future[tuple[ShardInfo, bool]], result: SplitResult,
            on_shard: Callable[[ShardInfo, bool], None] | None) -> None:
    info, uploaded = future.result()
    result.shards.append(info)
    (result.uploaded if uploaded else result.unchanged).append(info.path)
    if on_shard is not None:
        on_shard(info, uploaded)


# ----------------------------------------------------------------------------------------- manifest


def build_manifest(results: Sequence[SplitResult], *, config: Mapping[str, Any] | None = None,
                   code_version: str = "", git_commit: str | None = None) -> dict[str, Any]:
    """The manifest dict of a dataset made of ``results`` (one per split). No timestamps: byte-stable."""
    label_names: dict[int, str] = {}
    for r in results:
        for label, name in r.label_names.items():
            if label_names.setdefault(label, name) != name:
                raise InputError(r.split, f"label {label} is {label_names[label]!r} in one split and {name!r} in "
                                 "another", "use the same label indices in every split", code="unknown_label")
    splits = [r.split for r in results]
    if len(set(splits)) != len(splits):
        raise ValueError(f"split written twice: {splits}")
    return {
        "format": MANIFEST_FORMAT,
        "image_encoding": "raw-little-endian",
        "code_version": code_version,
        "git_commit": git_commit,
        "config": dict(config or {}),
        "label_names": {str(k): v for k, v in sorted(label_names.items())},
        "records": sum(r.records for r in results),
        "splits": {r.split: r.to_manifest() for r in results},
    }


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The canonical encoding: sorted keys, 2-space indent, trailing newline."""
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def manifest_uri(uri: str) -> str:
    """``uri`` itself when it names a ``.json`` file, else ``uri/manifest.json``."""
    return uri if str(uri).endswith(".json") else storage.join(uri, MANIFEST_FILE)


def dataset_root(uri: str) -> str:
    """The dataset folder of a dataset folder or manifest URI (shard paths are relative to it)."""
    text = str(uri)
    return text.rsplit("/", 1)[0] if text.endswith(".json") else text


def write_manifest(out_uri: str, manifest: Mapping[str, Any]) -> str:
    """Publish ``manifest.json`` (atomically). Call it LAST, after every shard is written; returns its URI.

    An identical manifest already in place is left alone, so a rerun of an unchanged build writes nothing.
    """
    uri = manifest_uri(out_uri)
    data = manifest_bytes(manifest)
    existing = storage.stat(uri)
    if existing is not None and existing.size == len(data) and \
            storage.sha256_of(uri) == hashlib.sha256(data).hexdigest():
        return uri
    storage.put_bytes(uri, data)
    return uri


def read_manifest(uri: str) -> dict[str, Any]:
    """The manifest of a dataset folder (or of a ``manifest.json`` URI)."""
    target = manifest_uri(uri)
    data = storage.get_bytes(target)
    try:
        manifest = json.loads(data)
    except ValueError:
        raise InputError(target, "manifest is not valid JSON", "rebuild the dataset (mammoflow build-dataset)",
                         code="corrupt") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise InputError(target, f"not a {MANIFEST_FORMAT} manifest", "point to a folder written by "
                         "mammoflow build-dataset", code="invalid")
    return manifest


def shard_uris(manifest: Mapping[str, Any], root_uri: str, split: str) -> list[str]:
    """Full URIs of one split's shards, in manifest order."""
    return [storage.join(dataset_root(root_uri), s["path"]) for s in manifest["splits"][split]["shards"]]


def prune_stale(out_uri: str, manifest: Mapping[str, Any]) -> list[str]:
    """Delete ``<split>/*.tfrecord`` objects that ``manifest`` does not list (left by earlier builds).

    Run it after :func:`write_manifest`; a reader still holding the previous manifest may then miss shards, so
    on a shared bucket run it when no job reads the old version.
    """
    keep = {s["path"] for split in manifest["splits"].values() for s in split["shards"]}
    root = dataset_root(out_uri)
    deleted = []
    for uri in storage.list(root):
        rel = uri[len(root):].lstrip("/")
        parts = rel.split("/")
        if len(parts) == 2 and parts[1].endswith(SHARD_SUFFIX) and rel not in keep:
            storage.delete(uri)
            deleted.append(uri)
    if deleted:
        log.info("pruned %d stale shard(s) from %s", len(deleted), root)
    return deleted


# --------------------------------------------------------------------------------------- TensorFlow


def parse_example(serialized: Any, value_range: float | None = None) -> dict[str, Any]:
    """Parse one serialized example into tensors (for ``tf.data``).

    Returns ``image`` float32 ``[H, W]`` (pixel values; if ``value_range`` is given, scaled so the dtype's
    maximum maps to it, e.g. 255 for both uint8 and uint16 images), ``mask`` uint8 ``[H, W]`` (``[0, 0]`` when
    absent) and ``has_mask``, ``lesion_rows/cols/radii`` float32 vectors, and the scalar ids and labels.
    """
    import tensorflow as tf

    spec = {
        name: (tf.io.VarLenFeature(tf.float32) if kind == "float" else
               tf.io.FixedLenFeature([], tf.int64 if kind == "int64" else tf.string,
                                     default_value="" if kind == "bytes" else None))
        for name, kind in FEATURES.items()
    }
    f = tf.io.parse_single_example(serialized, spec)
    h, w = f["image/height"], f["image/width"]
    is16 = tf.equal(f["image/dtype"], "uint16")
    raw = f["image/raw"]
    image = tf.cond(
        is16,
        lambda: tf.cast(tf.io.decode_raw(raw, tf.uint16, little_endian=True), tf.float32),
        lambda: tf.cast(tf.io.decode_raw(raw, tf.uint8), tf.float32),
    )
    image = tf.reshape(image, tf.stack([h, w]))
    if value_range is not None:
        image = image * tf.where(is16, value_range / 65535.0, value_range / 255.0)
    has_mask = tf.strings.length(f["mask/raw"]) > 0
    mask = tf.cond(has_mask, lambda: tf.reshape(tf.io.decode_raw(f["mask/raw"], tf.uint8), tf.stack([h, w])),
                   lambda: tf.zeros([0, 0], tf.uint8))
    return {
        "example_id": f["example_id"], "record_id": f["record_id"], "patient_id": f["patient_id"],
        "breast_id": f["breast_id"], "label": f["label"], "label_name": f["label_name"], "split": f["split"],
        "fold": f["fold"], "extra": f["extra"], "image": image, "mask": mask, "has_mask": has_mask,
        "lesion_rows": tf.sparse.to_dense(f["lesion/row"]), "lesion_cols": tf.sparse.to_dense(f["lesion/col"]),
        "lesion_radii": tf.sparse.to_dense(f["lesion/radius"]),
    }
