"""``preprocess`` uses every CPU it may by default, and its worker pool never outlives it: stopped by SIGTERM (a
pod being deleted) it exits 143 with no worker left running, and the same command then resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from mammoflow.preprocess.run import MIN_IMAGES_PER_WORKER, worker_count
from mammoflow.resources import available_cpus

MAMMOFLOW = Path(sys.executable).parent / "mammoflow"


def test_worker_count_uses_every_cpu_but_not_for_a_handful_of_images() -> None:
    cpus = available_cpus()
    assert worker_count(None, 1000) == cpus
    assert worker_count(None, MIN_IMAGES_PER_WORKER - 1) == 1  # a pool would cost more than it saves
    assert worker_count(None, 2 * MIN_IMAGES_PER_WORKER) == min(cpus, 2)
    assert worker_count(3, 1000) == 3 and worker_count(1, 1000) == 1


def _processes_with(marker: str) -> list[str]:
    """Command lines of the live processes whose environment holds ``marker`` (children inherit it)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker.encode() in (proc / "environ").read_bytes():
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


@pytest.mark.skipif(available_cpus() < 2, reason="needs 2 CPUs for a pool of 2 workers")
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find the workers")
def test_sigterm_stops_the_workers_too_and_the_rerun_resumes(tmp_path: Path) -> None:
    marker = f"MAMMOFLOW_TEST_MARK={uuid.uuid4().hex}"
    env = {**os.environ, "MAMMOFLOW_SALT": "workers-test", "CI": "true", marker.split("=")[0]: marker.split("=")[1]}

    def run(*args: str, **kw) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(MAMMOFLOW), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600, **kw)

    made = run("demo-data", "--out", "raw", "--format", "dicom", "--n-images", "48", "--seed", "3", "--size",
               "1600x1200")
    assert made.returncode == 0, made.stderr[-2000:]
    ingested = run("ingest", "--source", "cbis-ddsm", "--root", "raw", "--out", "records")
    assert ingested.returncode == 0, ingested.stderr[-2000:]
    n = len((tmp_path / "records" / "records.jsonl").read_text().splitlines())
    assert n >= 2 * MIN_IMAGES_PER_WORKER
    images = tmp_path / "pre" / "images"
    proc = subprocess.Popen([str(MAMMOFLOW), "preprocess", "--records", "records", "--config", "yu2020", "--out",
                             "pre"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(list(images.glob("*.png"))) < 2 and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "preprocess ended before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out[-3000:]
    assert "in 2 worker processes" in out and "Traceback" not in out
    deadline = time.monotonic() + 30  # terminated workers may take a moment to be reaped
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_with(marker) == []
    done_before = len(list(images.glob("*.png")))
    assert 0 < done_before < n

    again = run("preprocess", "--records", "records", "--config", "yu2020", "--out", "pre")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reused" in again.stdout and len(list(images.glob("*.png"))) == n
    assert _processes_with(marker) == []
