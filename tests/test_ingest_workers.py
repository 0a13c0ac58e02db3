"""Ingest reads its DICOM files in the project's worker pool by default: the records folder is byte-identical to a
serial run's (quarantine and log included), and a SIGTERM mid-ingest exits 143 with no worker left running."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.test_preprocess_workers import _processes_with  # processes by an environment marker (in /proc)

from mammoflow import steps
from mammoflow.resources import available_cpus

MAMMOFLOW = Path(sys.executable).parent / "mammoflow"
OUTPUTS = ("records.jsonl", "quarantine.jsonl", "quarantine.md", "skipped.jsonl", "records_meta.json",
           "ingest_summary.json")


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CBIS-DDSM-like phantoms (mixed transfer syntaxes), one full image truncated (quarantined in a worker)."""
    root = tmp_path_factory.mktemp("ingest_workers") / "raw"
    steps.demo_data(str(root), 10, 5, fmt="dicom", size=(400, 300))
    full = sorted(p for p in root.rglob("*.dcm") if "full" in str(p).lower())
    data = full[3].read_bytes()
    full[3].write_bytes(data[: len(data) // 2])
    return root


def _site_folder(raw: Path, dest: Path) -> Path:
    """A flat DICOM folder from the phantoms' full images: one copied twice (a duplicate), one truncated, one
    without a PatientID (its reader logs a warning: in a worker)."""
    import pydicom

    dest.mkdir()
    full = sorted(p for p in raw.rglob("*.dcm") if "full" in str(p).lower())
    for i, path in enumerate(full):
        shutil.copyfile(path, dest / f"img{i:02d}.dcm")
    shutil.copyfile(full[0], dest / "zz_copy.dcm")
    ds = pydicom.dcmread(dest / "img05.dcm")
    del ds.PatientID
    ds.save_as(dest / "img05.dcm")
    return dest


def _ingest(source: str, root: Path, out: Path, workers: int, caplog: pytest.LogCaptureFixture) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mammoflow"):
        steps.ingest(source, str(root), str(out), workers=workers)
    return [r.getMessage() for r in caplog.records if r.name.startswith("mammoflow")]


@pytest.mark.skipif(available_cpus() < 2, reason="needs 2 CPUs for a pool of 2 workers")
@pytest.mark.parametrize("source", ["cbis-ddsm", "dicom-dir"])
def test_records_are_byte_identical_with_one_or_two_workers(raw: Path, source: str, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAMMOFLOW_CACHE", str(tmp_path / "cache"))
    root = raw if source == "cbis-ddsm" else _site_folder(raw, tmp_path / "site")
    serial = _ingest(source, root, tmp_path / "one", 1, caplog)
    pooled = _ingest(source, root, tmp_path / "two", 2, caplog)
    assert any("2 worker processes" in m for m in pooled) and not any("worker processes" in m for m in serial)
    for name in OUTPUTS:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    quarantine = (tmp_path / "two" / "quarantine.jsonl").read_text()
    assert '"truncated"' in quarantine  # the error raised in a worker reached the quarantine
    if source == "dicom-dir":
        assert '"duplicate"' in quarantine
        assert any("no PatientID" in m for m in pooled)  # logged in a worker, handled here
    # the workers' log records are handled here, in file order: the same log as a serial run
    assert [m for m in pooled if "worker processes" not in m] == serial


@pytest.mark.skipif(available_cpus() < 2, reason="needs 2 CPUs for a pool of 2 workers")
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find the workers")
def test_sigterm_mid_ingest_exits_143_and_leaves_no_worker(tmp_path: Path) -> None:
    marker = f"MAMMOFLOW_TEST_MARK={uuid.uuid4().hex}"
    cache = tmp_path / "cache"
    env = {**os.environ, "CI": "true", "MAMMOFLOW_CACHE": str(cache), "MAMMOFLOW_HANDOFF_LIMIT": str(1 << 30),
           marker.split("=")[0]: marker.split("=")[1]}
    made = subprocess.run([str(MAMMOFLOW), "demo-data", "--out", "raw", "--format", "dicom", "--n-images", "16",
                           "--seed", "4", "--size", "1600x1200"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-2000:]
    proc = subprocess.Popen([str(MAMMOFLOW), "ingest", "--source", "cbis-ddsm", "--root", "raw", "--out", "records",
                             "--workers", "2"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    spool = cache / "handoff"  # a worker has decoded a compressed image once its pixels are there: the pool works
    out = _sigterm_once(proc, lambda: spool.is_dir() and any(spool.glob("*.npy")))
    assert proc.returncode == 143, out[-3000:]
    assert "2 worker processes" in out and "Traceback" not in out
    assert _gone(marker, timeout=30)  # terminated workers may take a moment to be reaped
    assert not (tmp_path / "records" / "records.jsonl").exists()  # a records folder is written all or nothing


def _sigterm_once(proc: subprocess.Popen[str], ready: Callable[[], bool]) -> str:
    """Send SIGTERM to ``proc`` as soon as ``ready()`` (it must still be running then); its output."""
    try:
        deadline = time.monotonic() + 300
        while not ready() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the command ended before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        return proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()


def _gone(marker: str, timeout: float) -> bool:
    """True once no live process carries ``marker`` in its environment (within ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while _processes_with(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True
