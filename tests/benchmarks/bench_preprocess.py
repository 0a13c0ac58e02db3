"""Preprocessing throughput on one full-size mammogram, next to the bare OpenCV/pydicom operations it is built on;
and the preprocess step's throughput in 1 and 2 parallel record partitions.

A synthetic 4000x3000, 12-bit (stored in 16) MONOCHROME2 DICOM with a breast, tissue texture and a burned-in label
is written to a temporary folder. For each preset the benchmark times read (pydicom decode + display mapping) +
chain, on one thread, and the sum of the bare library calls that do the same work; the ratio is the cost of our
layer (validation, dtype handling, geometry tracking, mask post-processing). Ours and the bare calls run in turn
(ours, bare, ours, bare, ...; :data:`REPEATS` pairs after a warm-up of each), and each figure is the median of its
runs, so a change in the machine's load (2 cores shared) falls on both. Each chain's per-step times (medians, ours
from :class:`~mammoflow.preprocess.chain.Chain`'s ``timings``, the bare calls' one by one) are printed beside it.

Partitions: a CBIS-DDSM-like download of :data:`PARTITION_IMAGES` full-size (4000x3000) DICOM phantoms is ingested,
then preprocessed (yu2020) by :func:`mammoflow.steps.partitions.preprocess_partition` as the pipeline's
``ParallelFor`` runs it: one partition in one process, then two partitions in two processes at once (each pinned to
one core with one OpenCV thread, as a pod with one CPU; so no worker pool), each run into a fresh storage root. The
ingest keeps no decode handoff (:mod:`mammoflow.io.handoff`): both runs decode every image, as pods would. Throughput = images / wall time of the
partitions (process start excluded); the ratio 2-vs-1 is what a second node buys on this machine (2 cores, shared).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tests.benchmarks.figures import record

from mammoflow.io.handoff import LIMIT_ENV as HANDOFF_LIMIT_ENV

HEIGHT, WIDTH = 4000, 3000
REPEATS = 7


def synthetic_mammogram(height: int = HEIGHT, width: int = WIDTH, seed: int = 0) -> np.ndarray:
    """A 12-bit mammogram-like image (uint16): breast against the left edge, textured tissue, a bright label."""
    rng = np.random.default_rng(seed)
    rr = (np.arange(height, dtype=np.float32)[:, None] - height / 2) / (0.45 * height)
    cc = np.arange(width, dtype=np.float32)[None, :] / (0.8 * width)
    d = rr**2 + cc**2
    texture = cv2.resize(rng.standard_normal((height // 50, width // 50)).astype(np.float32), (width, height),
                         interpolation=cv2.INTER_CUBIC)
    img = np.where(d < 1, 0.35 + 0.35 * (1 - d) + 0.05 * texture, 0.02).astype(np.float32)
    img += rng.normal(0, 0.01, (height, width)).astype(np.float32)
    img[100:260, width - 700:width - 200] = 0.95  # burned-in label
    return np.clip(img * 4095, 0, 4095).astype(np.uint16)


Steps = dict[str, float]  # a step's name -> seconds


class Laps:
    """Per-step wall times of one run: ``laps("name", value)`` returns ``value`` and adds the seconds since the
    previous lap (or the start) under ``name``."""

    def __init__(self) -> None:
        self.steps: Steps = {}
        self._last = time.perf_counter()

    def __call__(self, name: str, value: object = None) -> object:
        now = time.perf_counter()
        self.steps[name] = self.steps.get(name, 0.0) + now - self._last
        self._last = now
        return value


@dataclass
class SideBySide:
    """Medians of ``ours`` and ``bare`` run in turn: wall seconds (the figures), CPU seconds of this process (a check
    that a change in the machine's load does not reach: both sides run on one thread) and each step's wall seconds."""

    ours: float
    bare: float
    ours_cpu: float
    bare_cpu: float
    ours_steps: Steps
    bare_steps: Steps

    def cpu_note(self) -> str:
        return f"CPU time {self.ours_cpu * 1e3:.1f} vs {self.bare_cpu * 1e3:.1f} ms, ratio {self.ours_cpu / self.bare_cpu:4.2f}"


def side_by_side(ours: Callable[[Laps], object], bare: Callable[[Laps], object], repeats: int = REPEATS) -> SideBySide:
    """``ours`` and ``bare`` run in turn ``repeats`` times each, after one warm-up call of each (see
    :class:`SideBySide`; the steps are what they reported to their :class:`Laps`)."""
    ours(Laps())
    bare(Laps())
    runs: tuple[list[Steps], list[Steps]] = ([], [])
    walls: tuple[list[float], list[float]] = ([], [])
    cpus: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for side, fn in enumerate((ours, bare)):
            laps = Laps()
            wall, cpu = time.perf_counter(), time.process_time()
            fn(laps)
            cpus[side].append(time.process_time() - cpu)
            walls[side].append(time.perf_counter() - wall)
            runs[side].append(laps.steps)
    med = statistics.median
    return SideBySide(med(walls[0]), med(walls[1]), med(cpus[0]), med(cpus[1]), _median_steps(runs[0]),
                      _median_steps(runs[1]))


def _median_steps(runs: list[Steps]) -> Steps:
    return {name: statistics.median(r.get(name, 0.0) for r in runs) for name in runs[0]}


def _show_steps(label: str, steps: Steps) -> str:
    return f"    {label:<5} " + " | ".join(f"{name} {seconds * 1e3:.1f}" for name, seconds in steps.items()) + " (ms)"


def _bare_decode(path: Path, lap: Callable[..., object] = lambda name, value=None: value) -> np.ndarray:
    import pydicom

    return lap("dcmread+decode", pydicom.dcmread(path).pixel_array)


def _bare_yu2020(path: Path, lap: Callable[..., object] = lambda name, value=None: value) -> None:
    img = _bare_decode(path, lap)
    img = lap("medianBlur", cv2.medianBlur(img, 3))
    img = lap("CLAHE", cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(img))
    t, fg = lap("Otsu", cv2.threshold(img, 0, 65535, cv2.THRESH_BINARY | cv2.THRESH_OTSU))
    lap("components", cv2.connectedComponentsWithStats((fg > 0).view(np.uint8), connectivity=8))


def _bare_jaamour2023(path: Path, lap: Callable[..., object] = lambda name, value=None: value) -> None:
    img = _bare_decode(path, lap)
    img = lap("GaussianBlur", cv2.GaussianBlur(img, (0, 0), 0.5))
    hist = cv2.calcHist([img], [0], None, [65536], [0, 65536]).ravel()
    cdf = np.cumsum(hist)
    lut = ((cdf - cdf[0]) / (cdf[-1] - cdf[0]) * 65535).astype(np.uint16)
    img = lap("equalise", lut[img])
    lap("resize", cv2.resize(img, (384, 512), interpolation=cv2.INTER_AREA))


PARTITION_IMAGES, PARTITION_SIZE = 8, (4000, 3000)


def _partition_worker_init() -> None:
    cv2.setNumThreads(1)  # one core per partition, as a pod with one CPU
    import mammoflow.steps.partitions  # noqa: F401 - imported before the clock starts


def _run_partition(args: tuple[str, str, int, int]) -> dict:
    from mammoflow.steps.partitions import preprocess_partition

    records, store, index, count = args
    if hasattr(os, "sched_setaffinity"):  # a pod with one CPU: one core each, so preprocess runs no pool
        cpus = sorted(os.sched_getaffinity(os.getppid()))  # the machine's, not this worker's last pinning
        os.sched_setaffinity(0, {cpus[index % len(cpus)]})
    return preprocess_partition(records, "yu2020", store, index, count, cache_dir=f"{store}-cache")


def partitions_throughput(tmp: Path) -> None:
    """Images/s of the preprocess step in 1 and in 2 parallel partitions (see the module docstring)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from mammoflow import steps
    from mammoflow.partitions import in_partition
    from mammoflow.records import RecordsTable

    raw, records = tmp / "cbis", tmp / "records"
    steps.demo_data(str(raw), PARTITION_IMAGES, 1, fmt="dicom", size=PARTITION_SIZE)
    # No decode handoff: the first timed run would take every decoded image and leave the second run decoding (and
    # partitions on a cluster run in other pods than their ingest, where there is no handoff).
    previous = os.environ.get(HANDOFF_LIMIT_ENV)
    os.environ[HANDOFF_LIMIT_ENV] = "0"
    try:
        steps.ingest("cbis-ddsm", str(raw), records)
    finally:
        if previous is None:
            os.environ.pop(HANDOFF_LIMIT_ENV, None)
        else:
            os.environ[HANDOFF_LIMIT_ENV] = previous
    table = RecordsTable.read(records)
    n = len(table.records)
    balance = [len(in_partition(table.records, p, 2)) for p in range(2)]
    print(f"partitions: {n} CBIS-DDSM-like {PARTITION_SIZE[0]}x{PARTITION_SIZE[1]} DICOM phantoms, yu2020 chain, "
          f"2 partitions of {balance[0]} and {balance[1]} records (by patient)")
    rate = {}
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_partition_worker_init) as pool:
        list(pool.map(abs, [0, 0]))  # both workers started and warm
        for count in (1, 2):
            store = str(tmp / f"store-{count}")
            started = time.perf_counter()
            done = list(pool.map(_run_partition, [(str(records), store, p, count) for p in range(count)]))
            seconds = time.perf_counter() - started
            assert sum(d["usable"] for d in done) == n, done
            rate[count] = n / seconds
            print(f"  {count} partition(s): {seconds:6.1f} s  {rate[count]:5.2f} images/s  "
                  f"({seconds / n * count:5.2f} s per image per partition)")
    print(f"  throughput ratio 2 vs 1 partitions: {rate[2] / rate[1]:4.2f} (ideal 2.00 on 2 free cores)")
    record("preprocess throughput, 1 partition", rate[1], "images/s", note=f"{n} images {PARTITION_SIZE}")
    record("preprocess throughput, 2 parallel partitions", rate[2], "images/s", floor=rate[1],
           note="ratio = speedup over 1 partition; partitions " + "/".join(map(str, balance)))
    record("preprocess cost per full image, 1 partition", 1 / rate[1], "s/image")


