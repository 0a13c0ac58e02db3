"""``build-dataset --export-png``: every example of a build as a PNG, to look at, and one contact sheet per class."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mammoflow.preprocess import ops


def _safe_name(text: str) -> str:
    """A file-name-safe version of an example id (``mias:mdb001#lesion0`` -> ``mias_mdb001_lesion0``)."""
    return re.sub(r"[^A-Za-z0-9._()-]+", "_", text).strip("_") or "example"


class PngExport:
    """``--export-png``: every example as ``split/class/example_id.png`` and one contact sheet per class."""

    def __init__(self, folder: Path, classes: Sequence[str], per_class: int = 24, tile: int = 96):
        self.folder = Path(folder)
        self.classes = classes
        self.per_class = per_class
        self.tile = tile
        self.samples: dict[str, list[tuple[str, np.ndarray]]] = defaultdict(list)

    def add(self, split: str, cut: Any) -> None:
        from mammoflow.io.images import write_png

        write_png(self.folder / split / cut.class_name / f"{_safe_name(cut.example_id)}.png", cut.image)
        if len(self.samples[cut.class_name]) < self.per_class:
            self.samples[cut.class_name].append((f"{split}", cut.image))

    def _tile(self, img: np.ndarray) -> np.ndarray:
        lo, hi = (float(v) for v in np.percentile(img, (0.5, 99.5)))
        scaled = np.clip((img.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)
        out, _ = ops.resize_with_padding((scaled * 255).astype(np.uint8), (self.tile, self.tile))
        return out

    def contact_sheet(self, columns: int = 12) -> Path:
        """A grid per class (class name on the left, each tile marked with its split), stacked top to bottom."""
        import cv2

        from mammoflow.io.images import write_png

        label_w, gap, step = 140, 4, self.tile + 4
        classes = [c for c in self.classes if self.samples.get(c)]
        lines = {c: max(1, math.ceil(len(self.samples[c]) / columns)) for c in classes}
        used_cols = max([min(len(self.samples[c]), columns) for c in classes], default=1)
        sheet = np.full((gap + step * max(sum(lines.values()), 1), label_w + gap + step * used_cols), 32, np.uint8)
        top = gap
        for cls in classes:
            cv2.putText(sheet, cls, (8, top + self.tile // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 255, 1, cv2.LINE_AA)
            for j, (split, img) in enumerate(self.samples[cls]):
                y, x = top + (j // columns) * step, label_w + gap + (j % columns) * step
                sheet[y:y + self.tile, x:x + self.tile] = self._tile(img)
                cv2.putText(sheet, split, (x + 3, y + self.tile - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.35, 255, 1,
                            cv2.LINE_AA)
            top += lines[cls] * step
        path = self.folder / "contact_sheet.png"
        write_png(path, sheet)
        return path
