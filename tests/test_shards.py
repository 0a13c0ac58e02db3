"""TFRecord shards, manifest, resume and the verified local cache, on local disk and a real GCS emulator."""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mammoflow import storage
from mammoflow.dataset import shards as S
from mammoflow.dataset.cache import LocalCache
from mammoflow.errors import InputError

pytest_plugins = ["tests.gcs_emulator"]  # the gcs_emulator / gcs_bucket fixtures

REPO = Path(__file__).resolve().parents[1]
LABELS = {0: "normal", 1: "tumour"}


def make_examples(n: int, seed: int = 0, split: str = "train", shape: tuple[int, int] = (40, 40),
                  dtype: type = np.uint8) -> list[S.Example]:
    """``n`` small synthetic examples with random pixels, alternating labels, some masks and lesions."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    out = []
    for i in range(n):
        label = i % 2
        lesions = [(float(rng.integers(0, shape[0])), float(rng.integers(0, shape[1])), 5.5)] if label else []
        out.append(S.Example(
            example_id=f"{split}:roi{i:04d}", record_id=f"src:rec{i:04d}", patient_id=f"pat{i // 2:03d}",
            breast_id=f"pat{i // 2:03d}:{'LR'[i % 2]}", label=label, label_name=LABELS[label], split=split,
            fold=i % 3, image=rng.integers(0, top, shape, dtype=dtype, endpoint=True),
            mask=(rng.random(shape) > 0.5).astype(np.uint8) * 255 if i % 3 == 0 else None,
            lesion_rows=[r for r, _, _ in lesions], lesion_cols=[c for _, c, _ in lesions],
            lesion_radii=[d for _, _, d in lesions], extra=json.dumps({"i": i})))
    return out


def build(examples: list[S.Example], out: str, target: int = 12_000, **kw) -> tuple[S.SplitResult, bytes]:
    result = S.write_split(examples, out, "train", target_shard_bytes=target, **kw)
    manifest = S.build_manifest([result], config={"target": target}, code_version="test")
    S.write_manifest(out, manifest)
    return result, S.manifest_bytes(manifest)


@pytest.fixture(params=["local", "gcs"])
def out_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "dataset")
    return request.getfixturevalue("gcs_bucket") + "/datasets/demo"


def assert_same(a: S.Example, b: S.Example) -> None:
    for name in ("example_id", "record_id", "patient_id", "breast_id", "label", "label_name", "split", "fold",
                 "extra"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.image.dtype == b.image.dtype and np.array_equal(a.image, b.image)
    assert (a.mask is None) == (b.mask is None)
    if a.mask is not None:
        assert np.array_equal(a.mask, b.mask)
    for name in ("lesion_rows", "lesion_cols", "lesion_radii"):
        assert np.allclose(getattr(a, name), np.float32(getattr(b, name)))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_round_trip_python_and_tensorflow(tmp_path: Path, dtype: type) -> None:
    import tensorflow as tf

    examples = make_examples(9, dtype=dtype, shape=(24, 31))
    result, _ = build(examples, str(tmp_path / "ds"), target=20_000)
    paths = [str(tmp_path / "ds" / s.path) for s in result.shards]
    by_id = {e.example_id: e for e in examples}

    back = [e for p in paths for e in S.iter_examples(p)]
    assert sorted(e.example_id for e in back) == sorted(by_id)
    for e in back:
        assert_same(by_id[e.example_id], e)

    seen = 0
    for f in tf.data.TFRecordDataset(paths).map(S.parse_example):  # TensorFlow reads our framing + protobuf
        src = by_id[f["example_id"].numpy().decode()]
        assert np.array_equal(f["image"].numpy(), src.image.astype(np.float32))
        assert int(f["label"]) == src.label and f["label_name"].numpy().decode() == src.label_name
        assert f["patient_id"].numpy().decode() == src.patient_id and int(f["fold"]) == src.fold
        assert bool(f["has_mask"]) == (src.mask is not None)
        if src.mask is not None:
            assert np.array_equal(f["mask"].numpy(), src.mask)
        assert np.allclose(f["lesion_rows"].numpy(), src.lesion_rows)
        seen += 1
    assert seen == len(examples)

    # value_range rescales both bit depths to the same scale
    raw = next(iter(tf.data.TFRecordDataset(paths[:1])))
    scaled = S.parse_example(raw, value_range=1.0)["image"].numpy()
    assert scaled.max() <= 1.0 and scaled.max() > 0.9


def test_manifest_counts_layout_and_order_independence(tmp_path: Path) -> None:
    examples = make_examples(40)
    result, first = build(examples, str(tmp_path / "a"))
    manifest = S.read_manifest(str(tmp_path / "a"))
    split = manifest["splits"]["train"]
    assert split["records"] == 40 and manifest["records"] == 40
    assert split["counts"] == {"normal": 20, "tumour": 20}
    assert split["patients"] == 20 and split["folds"] == {"0": 14, "1": 13, "2": 13}
    assert manifest["label_names"] == {"0": "normal", "1": "tumour"}
    n = split["shard_count"]
    assert n == len(split["shards"]) and n & (n - 1) == 0 and n > 1  # a power of two
    assert sum(s["records"] for s in split["shards"]) == 40
    assert sum(sum(s["counts"].values()) for s in split["shards"]) == 40
    assert [s["path"] for s in split["shards"]] == [f"train/train-{i:05d}-of-{n:05d}.tfrecord" for i in range(n)]
    for i, shard in enumerate(split["shards"]):
        path = tmp_path / "a" / shard["path"]
        assert path.stat().st_size == shard["bytes"] and storage.file_sha256(path) == shard["sha256"]
        ids = [e.example_id for e in S.iter_examples(path)]
        assert ids == sorted(ids)  # sorted inside a shard
        assert all(S.shard_key(x) % n == i for x in ids)  # membership by hash
    # the same examples in another order give the same bytes
    _, shuffled = build(list(reversed(examples)), str(tmp_path / "b"))
    assert shuffled == first
    assert (tmp_path / "a" / "manifest.json").read_bytes() == first


def test_rerun_is_byte_identical_and_uploads_nothing(out_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    examples = make_examples(30)
    first, manifest1 = build(examples, out_uri)
    assert len(first.uploaded) == len(first.shards) and not first.unchanged
    before = {u: storage.stat(u) for u in storage.list(out_uri)}

    uploads: list[str] = []
    real_put = storage.put_file
    monkeypatch.setattr(storage, "put_file", lambda local, uri, **kw: (uploads.append(str(uri)), real_put(local, uri, **kw)))
    again, manifest2 = build(examples, out_uri)
    assert manifest2 == manifest1
    assert uploads == []  # no shard and no manifest sent again
    assert again.uploaded == [] and len(again.unchanged) == len(first.shards)
    assert storage.get_bytes(S.manifest_uri(out_uri)) == manifest1
    assert {u: storage.stat(u) for u in storage.list(out_uri)} == before  # same versions: nothing rewritten


def test_changed_inputs_rewrite_only_affected_shards(out_uri: str, tmp_path: Path) -> None:
    examples = make_examples(30)
    first, _ = build(examples, out_uri)
    n = len(first.shards)
    changed = make_examples(30)
    changed[7].image = np.zeros_like(changed[7].image)  # new pixels for one example
    changed[12].label, changed[12].label_name = 1, "tumour"  # relabelled
    changed.append(make_examples(31)[30])  # one new example
    affected = {S.shard_key(changed[i].example_id) % n for i in (7, 12, 30)}
    result, manifest = build(changed, out_uri)
    assert len(result.shards) == n  # still below the next power of two
    assert sorted(result.uploaded) == [f"train/{S.shard_name('train', i, n)}" for i in sorted(affected)]
    assert len(result.unchanged) == n - len(affected)
    assert json.loads(manifest)["splits"]["train"]["counts"] == {"normal": 15, "tumour": 16}
    paths = LocalCache(tmp_path / "cache").fetch(out_uri)["train"]
    got = {e.example_id: e for p in paths for e in S.iter_examples(p)}
    assert len(got) == 31
    assert_same(changed[7], got[changed[7].example_id])
    assert got[changed[12].example_id].label_name == "tumour"


def test_shard_count_change_and_prune(tmp_path: Path) -> None:
    out = str(tmp_path / "ds")
    small, _ = build(make_examples(10), out, target=12_000)
    big, _ = build(make_examples(60), out, target=12_000)
    assert len(big.shards) > len(small.shards)
    stale = [storage.join(out, s.path) for s in small.shards]
    assert all(storage.exists(u) for u in stale)  # left in place until pruned: old readers keep working
    deleted = S.prune_stale(out, S.read_manifest(out))
    assert sorted(deleted) == sorted(stale)
    listed = {u[len(out) + 1:] for u in storage.list(out)}
    assert listed == {s.path for s in big.shards} | {"manifest.json"}


_WRITER = textwrap.dedent("""
    import os, pickle, sys
    from mammoflow import storage
    from mammoflow.dataset import shards as S

    examples = pickle.load(open(sys.argv[1], "rb"))
    out, mode, after = sys.argv[2], sys.argv[3], int(sys.argv[4])
    done = []
    on_shard = None
    if mode == "after-shards":       # killed between shards
        def on_shard(info, uploaded):
            done.append(info)
            if len(done) == after:
                os._exit(3)
    elif storage.is_remote(out):     # killed half-way through a resumable GCS upload
        real_upload = storage._GcsBackend.upload
        def dying_upload(src, uri, sha256):
            done.append(uri)
            if len(done) == after:
                import requests
                data = open(src, "rb").read()
                session = storage._GcsBackend.blob(uri).create_resumable_upload_session(size=len(data))
                half = len(data) // 2
                requests.put(session, data=data[:half], headers={"Content-Range": f"bytes 0-{half - 1}/{len(data)}"})
                os._exit(3)
            real_upload(src, uri, sha256)
        storage._GcsBackend.upload = dying_upload
    else:                            # killed after copying, before the rename that publishes the file
        real_install = storage.local.install
        def dying_install(tmp, dest):
            done.append(dest)
            if len(done) == after:
                os._exit(3)
            real_install(tmp, dest)
        storage.local.install = dying_install
    result = S.write_split(examples, out, "train", target_shard_bytes=12_000, upload_workers=1, on_shard=on_shard)
    S.write_manifest(out, S.build_manifest([result], config={"target": 12_000}, code_version="test"))
