"""One retraining run: where it keeps things, its steps' records and the config it was started with.

A run is the same whether ``mammoflow retrain --once`` runs its steps in one process or the KFP pipeline runs one
per pod; only the :class:`Layout` differs:

- ``Layout.local`` (``mammoflow retrain``): the local work folder holds ``state.json``, ``history.jsonl``,
  ``records/r0003/``, ``preprocessed/`` and the run folder ``runs/r0003/`` (named by the retrain id; an interrupted
  run is resumed by the next one under the same config); shards and the training run are under the storage root,
  ``retrain/<name>/r0003/{data,train}``.
- ``Layout.pipeline`` (KFP): everything is under ``<storage_root>/retrain/<name>/``: ``state.json``,
  ``preprocessed/`` and one folder per pipeline run, ``<run id>/{records,data,train}`` (a failed run is abandoned;
  the next one starts from the last completed ingest).

A run folder holds ``config.json`` (the config, frozen by the scan), ``steps/<step>.json`` (what each step did),
``verdict.json``/``verdict.md`` and ``result.json``. Every later step loads the frozen config and checks its sha256
against the one the scan recorded (:meth:`RetrainRun.check`).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mammoflow import storage
from mammoflow.errors import ConfigError, InputError
from mammoflow.retrain.state import HISTORY_FILE, RETRAIN_STEPS, STATE_FILE, json_bytes

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class Layout:
    """Where a retraining keeps its state and its runs."""

    home: str  # state.json (and, local, history.jsonl, records/, runs/)
    base: str  # <storage>/retrain/<name>: shards and training runs (pipeline: run folders too)
    pipeline: bool  # True: run folders by pipeline run id under base; False: runs/<retrain id> in the work folder
    name: str
    cache: str | None = None  # local copies (None: the project's cache, $MAMMOFLOW_CACHE)

    @classmethod
    def local(cls, cfg: Any) -> Layout:
        """``mammoflow retrain``: the config's local work folder."""
        work = Path(cfg.work_dir).resolve()
        return cls(home=str(work), base=storage.join(cfg.storage, "retrain", cfg.name), pipeline=False,
                   name=cfg.name, cache=str(work / "cache"))

    @classmethod
    def shared(cls, cfg: Any) -> Layout:
        """The KFP pipeline: everything under the storage root, so each step can run in its own pod."""
        base = storage.join(cfg.storage, "retrain", cfg.name)
        return cls(home=base, base=base, pipeline=True, name=cfg.name)

    @property
    def state_uri(self) -> str:
        return storage.join(self.home, STATE_FILE)

    @property
    def history(self) -> Path | None:
        return None if self.pipeline else Path(self.home) / HISTORY_FILE

    @property
    def preprocessed(self) -> str:
        """The preprocessing output every run of the retraining shares (only new records are processed)."""
        return storage.join(self.home, "preprocessed")

    def baseline(self, last_records: str | None) -> str | None:
        """The records baseline named by the state (a local work folder names it relative to itself)."""
        if not last_records:
            return None
        return last_records if self.pipeline else str(Path(self.home) / last_records)

    def baseline_name(self, records_uri: str) -> str:
        """How the state names a records folder (:meth:`baseline`'s inverse)."""
        return records_uri if self.pipeline else str(Path(records_uri).relative_to(self.home))


def safe_id(run_id: str) -> str:
    if not run_id:
        raise ConfigError("run_id is empty. Fix: the pipeline passes its run id (dsl.PIPELINE_JOB_ID_PLACEHOLDER)")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("._") or "run"


