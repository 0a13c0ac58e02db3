"""Preprocessing throughput on one full-size mammogram, next to the bare OpenCV/pydicom operations it is built on.

A synthetic 4000x3000, 12-bit (stored in 16) MONOCHROME2 DICOM with a breast, tissue texture and a burned-in label
is written to a temporary folder. For each preset the benchmark times read (pydicom decode + display mapping) +
chain, on one thread, and the sum of the bare library calls that do the same work; the ratio is the cost of our
layer (validation, dtype handling, geometry tracking, mask post-processing).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

HEIGHT, WIDTH = 4000, 3000
REPEATS = 3


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


def _time(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    """Median wall time of ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _bare_decode(path: Path) -> np.ndarray:
    import pydicom

    return pydicom.dcmread(path).pixel_array


def _bare_yu2020(path: Path) -> None:
    img = _bare_decode(path)
    img = cv2.medianBlur(img, 3)
    img = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(img)
    t, fg = cv2.threshold(img, 0, 65535, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    cv2.connectedComponentsWithStats((fg > 0).view(np.uint8), connectivity=8)


def _bare_jaamour2023(path: Path) -> None:
    img = _bare_decode(path)
    img = cv2.GaussianBlur(img, (0, 0), 0.5)
    hist = cv2.calcHist([img], [0], None, [65536], [0, 65536]).ravel()
    cdf = np.cumsum(hist)
    lut = ((cdf - cdf[0]) / (cdf[-1] - cdf[0]) * 65535).astype(np.uint16)
    img = lut[img]
    cv2.resize(img, (384, 512), interpolation=cv2.INTER_AREA)


def main() -> None:
    from mammoflow.io.images import read_image
    from mammoflow.preprocess.chain import Chain
    from mammoflow.synth.dicom_writer import write_dicom

    cv2.setNumThreads(1)
    bare = {"yu2020": _bare_yu2020, "jaamour2023": _bare_jaamour2023}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic.dcm"
        write_dicom(path, synthetic_mammogram(), patient_id="BENCH", patient_name="Bench^Mark", bits_stored=12)
        print(f"image: {HEIGHT}x{WIDTH} 12-bit DICOM, explicit VR little endian, {path.stat().st_size / 1e6:.1f} MB;"
              f" 1 OpenCV thread, median of {REPEATS} runs")
        read_s = _time(lambda: read_image(path))
        decode_s = _time(lambda: _bare_decode(path))
        print(f"  {'read':<12} ours {read_s * 1e3:7.1f} ms   bare dcmread+decode {decode_s * 1e3:7.1f} ms   "
              f"ratio {read_s / decode_s:4.2f}")
        for name, bare_fn in bare.items():
            chain = Chain.from_config(name)
            ours = _time(lambda chain=chain: chain(read_image(path)))
            base = _time(lambda bare_fn=bare_fn: bare_fn(path))
            print(f"  {name:<12} ours {ours * 1e3:7.1f} ms ({1 / ours:5.2f} images/s per core)   "
                  f"bare ops {base * 1e3:7.1f} ms ({1 / base:5.2f} images/s)   ratio {ours / base:4.2f}")


if __name__ == "__main__":
    main()
