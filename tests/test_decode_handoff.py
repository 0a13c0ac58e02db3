"""Decode once: ingest hands the display pixels of the compressed DICOMs it decoded on to preprocess
(mammoflow.io.handoff). Preprocess output is byte-identical whether it takes them or decodes; a file changed since
ingest, or no spool at all, is decoded."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from mammoflow import steps
from mammoflow.io import handoff
from mammoflow.io.dicom import read_dicom
from mammoflow.io.files import file_sha256


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("handoff") / "raw"
    steps.demo_data(str(root), 8, 7, fmt="dicom", size=(400, 300))
    return root


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MAMMOFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(handoff.LIMIT_ENV, raising=False)
    return tmp_path / "cache"


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / handoff.FOLDER).glob("*.npy"))


def _files(folder: Path) -> dict[str, bytes]:
    """Every output file of a preprocess run (its timing aside)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "preprocess_summary.json"}


def _ingest(raw: Path, out: Path) -> None:
    steps.ingest("cbis-ddsm", str(raw), str(out), workers=1)


def test_preprocess_output_is_byte_identical_with_or_without_the_handoff(raw: Path, tmp_path: Path,
                                                                         cache: Path) -> None:
    _ingest(raw, tmp_path / "records")
    kept = _entries(cache)
    assert kept, "the phantoms hold compressed images: their pixels are handed on"
    steps.preprocess(str(tmp_path / "records"), "jaamour2023", str(tmp_path / "taken"), workers=1)
    assert _entries(cache) == []  # each entry taken, then deleted
    steps.preprocess(str(tmp_path / "records"), "jaamour2023", str(tmp_path / "decoded"), workers=1)  # no spool
    assert _files(tmp_path / "taken") == _files(tmp_path / "decoded")


def test_a_file_changed_since_ingest_is_decoded(raw: Path, tmp_path: Path, cache: Path) -> None:
    import json

    _ingest(raw, tmp_path / "records")
    records = [json.loads(line) for line in (tmp_path / "records" / "records.jsonl").read_text().splitlines()]
    root = Path(json.loads((tmp_path / "records" / "records_meta.json").read_text())["image_root"])
    names = {e.name for e in _entries(cache)}
    handed = [r for r in records if f"{handoff.VERSION}-{r['content_hash']}.npy" in names]
    assert len(handed) >= 2
    changed, other = root / handed[0]["image_path"], root / handed[1]["image_path"]
    work = tmp_path / "raw_copy"  # change a copy: the module's phantoms stay as they are
    shutil.copytree(root, work)
    meta = json.loads((tmp_path / "records" / "records_meta.json").read_text())
    meta["image_root"] = str(work)
    (tmp_path / "records" / "records_meta.json").write_text(json.dumps(meta))
    target = work / changed.relative_to(root)
    target.write_bytes(other.read_bytes())  # another valid image now: the spooled pixels are not its pixels

    stale = handoff.entry_path(cache / handoff.FOLDER, handed[0]["content_hash"])
    assert handoff.take(target, handed[0]["content_hash"]) is None and not stale.exists()
    assert np.array_equal(handoff.take(work / handed[1]["image_path"], handed[1]["content_hash"]),
                          read_dicom(other).pixels)  # an unchanged file's entry holds its decoded pixels


def test_the_spool_keeps_only_compressed_mg_images_within_its_budget(raw: Path, tmp_path: Path, cache: Path
                                                                     ) -> None:
    from pydicom.uid import UID, ExplicitVRLittleEndian

    images = [read_dicom(p) for p in sorted(raw.rglob("*.dcm")) if "full" in str(p).lower()]
    compressed = [im for im in images if im.transfer_syntax != UID(ExplicitVRLittleEndian).name
                  and im.transfer_syntax not in handoff.native_syntaxes()]
    native = [im for im in images if im.transfer_syntax in handoff.native_syntaxes()]
    assert compressed and native
    spool = handoff.Handoff.open(limit=compressed[0].pixels.nbytes + 200)
    assert not spool.put("a" * 64, native[0])  # a native file's decode is a read: cheaper than the spool
    assert not spool.put(None, compressed[0])
    assert spool.put("b" * 64, compressed[0])
    assert not spool.put("c" * 64, compressed[0])  # over the budget: preprocess decodes it
    assert handoff.Handoff.open(limit=0).budget == 0
    # the next ingest counts what is there against the bound, and removes what is older than a day
    assert handoff.Handoff.open(limit=10 << 20).budget == (10 << 20) - (compressed[0].pixels.nbytes + 128)
    old = time.time() - handoff.MAX_AGE_S - 60
    os.utime(_entries(cache)[0], (old, old))
    assert handoff.Handoff.open(limit=10 << 20).budget == 10 << 20 and _entries(cache) == []


def test_no_spool_entry_means_the_file_is_not_even_hashed(raw: Path, cache: Path) -> None:
    path = next(p for p in sorted(raw.rglob("*.dcm")))
    assert handoff.take(path, file_sha256(path)) is None  # nothing was handed on: decode
    assert handoff.take(path, None) is None


def test_no_spool_by_default_in_a_kubernetes_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a pod the next step (preprocess) runs elsewhere: nothing is kept unless asked for."""
    monkeypatch.delenv(handoff.LIMIT_ENV, raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert handoff.handoff_limit() == handoff.DEFAULT_LIMIT
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert handoff.handoff_limit() == 0
    monkeypatch.setenv(handoff.LIMIT_ENV, str(1 << 20))
    assert handoff.handoff_limit() == 1 << 20
