"""The sweep table (CSV + Markdown), the best config, and the early-stopping account (``summary.json``)."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from typing import Any

from mammoflow import storage
from mammoflow.config import dump_yaml
from mammoflow.sweep.spec import SweepSpec, cell_name, trial_cell, trial_config

log = logging.getLogger(__name__)

ATTEMPTS_DIR = "attempts"  # RUN/attempts/: one record per start of a trial's process (sweep.runner.record_attempt)
PAUSES_DIR = "pauses"  # RUN/pauses/: one marker per pause of the trial by scheduler sha (sweep.halving)


def run_history(run_uri: str) -> list[dict[str, Any]]:
    """The epochs a trial's run folder holds: ``history.json``, or the resume state of a run that did not finish
    (a remote run folder gets its history.json when ``train()`` returns; its checkpoint state every epoch)."""
    from mammoflow.training.run_folder import STATE_FILE

    for rel, key in (("history.json", None), (STATE_FILE, "history")):
        uri = storage.join(run_uri, rel)
        if storage.exists(uri):
            data = json.loads(storage.get_bytes(uri))
            return list(data if key is None else data.get(key, []))
    return []


def read_attempts(run_uri: str) -> list[dict[str, Any]]:
    """The attempt records of a trial's run folder, oldest first: which Ray node ran it, after which epoch."""
    uris = sorted(u for u in storage.list(storage.join(run_uri, ATTEMPTS_DIR)) if u.endswith(".json"))
    return [json.loads(storage.get_bytes(u)) for u in uris]


def write_pause_marker(run_uri: str, epoch: int) -> None:
    """Mark that the scheduler paused the trial after ``epoch``: its next start resumes it (not a retry)."""
    doc = {"epoch": epoch, "paused_at": round(time.time(), 3)}
    storage.put_bytes(storage.join(run_uri, PAUSES_DIR, f"{epoch}-{time.time_ns()}.json"),
                      (json.dumps(doc) + "\n").encode())


def resumes_pause(run_uri: str, epochs_done: int, attempts: list[dict[str, Any]]) -> bool:
    """Whether a start of the trial after ``epochs_done`` epochs resumes a pause: a pause marker at that epoch
    that no earlier attempt (``attempts``) has claimed. A start after a failure finds none (or one claimed)."""
    prefix = f"{epochs_done}-"
    pauses = sum(u.rsplit("/", 1)[-1].startswith(prefix) and u.endswith(".json")
                 for u in storage.list(storage.join(run_uri, PAUSES_DIR)))
    return pauses > sum(a.get("resumes_pause") == epochs_done for a in attempts)


