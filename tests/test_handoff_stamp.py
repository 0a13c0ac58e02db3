"""The decode handoff's stamp (mammoflow.io.handoff): preprocess takes an entry without reading the file when the
file still has the size, times and inode recorded when ingest read it; anything else (a touched, rewritten or copied
file, a racy stamp, no stamp) gets the content check. The handoff lives in the cache root it is given."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from mammoflow.io import handoff
from mammoflow.io.dicom import DicomImage, read_dicom
from mammoflow.io.files import RACY_NS, FileStamp, file_sha256
from mammoflow.synth.dicom_writer import write_dicom


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MAMMOFLOW_CACHE", str(tmp_path / "default-cache"))
    monkeypatch.delenv(handoff.LIMIT_ENV, raising=False)
    return tmp_path / "cache"


def _dicom(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 4096, size=(48, 40)).astype(np.uint16)
    write_dicom(path, pixels, patient_id=f"P{seed}", patient_name="Test^Patient", bits_stored=12,
                transfer_syntax="rle")
    return path


def _settled(image: DicomImage) -> DicomImage:
    """The image as an ingest that read its file more than RACY_NS after the file was written would have it."""
    assert image.stamp is not None
    return dataclasses.replace(image, stamp=dataclasses.replace(image.stamp, taken_ns=image.stamp.taken_ns + RACY_NS))


def _racy(image: DicomImage) -> DicomImage:
    """The image as an ingest that read its file a moment after it was written would have it: set so, not left to
    the clock (a loaded machine may take seconds between writing the file and reading it)."""
    assert image.stamp is not None
    last = max(image.stamp.mtime_ns, image.stamp.ctime_ns)
    return dataclasses.replace(image, stamp=dataclasses.replace(image.stamp, taken_ns=last + RACY_NS // 2))


def _put(image: DicomImage, digest: str, cache: Path) -> Path:
    spool = handoff.Handoff.open(cache_dir=cache, limit=1 << 20)
    assert spool.put(digest, image)
    return handoff.entry_path(spool.folder, digest)


def _handed_on(folder: Path, seed: int, cache: Path) -> tuple[Path, DicomImage, str, Path]:
    """A settled file read by ingest and its pixels put under its digest: (path, image, digest, entry)."""
    path = _dicom(folder / "a.dcm", seed)
    image = _settled(read_dicom(path))
    digest = file_sha256(path)
    return path, image, digest, _put(image, digest, cache)


def test_read_dicom_stamps_the_file_it_read(tmp_path: Path) -> None:
    path = _dicom(tmp_path / "a.dcm", 1)
    image = read_dicom(path)
    st = os.stat(path)
    assert image.stamp is not None and image.stamp.matches(path)
    assert (image.stamp.size, image.stamp.ino, image.stamp.mtime_ns) == (st.st_size, st.st_ino, st.st_mtime_ns)
    last = max(st.st_mtime_ns, st.st_ctime_ns)
    assert image.stamp.trusted == (last <= image.stamp.taken_ns - RACY_NS)
    assert not _racy(image).stamp.trusted  # type: ignore[union-attr]  # read within RACY_NS of its last change
    assert _settled(image).stamp.trusted  # type: ignore[union-attr]
    with path.open("rb") as fh:
        assert read_dicom(fh).stamp is None  # a stream has no stamp


def test_a_trusted_matching_stamp_is_taken_without_reading_the_file(tmp_path: Path, cache: Path) -> None:
    path = _dicom(tmp_path / "a.dcm", 2)
    image = _settled(read_dicom(path))
    entry = _put(image, file_sha256(path), cache)
    assert handoff.stamp_path(entry).is_file()
    np.testing.assert_array_equal(handoff.take(path, file_sha256(path), cache_dir=cache), image.pixels)
    assert not entry.exists() and not handoff.stamp_path(entry).exists()
    # On the stamp's word: an entry filed under a digest the file does not have still comes back (it was not hashed).
    other = "0" * 64
    _put(image, other, cache)
    np.testing.assert_array_equal(handoff.take(path, other, cache_dir=cache), image.pixels)


def test_a_racy_stamp_gets_the_content_check(tmp_path: Path, cache: Path) -> None:
    path = _dicom(tmp_path / "a.dcm", 3)
    image = _racy(read_dicom(path))  # read a moment after the file was written
    assert image.stamp is not None and not image.stamp.trusted and image.stamp.matches(path)
    entry = _put(image, "1" * 64, cache)
    assert handoff.take(path, "1" * 64, cache_dir=cache) is None  # hashed: not this digest; the entry dropped
    assert not entry.exists() and not handoff.stamp_path(entry).exists()
    _put(image, file_sha256(path), cache)
    np.testing.assert_array_equal(handoff.take(path, file_sha256(path), cache_dir=cache), image.pixels)


def test_a_touched_file_is_hashed_and_still_taken(tmp_path: Path, cache: Path) -> None:
    path, image, digest, _ = _handed_on(tmp_path, 4, cache)
    os.utime(path, ns=(image.stamp.mtime_ns + 10**9, image.stamp.mtime_ns + 10**9))  # type: ignore[union-attr]
    assert not image.stamp.matches(path)  # type: ignore[union-attr]
    np.testing.assert_array_equal(handoff.take(path, digest, cache_dir=cache), image.pixels)


def test_a_rewrite_that_keeps_size_and_mtime_is_caught(tmp_path: Path, cache: Path) -> None:
    path, image, digest, entry = _handed_on(tmp_path, 5, cache)
    other = _dicom(tmp_path / "b.dcm", 6)
    assert other.stat().st_size == path.stat().st_size
    path.write_bytes(other.read_bytes())  # other pixels, same size; the modification time set back as it was
    if path.stat().st_ctime_ns == image.stamp.ctime_ns:  # type: ignore[union-attr]
        pytest.skip("this filesystem's clock did not tick between two writes (the racy rule covers that case)")
    os.utime(path, ns=(image.stamp.mtime_ns, image.stamp.mtime_ns))  # type: ignore[union-attr]
    assert path.stat().st_mtime_ns == image.stamp.mtime_ns  # type: ignore[union-attr]
    assert not image.stamp.matches(path)  # type: ignore[union-attr]  # the status-change time moved
    assert handoff.take(path, digest, cache_dir=cache) is None and not entry.exists()


def test_a_copy_has_another_inode_and_is_hashed(tmp_path: Path, cache: Path) -> None:
    path, image, digest, _ = _handed_on(tmp_path, 7, cache)
    copy = tmp_path / "copy" / "a.dcm"
    copy.parent.mkdir()
    shutil.copy2(path, copy)  # the same bytes and mtime, another inode
    assert not image.stamp.matches(copy)  # type: ignore[union-attr]
    np.testing.assert_array_equal(handoff.take(copy, digest, cache_dir=cache), image.pixels)


def test_the_explicit_cache_dir_is_the_only_place_used(tmp_path: Path, cache: Path) -> None:
    path, image, digest, entry = _handed_on(tmp_path, 8, cache)
    assert entry.parent == cache / handoff.FOLDER
    assert not (tmp_path / "default-cache").exists()  # $MAMMOFLOW_CACHE is not touched
    assert handoff.take(path, digest) is None  # the default root has no entry
    assert entry.exists()
    np.testing.assert_array_equal(handoff.take(path, digest, cache_dir=cache), image.pixels)


def test_the_sweep_removes_an_old_entry_with_its_stamp_and_counts_entries_only(tmp_path: Path, cache: Path) -> None:
    path = _dicom(tmp_path / "a.dcm", 9)
    image = _settled(read_dicom(path))
    entry = _put(image, file_sha256(path), cache)
    limit = 1 << 20
    assert handoff.Handoff.open(cache_dir=cache, limit=limit).budget == limit - entry.stat().st_size
    old = entry.stat().st_mtime - handoff.MAX_AGE_S - 60
    os.utime(entry, (old, old))
    assert handoff.Handoff.open(cache_dir=cache, limit=limit).budget == limit
    assert not entry.exists() and not handoff.stamp_path(entry).exists()


def test_a_damaged_stamp_is_no_stamp(tmp_path: Path, cache: Path) -> None:
    path = _dicom(tmp_path / "a.dcm", 10)
    image = _settled(read_dicom(path))
    entry = _put(image, "2" * 64, cache)
    handoff.stamp_path(entry).write_text("{not json")
    assert FileStamp.from_dict({"size": 1}) is None
    assert handoff.take(path, "2" * 64, cache_dir=cache) is None  # content check: not this digest


def test_ingest_and_preprocess_share_an_explicit_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``steps.ingest(cache_dir=X)`` leaves the decoded pixels under ``X/handoff`` (none under the default root), and
    ``steps.preprocess(cache_dir=X)`` takes every one of them."""
    from mammoflow import steps

    monkeypatch.setenv("MAMMOFLOW_CACHE", str(tmp_path / "default"))
    monkeypatch.delenv(handoff.LIMIT_ENV, raising=False)
    steps.demo_data(str(tmp_path / "raw"), 4, 7, fmt="dicom", size=(200, 150))
    cache = tmp_path / "explicit"
    steps.ingest("cbis-ddsm", str(tmp_path / "raw"), str(tmp_path / "records"), workers=1, cache_dir=str(cache))
    assert list((cache / handoff.FOLDER).glob("*.npy"))
    assert not list((tmp_path / "default").glob(f"{handoff.FOLDER}/*.npy"))
    steps.preprocess(str(tmp_path / "records"), "jaamour2023", str(tmp_path / "out"), workers=1, cache_dir=str(cache))
    assert not list((cache / handoff.FOLDER).glob("*.npy"))  # every entry taken