def rle_read(tmp: Path) -> None:
    """An RLE Lossless DICOM (CBIS-DDSM's files are RLE): our read against the compiled decode (pylibjpeg-rle) and
    pydicom's pure-Python decoder, which the project never uses while the compiled plugin is installed."""
    from pydicom import dcmread
    from pydicom.pixels import pixel_array

    from mammoflow.io.images import read_image
    from mammoflow.synth.dicom_writer import write_dicom

    path = tmp / "rle.dcm"
    write_dicom(path, synthetic_mammogram(), patient_id="BENCH", patient_name="Bench^Mark", bits_stored=12,
                transfer_syntax="rle")
    timed = side_by_side(lambda laps: read_image(path),
                         lambda laps: pixel_array(dcmread(path), decoding_plugin="pylibjpeg"))
    ours, compiled = timed.ours, timed.bare
    started = time.perf_counter()
    pixel_array(dcmread(path), decoding_plugin="pydicom")
    pure = time.perf_counter() - started
    print(f"  {'RLE read':<12} ours {ours * 1e3:7.1f} ms   compiled decode {compiled * 1e3:7.1f} ms   "
          f"ratio {ours / compiled:4.2f}   pure-Python decode {pure * 1e3:7.1f} ms\n    ({timed.cpu_note()})")
    record("RLE DICOM read / bare compiled decode (pylibjpeg-rle)", ours * 1e3, "ms", floor=compiled * 1e3,
           goal="<= 1.5")
    record("RLE DICOM read / pydicom's pure-Python decoder", ours * 1e3, "ms", floor=pure * 1e3, goal="<= 1.0",
           note="the pure-Python decoder serves only when no plugin is installed")