""")


def _run_writer(tmp_path: Path, examples: list[S.Example], out: str, mode: str, after: int) -> int:
    pkl = tmp_path / "examples.pkl"
    pkl.write_bytes(pickle.dumps(examples))
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([sys.executable, str(script), str(pkl), out, mode, str(after)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]  # the writer really died where we made it die
    return proc.returncode


@pytest.mark.parametrize("mode", ["after-shards", "mid-upload"])
def test_interrupted_build_resumes_to_the_same_manifest(tmp_path: Path, out_uri: str, mode: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    examples = make_examples(40)
    _, reference = build(examples, str(tmp_path / "reference"))

    _run_writer(tmp_path, examples, out_uri, mode, after=3)
    assert not storage.exists(S.manifest_uri(out_uri))  # nothing published
    written = [u for u in storage.list(out_uri) if u.endswith(S.SHARD_SUFFIX)]
    # killed after the 3rd shard was reported (the 4th may have been uploading meanwhile) / during the 3rd upload
    assert len(written) in ((3, 4) if mode == "after-shards" else (2,))
    if mode == "mid-upload" and not storage.is_remote(out_uri):  # the killed copy left a hidden .partial file
        assert any(p.name.endswith(storage.PARTIAL_SUFFIX) for p in Path(out_uri).rglob(".*"))

    uploads: list[str] = []
    real_put = storage.put_file
    monkeypatch.setattr(storage, "put_file", lambda local, uri, **kw: (uploads.append(str(uri)), real_put(local, uri, **kw)))
    result, manifest = build(examples, out_uri)
    assert manifest == reference
    shard_uploads = [u for u in uploads if u.endswith(S.SHARD_SUFFIX)]
    assert len(shard_uploads) == len(result.shards) - len(written)  # finished shards are not uploaded again
    assert not set(shard_uploads) & set(written)
    assert storage.get_bytes(S.manifest_uri(out_uri)) == reference


def test_bad_examples_are_refused(tmp_path: Path) -> None:
    good = make_examples(3)
    cases = {
        "rgb": lambda e: setattr(e, "image", np.zeros((8, 8, 3), np.uint8)),
        "bit_depth": lambda e: setattr(e, "image", np.zeros((8, 8), np.float32)),
        "invalid": lambda e: setattr(e, "mask", np.zeros((3, 3), np.uint8)),
    }
    for code, spoil in cases.items():
        examples = make_examples(3)
        spoil(examples[1])
        with pytest.raises(InputError) as err:
            S.write_split(examples, str(tmp_path / code), "train")
        assert err.value.code == code and examples[1].example_id in str(err.value)
    with pytest.raises(InputError) as err:
        S.write_split(good + [make_examples(1)[0]], str(tmp_path / "dup"), "train")
    assert err.value.code == "duplicate_id"
    with pytest.raises(InputError):
        S.write_split(make_examples(2, split="val"), str(tmp_path / "wrong"), "train")
    assert not storage.list(str(tmp_path))  # nothing was written by any refused build


def test_cache_verifies_skips_and_refetches(out_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    result, _ = build(make_examples(20), out_uri)
    cache = LocalCache(tmp_path / "cache")
    paths = cache.fetch(out_uri)["train"]
    assert len(paths) == len(result.shards)
    assert [storage.file_sha256(p) for p in paths] == [s.sha256 for s in result.shards]

    downloads: list[str] = []
    hashes: list[str] = []
    real_get, real_hash = storage.get_file, storage.file_sha256
    monkeypatch.setattr(storage, "get_file", lambda uri, local: (downloads.append(uri), real_get(uri, local))[1])
    monkeypatch.setattr(storage, "file_sha256", lambda p: (hashes.append(str(p)), real_hash(p))[1])
    assert cache.fetch(S.manifest_uri(out_uri)) == {"train": paths}
    assert downloads == [] and hashes == []  # stamps spare re-hashing unchanged files

    victim = Path(paths[1])
    before = victim.stat()
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))  # same size, new content, new mtime
    # A kernel with coarse file times (one timer tick, 4 ms) may give the rewrite the old mtime; a real edit comes
    # later than 3 ms after the download.
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    Path(paths[0]).write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING, logger="mammoflow.dataset.cache"):
        again = cache.fetch(out_uri)["train"]
    assert again == paths
    assert sorted(downloads) == sorted(storage.join(out_uri, s.path) for s in result.shards[:2])
    assert sum("fetching it again" in r.getMessage() for r in caplog.records) == 2
    assert [storage.file_sha256(p) for p in again] == [s.sha256 for s in result.shards]


def test_cache_refuses_an_object_that_changed_after_the_build(out_uri: str, tmp_path: Path) -> None:
    result, _ = build(make_examples(6), out_uri, target=1 << 30)
    storage.put_bytes(storage.join(out_uri, result.shards[0].path), b"tampered")
    with pytest.raises(InputError) as err:
        LocalCache(tmp_path / "cache").fetch(out_uri)
    assert err.value.code == "corrupt"
    assert not list((tmp_path / "cache").rglob("*.tfrecord"))  # nothing unverified is kept


def test_unknown_split_and_bad_manifest(tmp_path: Path) -> None:
    build(make_examples(4), str(tmp_path / "ds"))
    with pytest.raises(InputError):
        LocalCache(tmp_path / "c").fetch(str(tmp_path / "ds"), splits=["test"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{not json")
    with pytest.raises(InputError) as err:
        S.read_manifest(str(tmp_path / "bad"))
    assert err.value.code == "corrupt"


def test_corrupt_shard_file_is_detected_by_the_reader(tmp_path: Path) -> None:
    result, _ = build(make_examples(5), str(tmp_path / "ds"), target=1 << 30)
    path = tmp_path / "ds" / result.shards[0].path
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(InputError) as err:
        list(S.iter_examples(path))
    assert err.value.code == "corrupt"


def test_emulator_end_to_end_with_tf_data(gcs_bucket: str, tmp_path: Path) -> None:
    """Shards written to gs:// (emulator), fetched through the verified cache, read by tf.data."""
    from mammoflow.dataset.pipeline import InputConfig, eval_dataset, train_dataset

    out = gcs_bucket + "/mias"
    results = [S.write_split(make_examples(n, split=split, seed=i), out, split, target_shard_bytes=10_000)
               for i, (split, n) in enumerate([("train", 12), ("val", 4)])]
    S.write_manifest(out, S.build_manifest(results, code_version="test"))
    paths = LocalCache(tmp_path / "cache").fetch(out)
    assert set(paths) == {"train", "val"} and all(Path(p).is_file() for p in paths["train"])
    cfg = InputConfig(patch_size=16, patches_per_roi={"normal": 3, "tumour": 5}, batch_size=8, eval_grid=(2, 2))
    train = sum(int(y.shape[0]) for _, y in train_dataset(paths["train"], cfg, seed=0))
    assert train == 6 * 3 + 6 * 5
    ids = [i for _, _, batch in eval_dataset(paths["val"], cfg) for i in batch.numpy()]
    assert len(ids) == 4 * 4 and len(set(ids)) == 4


def test_the_shard_cache_is_a_folder_of_the_one_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """shards/ of storage.copies.cache_dir(): an explicit folder, else $MAMMOFLOW_CACHE, else the system temp folder."""
    import tempfile

    from mammoflow.dataset.cache import default_cache_dir, shard_cache
    from mammoflow.storage.copies import cache_dir

    monkeypatch.delenv("MAMMOFLOW_CACHE", raising=False)
    assert cache_dir() == Path(tempfile.gettempdir()) / "mammoflow-cache"
    assert default_cache_dir() == cache_dir() / "shards"

    monkeypatch.setenv("MAMMOFLOW_CACHE", str(tmp_path / "env-cache"))
    assert cache_dir() == tmp_path / "env-cache"
    assert shard_cache(tmp_path / "explicit").root == tmp_path / "explicit" / "shards"  # an explicit folder wins

    result, _ = build(make_examples(10), str(tmp_path / "ds"))
    paths = shard_cache().fetch(str(tmp_path / "ds"))["train"]
    assert len(paths) == len(result.shards)
    assert all(Path(p).is_relative_to(tmp_path / "env-cache" / "shards") for p in paths)
    assert LocalCache().root == tmp_path / "env-cache" / "shards"
