"""The sweep table (CSV + Markdown), the best config, and the early-stopping account."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from typing import Any

from mammoflow import storage
from mammoflow.config import dump_yaml
from mammoflow.sweep.spec import SweepSpec, cell_name, split_cell

log = logging.getLogger(__name__)


def trial_rows(spec: SweepSpec, grid, max_epochs: int) -> list[dict[str, Any]]:
    """One row per trial: its axes, epochs run, whether the scheduler stopped it, its metrics."""
    rows = []
    for result in grid:
        params = result.config or {}
        cell = {**params.get("cell", {}), **{k: v for k, v in params.items() if k != "cell"}}
        metrics = result.metrics or {}
        epochs = int(metrics.get("training_iteration", 0) or 0)
        history = result.metrics_dataframe
        best = None
        if history is not None and spec.metric in history:
            col = history[spec.metric]
            best = float(col.min() if spec.mode == "min" else col.max())
        status = "failed" if result.error else ("stopped_early" if epochs < max_epochs else "finished")
        rows.append({
            "trial": cell_name(cell), "status": status, "epochs": epochs,
            f"best_{spec.metric}": best, "last_val_loss": metrics.get("val_loss"),
            "last_val_accuracy": metrics.get("val_accuracy"),
            "time_s": round(float(metrics.get("time_total_s", 0.0) or 0.0), 1),
            **{f"axis:{k}": json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in cell.items()},
            "_cell": cell,
        })
    key = f"best_{spec.metric}"
    worst = math.inf if spec.mode == "min" else -math.inf
    rows.sort(key=lambda r: (r[key] if r[key] is not None else worst) * (1 if spec.mode == "min" else -1))
    return rows


def write_results(spec: SweepSpec, grid, out_uri: str, *, max_epochs: int, wall_time_s: float,
                  n_cells: int) -> dict[str, Any]:
    from mammoflow.training.config import load_train_config

    rows = trial_rows(spec, grid, max_epochs)
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns and not c.startswith("_")]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    storage.put_bytes(storage.join(out_uri, "results.csv"), buf.getvalue().encode())
    md = [f"# Sweep {spec.name}", "", spec.description, "",
          "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    md += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    storage.put_bytes(storage.join(out_uri, "results.md"), ("\n".join(md) + "\n").encode())

    trial_epochs = sum(r["epochs"] for r in rows)
    summary = {
        "sweep": spec.name, "trials": len(rows), "cells": n_cells,
        "finished": sum(r["status"] == "finished" for r in rows),
        "stopped_early": sum(r["status"] == "stopped_early" for r in rows),
        "failed": sum(r["status"] == "failed" for r in rows),
        "trial_epochs": trial_epochs, "full_grid_trial_epochs": len(rows) * max_epochs,
        "trial_epochs_saved": len(rows) * max_epochs - trial_epochs,
        "wall_time_s": round(wall_time_s, 1), "metric": spec.metric, "mode": spec.mode,
        "best_trial": rows[0]["trial"] if rows else None,
    }
    ok = [r for r in rows if r["status"] != "failed" and r[f"best_{spec.metric}"] is not None]
    if ok:
        best_cfg = load_train_config(spec.base, split_cell(ok[0]["_cell"])[1]).to_dict()
        storage.put_bytes(storage.join(out_uri, "best_config.yaml"),
                          (f"# best trial of sweep {spec.name}: {ok[0]['trial']}\n" + dump_yaml(best_cfg)).encode())
    storage.put_bytes(storage.join(out_uri, "summary.json"), (json.dumps(summary, indent=2) + "\n").encode())
    log.info("sweep %s: %d trials, %d stopped early, %d failed, %d of %d trial-epochs saved", spec.name, len(rows),
             summary["stopped_early"], summary["failed"], summary["trial_epochs_saved"],
             summary["full_grid_trial_epochs"])
    return summary


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value).replace("|", "\\|")
