"""One training run of a reproduction's cell, reused when it already finished (a re-run resumes, never redoes)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def train_cell(config, dataset: str, run: Path, cache_dir: str | None) -> dict[str, Any]:
    """Train ``config`` on ``dataset`` into ``run`` unless a finished run is there: where it is, the wall time
    (``None`` when reused) and whether it was reused."""
    from mammoflow.training.loop import train

    finished = (run / "model.keras").exists() and (run / "run.json").exists() and \
        json.loads((run / "run.json").read_text()).get("status") == "finished"
    t0 = time.perf_counter()
    if not finished:
        train(config, dataset, str(run), cache_dir=cache_dir)
    return {"run": str(run), "train_wall_s": round(time.perf_counter() - t0, 1) if not finished else None,
            "resumed_finished_run": finished}