def node_account(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the trials ran: trials per Ray node (by the node of each trial's last attempt) and the trials that
    were started more than once other than to resume a pause (a node or process died, or the driver resumed),
    with the nodes of all their attempts in order."""
    by_node: dict[str, int] = {}
    for row in rows:
        if row["_attempts"]:
            node = row["_attempts"][-1]["node_id"]
            by_node[node] = by_node.get(node, 0) + 1
    retried = {r["trial"]: [a["node_id"] for a in r["_attempts"]] for r in rows
               if sum("resumes_pause" not in a for a in r["_attempts"]) > 1}
    return {"trials_by_node": dict(sorted(by_node.items())), "retried_trials": retried}


def trial_rows(spec: SweepSpec, grid, cells: list[dict[str, Any]], max_epochs: int,
               trials_uri: str | None = None) -> list[dict[str, Any]]:
    """One row per trial: its axes, epochs run, how it ended, its metrics; sorted best first by the metric.

    ``status`` is ``finished`` (every epoch of its config ran and its model was written), ``stopped_early`` (the
    scheduler ended it) or ``failed``. ``epochs`` and ``best_<metric>`` (the best value over its epochs: the epoch
    whose model ``train()`` keeps) come from the trial's run folder under ``trials_uri`` when given: it holds every
    epoch, also those trained before a driver restart, which Ray's own record of a restarted trial lacks.
    """
    key = f"best_{spec.metric}"
    rows = []
    for result in grid:
        cell = trial_cell(result.config or {}, cells)
        metrics = result.metrics or {}
        name = metrics.get("trial_name") or cell_name(cell)
        history = run_history(storage.join(trials_uri, name)) if trials_uri else []
        attempts = read_attempts(storage.join(trials_uri, name)) if trials_uri else []
        values = [float(r[spec.metric]) for r in history if isinstance(r.get(spec.metric), (int, float))]
        if not values and result.metrics_dataframe is not None and spec.metric in result.metrics_dataframe:
            values = [float(v) for v in result.metrics_dataframe[spec.metric].dropna()]
        best = (min(values) if spec.mode == "min" else max(values)) if values else None
        if result.error:
            status = "failed"
        else:
            status = "finished" if metrics.get("run_finished") else "stopped_early"
        rows.append({
            "trial": name, "status": status,
            "epochs": len(history) if history else int(metrics.get("epoch", 0) or 0),
            "total_epochs": int(metrics.get("total_epochs", max_epochs) or max_epochs),
            key: best, "last_val_loss": metrics.get("val_loss"), "last_val_accuracy": metrics.get("val_accuracy"),
            "time_s": round(float(metrics.get("time_total_s", 0.0) or 0.0), 1), "attempts": len(attempts),
            **{f"axis:{k}": json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in cell.items()},
            "_cell": cell, "_error": str(result.error) if result.error else None, "_attempts": attempts,
        })
    worst = math.inf
    sign = 1 if spec.mode == "min" else -1
    rows.sort(key=lambda r: (r[key] * sign if r[key] is not None else worst, r["trial"]))
    return rows


def write_results(spec: SweepSpec, grid, out_uri: str, *, base: dict[str, Any], cells: list[dict[str, Any]],
                  max_epochs: int, wall_time_s: float) -> dict[str, Any]:
    """Write results.csv/.md, summary.json and best_config.yaml into ``out_uri``; return the summary."""
    rows = trial_rows(spec, grid, cells, max_epochs, storage.join(out_uri, "trials"))
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns and not c.startswith("_")]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    storage.put_bytes(storage.join(out_uri, "results.csv"), buf.getvalue().encode())
    md = [f"# Sweep {spec.name}", ""] + ([spec.description.strip(), ""] if spec.description.strip() else []) + [
        f"Ranked by {spec.metric} ({spec.mode}) on the validation split.", "",
        "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    md += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    storage.put_bytes(storage.join(out_uri, "results.md"), ("\n".join(md) + "\n").encode())

    trial_epochs = sum(r["epochs"] for r in rows)
    full = sum(r["total_epochs"] for r in rows)
    finished = [r for r in rows if r["status"] == "finished" and r[f"best_{spec.metric}"] is not None]
    best = finished[0] if finished else None
    summary = {
        "sweep": spec.name, "trials": len(rows), "cells": len(cells),
        "finished": sum(r["status"] == "finished" for r in rows),
        "stopped_early": sum(r["status"] == "stopped_early" for r in rows),
        "failed": sum(r["status"] == "failed" for r in rows),
        "trial_epochs": trial_epochs, "full_grid_trial_epochs": full, "trial_epochs_saved": full - trial_epochs,
        "wall_time_s": round(wall_time_s, 1), "trial_time_s": round(sum(r["time_s"] for r in rows), 1),
        "metric": spec.metric, "mode": spec.mode, "scheduler": spec.scheduler.get("name", "asha"),
        "best_trial": best["trial"] if best else None,
        f"best_{spec.metric}": best[f"best_{spec.metric}"] if best else None,
        "best_run": storage.join(out_uri, "trials", best["trial"]) if best else None,
        "failures": {r["trial"]: r["_error"] for r in rows if r["_error"]},
        **node_account(rows),
    }
    if best is not None:
        dataset, config = trial_config(base, best["_cell"])
        header = (f"# Best finished trial of sweep {spec.name}: {best['trial']} "
                  f"({spec.metric} {best[f'best_{spec.metric}']:.4g}, dataset {dataset!r}).\n"
                  f"# Train it again: mammoflow train --config best_config.yaml --data <{dataset} dataset> --out ...\n")
        storage.put_bytes(storage.join(out_uri, "best_config.yaml"), (header + dump_yaml(config.to_dict())).encode())
    storage.put_bytes(storage.join(out_uri, "summary.json"), (json.dumps(summary, indent=2) + "\n").encode())
    log.info("sweep %s: %d trials, %d stopped early, %d failed; %d of %d trial-epochs run (%d saved)", spec.name,
             len(rows), summary["stopped_early"], summary["failed"], trial_epochs, full, summary["trial_epochs_saved"])
    return summary


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):  # 0.5652, 0.75, 18.7
        return (f"{value:.4f}" if abs(value) < 1000 else f"{value:.1f}").rstrip("0").rstrip(".")
    return str(value).replace("|", "\\|")