class RetrainRun:
    """One run of a retraining: its layout, ids, frozen config and the records of the steps done so far.

    ``run_id`` names this execution (the KFP pipeline run id; a fresh id for each ``mammoflow retrain`` call);
    ``retrain_id`` (``r0007``) is allocated by the scan when something changed. ``pipeline_run_id`` goes into the
    registry's lineage (the KFP run id, or what the caller of ``retrain_once`` passed).
    """

    def __init__(self, cfg: Any, layout: Layout, run_id: str, *, pipeline_run_id: str | None = None,
                 pipeline: str | None = None, expected_sha256: str | None = None) -> None:
        self.cfg = cfg
        self.layout = layout
        self.run_id = run_id
        self.pipeline_run_id = pipeline_run_id
        self.pipeline = pipeline
        self.retrain_id: str | None = None
        self.config_sha256: str = expected_sha256 or cfg.sha256()
        self.steps: dict[str, dict[str, Any]] = {}
        self.changes: tuple[Any, Any] | None = None  # (baseline, ScanResult) of a scan in this process

    # -------------------------------------------------------------------------------------------- where

    @property
    def key(self) -> str | None:
        """The run folder's name: the pipeline run id, or (local) the retrain id once allocated."""
        return safe_id(self.run_id) if self.layout.pipeline else self.retrain_id

    def folder(self, *parts: str) -> str | None:
        """``<run folder>/<parts>`` (None: a local run that found nothing new has no folder)."""
        if self.key is None:
            return None
        root = self.layout.base if self.layout.pipeline else storage.join(self.layout.home, "runs")
        return storage.join(root, self.key, *parts)

    def at(self, *parts: str) -> str:
        """Like :meth:`folder`, for a run that must have its folder by now."""
        uri = self.folder(*parts)
        if uri is None:
            raise ConfigError("this run has no retrain id yet. Fix: run the scan step first (it allocates one when "
                              "something changed)")
        return uri

    @property
    def records_uri(self) -> str:
        """Where this run's ingest is kept (the next run's baseline once this one ends)."""
        if self.layout.pipeline:
            return self.at("records")
        self.at()
        return storage.join(self.layout.home, "records", str(self.retrain_id))

    def storage_uri(self, what: str) -> str:
        """``data``, ``data-shuffled-labels`` or ``train`` of this run, under the storage root."""
        self.at()
        return storage.join(self.layout.base, str(self.key), what)

    # -------------------------------------------------------------------------------------------- records

    def write_step(self, step: str, record: dict[str, Any]) -> dict[str, Any]:
        """What ``step`` did, as ``steps/<step>.json`` (replaced when the step is retried); returns ``record``."""
        self.steps[step] = dict(record)
        uri = self.folder("steps", f"{step}.json")
        if uri is not None:
            storage.put_bytes(uri, json_bytes(dict(record)))
        return record

    def load_steps(self) -> dict[str, dict[str, Any]]:
        """The records of the steps that finished (read from the run folder)."""
        for step in RETRAIN_STEPS:
            uri = self.folder("steps", f"{step}.json")
            if uri is not None and storage.exists(uri):
                self.steps[step] = json.loads(storage.get_bytes(uri))
        return self.steps

    def step(self, step: str) -> dict[str, Any]:
        if step not in self.steps:
            raise ConfigError(f"run {self.run_id}: the {step} step has no record. Fix: run the retrain pipeline's "
                              "steps in order (each reads what the earlier ones recorded)")
        return dict(self.steps[step])

    # -------------------------------------------------------------------------------------------- frozen config

    def freeze(self) -> None:
        """Write the config into the run folder (once; a retried step finds it and checks it)."""
        uri = self.at(CONFIG_FILE)
        if storage.exists(uri):
            self.check()
            return
        storage.put_bytes(uri, json_bytes(self.cfg.to_dict()))

    def check(self) -> Any:
        """Load the frozen config and check it is the one the run started with; returns it (and keeps it).

        The digest checked is the one the scan recorded (``config_sha256``): a config changed mid-run, in the run
        folder or (KFP) in the config the step was given, is an error naming the fix."""
        from mammoflow.config import from_dict
        from mammoflow.retrain.config import RetrainConfig

        uri = self.folder(CONFIG_FILE)
        if uri is None:  # a local run that found nothing new: nothing was frozen, nothing runs after the scan
            return self.cfg
        if not storage.exists(uri):
            raise InputError(uri, "this run's frozen config is missing", "run the scan step first (it freezes the "
                             "config), or start a new run", code="missing_file")
        frozen = from_dict(RetrainConfig, json.loads(storage.get_bytes(uri)), "retrain config")
        recorded = self.steps.get("scan", {}).get("config_sha256") or self.config_sha256
        if frozen.sha256() != recorded:
            raise InputError(uri, f"the frozen config's sha256 is {frozen.sha256()[:12]}, not the "
                             f"{recorded[:12]} the run {self.run_id} started with (the config changed mid-run)",
                             "a run keeps the config it started with: restore this file, or start a new run",
                             code="config_changed")
        if self.config_sha256 != recorded:
            raise ConfigError(f"run {self.run_id}: the retrain config given to this step (sha256 "
                              f"{self.config_sha256[:12]}) is not the one the run started with ({recorded[:12]}, "
                              f"frozen in {uri}): the config or its overrides changed mid-run. Fix: a run keeps the "
                              "config it started with: restore it for the rest of this run, or start a new run "
                              "(change a retraining's config between runs)")
        self.cfg = frozen
        return frozen

    @classmethod
    def open(cls, cfg: Any, run_id: str, *, layout: Layout | None = None, pipeline: str | None = None) -> RetrainRun:
        """A pipeline run started by the scan step, for a later step given ``cfg`` (the config it was given, to
        find the run and to check against the frozen one): its records, ids and frozen config."""
        run = cls(cfg, layout or Layout.shared(cfg), run_id, pipeline_run_id=run_id, pipeline=pipeline)
        run.load_steps()
        run.retrain_id = run.steps.get("scan", {}).get("retrain_id")
        run.check()
        return run

    def paths(self) -> dict[str, str]:
        """Where this run's outputs are (for its result)."""
        folder = self.folder()
        return {"run": folder} if folder else {}
