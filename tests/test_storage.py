"""mammoflow.storage against local disk and a real GCS emulator on loopback."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mammoflow import storage
from mammoflow.errors import InputError

pytest_plugins = ["tests.gcs_emulator"]  # the gcs_emulator / gcs_bucket fixtures


@pytest.fixture(params=["local", "gcs"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A writable root URI on each backend."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("gcs_bucket") + "/store"


def test_round_trip_list_exists_delete(root: str, tmp_path: Path) -> None:
    payload = bytes(range(256)) * 1000
    storage.put_bytes(storage.join(root, "a", "x.bin"), payload)
    src = tmp_path / "src.bin"
    src.write_bytes(b"second")
    storage.put_file(src, storage.join(root, "a/b/y.bin"))
    storage.put_bytes(storage.join(root + "-other", "z.bin"), b"not under root")

    assert storage.get_bytes(storage.join(root, "a/x.bin")) == payload
    got = storage.get_file(storage.join(root, "a/b/y.bin"), tmp_path / "down" / "y.bin")
    assert got.read_bytes() == b"second"
    assert storage.exists(storage.join(root, "a/x.bin"))
    assert not storage.exists(storage.join(root, "a/missing.bin"))
    # list is folder-scoped: root-other/ is a sibling, not a child
    assert storage.list(root) == [storage.join(root, "a/b/y.bin"), storage.join(root, "a/x.bin")]
    assert storage.list(storage.join(root, "a/b")) == [storage.join(root, "a/b/y.bin")]
    assert storage.list(storage.join(root, "nothing-here")) == []

    info = storage.stat(storage.join(root, "a/x.bin"))
    assert info is not None and info.size == len(payload)
    assert storage.sha256_of(storage.join(root, "a/x.bin")) == hashlib.sha256(payload).hexdigest()

    assert storage.delete(storage.join(root, "a/x.bin")) is True
    assert storage.delete(storage.join(root, "a/x.bin")) is False  # idempotent
    assert storage.list(root) == [storage.join(root, "a/b/y.bin")]


def test_missing_object_is_an_input_error(root: str, tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        storage.get_bytes(storage.join(root, "nope.bin"))
    assert err.value.code == "missing_file"
    with pytest.raises(InputError):
        storage.get_file(storage.join(root, "nope.bin"), tmp_path / "nope.bin")
    assert not (tmp_path / "nope.bin").exists()


def test_failed_write_leaves_nothing(root: str, tmp_path: Path) -> None:
    target = storage.join(root, "atomic.bin")
    storage.put_bytes(target, b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with storage.open_write(target) as fh:
            fh.write(b"half of the new content")
            raise RuntimeError("disk full")
    assert storage.get_bytes(target) == b"old"  # readers still see the previous version

    fresh = storage.join(root, "never.bin")
    with pytest.raises(RuntimeError):
        with storage.open_write(fresh) as fh:
            fh.write(b"x" * 1000)
            raise RuntimeError("killed")
    assert not storage.exists(fresh)
    assert storage.list(root) == [target]  # no temporary object or .partial file is visible
    if not storage.is_remote(root):
        assert [p.name for p in storage.local_path(root).iterdir()] == ["atomic.bin"]


def test_large_upload_goes_through_resumable_path(gcs_bucket: str, tmp_path: Path) -> None:
    # Above 8 MiB google-cloud-storage switches to a resumable session: check it end to end.
    big = tmp_path / "big.bin"
    data = hashlib.sha256(b"seed").digest() * (9 * 1024 * 1024 // 32 + 7)
    big.write_bytes(data)
    uri = storage.join(gcs_bucket, "big.bin")
    storage.put_file(big, uri)
    info = storage.stat(uri)
    assert info is not None and info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()  # recorded at upload, no download needed
    assert storage.get_file(uri, tmp_path / "back.bin").read_bytes() == data


def _flaky(real, failures: int, exc: Exception, calls: list[int]):
    """Wrap a backend call: the first ``failures`` calls raise ``exc``, then the real call runs."""
    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) <= failures:
            raise exc
        return real(*args, **kwargs)
    return wrapper


def test_transient_errors_are_retried(gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from google.api_core import exceptions as api

    monkeypatch.setattr(storage, "RETRY", storage.RetryPolicy(attempts=4, base_delay=0.001, max_delay=0.01))
    calls: list[int] = []
    monkeypatch.setattr(storage._GcsBackend, "upload",
                        _flaky(storage._GcsBackend.upload, 2, api.ServiceUnavailable("busy"), calls))
    uri = storage.join(gcs_bucket, "retried.bin")
    storage.put_bytes(uri, b"payload")
    assert len(calls) == 3  # two transient failures, then success
    assert storage.get_bytes(uri) == b"payload"

    dl_calls: list[int] = []
    monkeypatch.setattr(storage._GcsBackend, "download",
                        _flaky(storage._GcsBackend.download, 1, ConnectionResetError("reset"), dl_calls))
    assert storage.get_file(uri, tmp_path / "r.bin").read_bytes() == b"payload"
    assert len(dl_calls) == 2


def test_retries_are_bounded_and_permanent_errors_not_retried(gcs_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from google.api_core import exceptions as api

    monkeypatch.setattr(storage, "RETRY", storage.RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.01))
    calls: list[int] = []
    monkeypatch.setattr(storage._GcsBackend, "upload",
                        _flaky(storage._GcsBackend.upload, 99, api.TooManyRequests("slow down"), calls))
    uri = storage.join(gcs_bucket, "never.bin")
    with pytest.raises(storage.StorageError, match="after 3 attempts"):
        storage.put_bytes(uri, b"x")
    assert len(calls) == 3
    assert not storage.exists(uri)

    calls.clear()
    monkeypatch.setattr(storage._GcsBackend, "upload",
                        _flaky(storage._GcsBackend.upload, 99, api.BadRequest("bad name"), calls))
    with pytest.raises(api.BadRequest):
        storage.put_bytes(uri, b"x")
    assert len(calls) == 1


def test_is_transient_classifies_errors() -> None:
    from google.api_core import exceptions as api

    assert storage.is_transient(api.ServiceUnavailable("x"))
    assert storage.is_transient(api.TooManyRequests("x"))
    assert storage.is_transient(ConnectionError())
    assert not storage.is_transient(api.NotFound("x"))
    assert not storage.is_transient(api.Forbidden("x"))
    assert not storage.is_transient(ValueError("x"))


def test_join_and_uri_helpers() -> None:
    assert storage.join("gs://b/data/", "/train/", "x.tfrecord") == "gs://b/data/train/x.tfrecord"
    assert storage.join("/tmp/d", "a") == "/tmp/d/a"
    assert storage.is_remote("gs://b/x") and not storage.is_remote("/x") and not storage.is_remote("file:///x")
    assert storage.local_path("file:///tmp/x") == Path("/tmp/x")
    assert storage.split_gs("gs://bucket/a/b") == ("bucket", "a/b")
    with pytest.raises(ValueError):
        storage.split_gs("gs:///a")


def test_pyarrow_filesystem_reaches_the_same_objects(root: str) -> None:
    storage.put_bytes(storage.join(root, "ray/state.json"), b'{"ok": true}')
    fs, path = storage.pyarrow_filesystem(root)
    with fs.open_input_stream(path + "/ray/state.json") as fh:
        assert fh.read() == b'{"ok": true}'
    with fs.open_output_stream(path + "/ray/from_arrow.txt") as fh:
        fh.write(b"written by pyarrow")
    assert storage.get_bytes(storage.join(root, "ray/from_arrow.txt")) == b"written by pyarrow"


def test_local_file_uri(tmp_path: Path) -> None:
    uri = "file://" + str(tmp_path / "f")
    storage.put_bytes(storage.join(uri, "a.txt"), b"hi")
    assert (tmp_path / "f" / "a.txt").read_bytes() == b"hi"
    assert storage.list(uri) == [storage.join(uri, "a.txt")]


def test_local_lock_serialises_read_decide_write(tmp_path: Path) -> None:
    """Without the lock, threads that read a counter, wait and write it back lose increments; with it, none."""
    import threading
    import time

    uri = str(tmp_path / "state" / "counter.txt")
    storage.put_bytes(uri, b"0")

    def bump() -> None:
        with storage.local_lock(uri, ".counter.lock"):
            value = int(storage.get_bytes(uri))
            time.sleep(0.01)  # widen the window in which an unlocked writer would interleave
            storage.put_bytes(uri, str(value + 1).encode())

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert int(storage.get_bytes(uri)) == 8
    assert (tmp_path / "state" / ".counter.lock").exists()


def test_local_lock_is_a_no_op_for_remote_uris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with storage.local_lock("gs://bucket/state/state.json"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_the_one_atomic_local_write(tmp_path: Path) -> None:
    """storage.atomic_write_bytes/_text (what records, images, phantoms and reports write with): the file appears
    whole with a plain file's mode, a failed write keeps the old file and leaves no temporary behind."""
    import os

    target = tmp_path / "sub" / "out.txt"
    storage.atomic_write_text(target, "première\n")  # the folder is created; UTF-8, newline kept
    assert target.read_bytes() == "première\n".encode()
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # shared like any output, not owner-only like mkstemp
    storage.atomic_write_bytes(str(target), b"second")  # a str path too, replacing the old content
    assert target.read_bytes() == b"second"

    with pytest.raises(RuntimeError, match="killed"):
        with storage.atomic_file(target) as tmp:
            assert tmp.parent == target.parent and tmp.name.endswith(storage.PARTIAL_SUFFIX)
            tmp.write_bytes(b"half of the new content")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]

    # A writer that picks its format by the name (Keras's model.save) gets a temporary ending in its suffix.
    with storage.atomic_file(tmp_path / "model.keras", suffix=".keras") as tmp:
        assert tmp.name.endswith(".keras") and tmp.name.startswith(".model.keras.")
        tmp.write_bytes(b"a model")
    assert (tmp_path / "model.keras").read_bytes() == b"a model"

    # A .partial a killed writer left is never listed as an object, whatever its suffix.
    (target.parent / f".out.txt.x1y2{storage.PARTIAL_SUFFIX}").write_bytes(b"left by a killed writer")
    (target.parent / f".m.keras.x1y2{storage.PARTIAL_SUFFIX}.keras").write_bytes(b"left by a killed save")
    assert storage.list(str(target.parent)) == [str(target)]


def test_records_and_images_write_through_storage() -> None:
    """One atomic writer: the names the library has used are storage's, not copies of it."""
    from mammoflow import records
    from mammoflow.io import images

    assert records.atomic_write_text is storage.atomic_write_text
    assert images.atomic_write_bytes is storage.atomic_write_bytes
