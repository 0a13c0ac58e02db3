"""Run a whole pipeline on this machine with ``kfp.local`` (``mammoflow pipeline run --local``).

The very components and pipeline definitions that run on the cluster run here as subprocesses of the current
Python (``SubprocessRunner(use_venv=False)``: mammoflow is importable, nothing is installed). Under ``root``::

    root/kfp/       KFP's pipeline root: one folder per run, step and output artifact
    root/store/     the object store (storage_root): phantoms, shards, training run folders, sweeps
    root/cache/     local copies of remote inputs and verified shard files
    root/pipeline.log   everything the steps printed (the terminal shows when each step starts and ends)
    root/report.html (root/report.md for retrain), root/summary.json    the last run's report and summary

The retraining pipeline keeps its state under the storage root, so running it again with the same ``root`` (or
``storage_root``) is the next scheduled run: only what is new in the watched folder is ingested.

A sweep starts a local Ray inside its step. kfp.local ignores resources, GPUs and node selectors; it would honour
the retries with their minutes of back-off, so a local run is built without them and a failing step fails at once.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from mammoflow import storage
from mammoflow.errors import MammoflowError
from mammoflow.storage.copies import CACHE_ENV

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
MARKDOWN_REPORT_FILE = "report.md"
LOG_FILE = "pipeline.log"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # kfp.local colours task names for terminals
_PROGRESS = re.compile(r"Executing task|finished with status|Skipping")
_CAUSE = re.compile(r"^\s*((?:mammoflow\.)?[\w.]*(?:Error|Exception)): (.+)$")


class LocalRunError(MammoflowError):
    """A step of a local pipeline run failed (its log is printed above the error)."""


def local_params(pipeline: Any, root: Path, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters of a local run: ``params`` checked against the pipeline's, the storage root under
    ``root``, the metrics endpoint off (a laptop needs no scrape target) and local data paths made absolute."""
    from mammoflow.pipelines import check_params

    out = dict(check_params(pipeline, params))
    out.setdefault("storage_root", str(root / "store"))
    if "metrics_port" in (pipeline.component_spec.inputs or {}):
        out.setdefault("metrics_port", 0)
    for key in ("data_root", "config"):  # local paths made absolute: the steps may run from another folder
        value = out.get(key)
        if isinstance(value, str) and value and not storage.is_remote(value):
            out[key] = str(Path(value).expanduser().absolute())
    return out


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables for the steps (they inherit this process's environment), then restore."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _StepLog(io.TextIOBase):
    """What kfp.local prints (its own lines and every step's output): all of it into the log file, and to
    ``echo`` only the lines saying a step started, ended or was skipped (everything with ``verbose``)."""

    def __init__(self, log_file: TextIO, echo: TextIO, verbose: bool):
        self.log_file, self.echo, self.verbose = log_file, echo, verbose
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log_file.write(_ANSI.sub("", text))
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            if self.verbose or _PROGRESS.search(line):
                self.echo.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.log_file.flush()
        self.echo.flush()


def failure_cause(log_path: Path) -> str | None:
    """The last exception line a step printed (``mammoflow.errors.InputError: ... Fix: ...``), if any."""
    cause = None
    for line in log_path.read_text(errors="replace").splitlines():
        match = _CAUSE.match(line)
        if match:
            cause = f"{match.group(1).rsplit('.', 1)[-1]}: {match.group(2)}"
    return cause


def run_local(name: str, root: str | os.PathLike[str], params: dict[str, Any] | None = None, *,
              verbose: bool = False) -> dict[str, Any]:
    """Run pipeline ``name`` (training, sweep, retrain) end to end under ``root``; returns the run's summary (also
    written to ``root/summary.json``): where the report is, the headline metrics and the wall time.

    Every step's output goes to ``root/pipeline.log``; the terminal (stderr) gets one line per step started or
    finished, or everything with ``verbose``.
    """
    from kfp import local

    from mammoflow.pipelines import build_pipeline
    from mammoflow.pipelines.options import PipelineOptions

    root = Path(root).expanduser().absolute()
    pipeline = build_pipeline(name, PipelineOptions.from_env(retries=False))
    args = local_params(pipeline, root, dict(params or {}))
    root.mkdir(parents=True, exist_ok=True)
    local.init(local.SubprocessRunner(use_venv=False), pipeline_root=str(root / "kfp"), raise_on_error=True)
    log.info("running pipeline %s locally under %s with %s", name, root, args)
    started = time.perf_counter()
    log_path = root / LOG_FILE
    with warnings.catch_warnings(), _environ(**{CACHE_ENV: os.environ.get(CACHE_ENV, str(root / "cache"))}), \
            open(log_path, "w", encoding="utf-8") as log_file, \
            contextlib.redirect_stdout(_StepLog(log_file, sys.stderr, verbose)):
        # The steps run on the project's image name, which kfp.local cannot tell is a Python image.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
        # Resources, GPUs and node selectors are for the cluster; kfp.local says so once per step.
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        try:
            task = pipeline(**args)
        except RuntimeError as exc:
            failed = exc
        else:
            failed = None
    if failed is not None:
        cause = failure_cause(log_path)
        raise LocalRunError(f"local run of pipeline {name!r} failed: {_ANSI.sub('', str(failed))}"
                            f"{f' Cause: {cause}' if cause else ''} (full log: {log_path})")
    seconds = time.perf_counter() - started
    # training and sweep end in an HTML report; retrain in a Markdown summary of the run's outcome.
    artifact = task.outputs["report"] if "report" in task.outputs else task.outputs["summary"]
    report = root / (MARKDOWN_REPORT_FILE if artifact.schema_title == "system.Markdown" else REPORT_FILE)
    shutil.copyfile(artifact.path, report)
    summary: dict[str, Any] = {
        "pipeline": name, "status": "succeeded", "report": str(report),
        "report_artifact": artifact.path, "storage_root": args["storage_root"],
        "pipeline_root": str(root / "kfp"), "log": str(log_path), "seconds": round(seconds, 1),
        "metrics": dict(task.outputs["metrics"].metadata),
    }
    storage.atomic_write_text(root / SUMMARY_FILE, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