def chain_vs_bare(path: Path, name: str, bare: Callable[..., None]) -> None:
    """One preset's chain (read + preprocess) against the bare calls, with both sides' per-step times."""
    from mammoflow.io.images import read_image
    from mammoflow.preprocess.chain import Chain

    chain = Chain.from_config(name)

    def ours(laps: Laps) -> None:
        image = laps("read", read_image(path))
        chain(image, timings=laps.steps)

    timed = side_by_side(ours, lambda laps: bare(path, laps))
    ours_s, base_s = timed.ours, timed.bare
    print(f"  {name:<12} ours {ours_s * 1e3:7.1f} ms ({1 / ours_s:5.2f} images/s per core)   "
          f"bare ops {base_s * 1e3:7.1f} ms ({1 / base_s:5.2f} images/s)   ratio {ours_s / base_s:4.2f}\n"
          f"    ({timed.cpu_note()}); median wall time of each step:")
    print(_show_steps("ours", timed.ours_steps))
    print(_show_steps("bare", timed.bare_steps))
    record(f"{name} chain (read + preprocess) / bare OpenCV ops", ours_s * 1e3, "ms", floor=base_s * 1e3,
           goal="<= 1.3")


def main() -> None:
    from mammoflow.io.images import read_image
    from mammoflow.synth.dicom_writer import write_dicom

    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic.dcm"
        write_dicom(path, synthetic_mammogram(), patient_id="BENCH", patient_name="Bench^Mark", bits_stored=12)
        print(f"image: {HEIGHT}x{WIDTH} 12-bit DICOM, explicit VR little endian, {path.stat().st_size / 1e6:.1f} MB;"
              f" 1 OpenCV thread, ours and bare in turn, medians of {REPEATS} runs each")
        # ~10 ms a call: many more pairs than the chains get, so that a moment of load on the shared cores weighs little.
        timed = side_by_side(lambda laps: read_image(path), lambda laps: _bare_decode(path), repeats=5 * REPEATS)
        read_s, decode_s = timed.ours, timed.bare
        print(f"  {'read':<12} ours {read_s * 1e3:7.1f} ms   bare dcmread+decode {decode_s * 1e3:7.1f} ms   "
              f"ratio {read_s / decode_s:4.2f}\n    ({timed.cpu_note()})")
        record("DICOM read / bare dcmread + decode (4000x3000, 12-bit)", read_s * 1e3, "ms", floor=decode_s * 1e3,
               goal="<= 1.5", note="ours adds the display mapping (12 to 16 bits, exact) and the checks")
        rle_read(Path(tmp))
        chain_vs_bare(path, "yu2020", _bare_yu2020)
        chain_vs_bare(path, "jaamour2023", _bare_jaamour2023)
    with tempfile.TemporaryDirectory() as tmp:
        partitions_throughput(Path(tmp))


if __name__ == "__main__":
    main()
