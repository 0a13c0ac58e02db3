"""``retrain_once``: the retraining pipeline on one machine, step by step, resumable.

incremental ingest -> preprocess -> build-dataset (splits kept) -> train (warm start from the champion, or from
scratch) -> evaluate challenger AND champion on the same evaluation split -> bless -> register (+ promote when
blessed) -> push metrics. The KFP retraining pipeline runs the same step functions (:func:`ingest_step`,
:func:`preprocess_step`, :func:`build_step`, :func:`train_step`, :func:`evaluate_step`, :func:`bless_step`,
:func:`register_step`), one per pod.

Work folder (``work_dir``, local)::

    state.json                 next retrain id, the records baseline, the retrain in progress, metric totals
    history.jsonl              one line per run (nothing new, blessed, refused, failed)
    records/r0003/             incremental ingest output (records + split_plan.json + ingest_delta.json)
    preprocessed/              one shared preprocessing output, resumed per record (only new images are done)
    runs/r0003/eval/{challenger,champion}/   evaluate outputs;  runs/r0003/verdict.json, verdict.md, result.json
    cache/                     local copies of shards and models

and under ``storage_root`` (local or ``gs://``): ``retrain/<name>/r0003/data`` (shards) and ``.../train`` (the run).

A run that stops half-way (killed, preempted, an error) is resumed by the next call with the same config: every
step either finds its output complete or resumes it. With another config it is abandoned (recorded) and a new one
starts from the last completed ingest. ``nothing new`` (no file changed, or no record added, changed or removed)
stops before any training and is recorded and pushed like any other outcome.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mammoflow import storage
from mammoflow.errors import ConfigError, MammoflowError
from mammoflow.records import atomic_write_text
from mammoflow.registry import ModelRegistry, ModelVersion, iso, utc_now, version_number, who
from mammoflow.retrain.blessing import Verdict, bless, paired_rows, resolve_level
from mammoflow.retrain.config import RetrainConfig
from mammoflow.retrain.ingest import IngestDelta, incremental_ingest, scan_changes
from mammoflow.retrain.push import push_metrics, retrain_values

log = logging.getLogger(__name__)

Status = Literal["nothing_new", "blessed", "refused", "failed"]
STATE_FILE = "state.json"
HISTORY_FILE = "history.jsonl"
LOCK_FILE = ".retrain.lock"


# ------------------------------------------------------------------------------------------------- state


@dataclass
class RetrainState:
    """What a retraining work folder remembers between runs (``state.json``)."""

    token: str = ""  # random, per work folder: makes registry idempotency keys unique across work folders
    next_id: int = 1
    last_records: str | None = None  # the last completed ingest (relative to the work folder)
    in_progress: dict[str, Any] | None = None  # {"id", "config_sha256", "stage", "started"}
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, work: Path) -> RetrainState:
        path = work / STATE_FILE
        if not path.exists():
            return cls(token=secrets.token_hex(8))
        data = json.loads(path.read_text())
        return cls(**{k: v for k, v in data.items() if k in {f.name for f in dataclasses.fields(cls)}})

    def save(self, work: Path) -> None:
        atomic_write_text(work / STATE_FILE, json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n")

    def stage(self, work: Path, stage: str) -> None:
        assert self.in_progress is not None
        self.in_progress["stage"] = stage
        self.save(work)


_STAGES = ("ingested", "trained", "judged", "registered", "recorded", "promoted")


def _done(state: RetrainState, stage: str) -> bool:
    current = (state.in_progress or {}).get("stage")
    return current in _STAGES and _STAGES.index(current) >= _STAGES.index(stage)


@contextlib.contextmanager
def work_lock(work: Path) -> Iterator[None]:
    """One retrain at a time per work folder (a second process gets a clear error, not a corrupted state)."""
    import fcntl

    work.mkdir(parents=True, exist_ok=True)
    with open(work / LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{work}: another retrain is running on this work folder. Fix: wait for it, or "
                              "give this one another work_dir") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------------- result


@dataclass
class RetrainResult:
    """What one :func:`retrain_once` did (also written as ``runs/<id>/result.json`` and to ``history.jsonl``)."""

    status: Status
    retrain_id: str | None = None
    ingest: dict[str, Any] | None = None  # IngestDelta.to_dict()
    version: str | None = None  # the registered challenger
    promoted: bool = False
    champion_before: str | None = None
    champion_after: str | None = None
    verdict: dict[str, Any] | None = None  # Verdict.to_dict()
    paths: dict[str, str] = field(default_factory=dict)
    started: str = ""
    finished: str = ""
    seconds: float = 0.0
    pushed: bool = False
    error: str | None = None

    @property
    def nothing_new(self) -> bool:
        return self.status == "nothing_new"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line for people (the CLI prints it)."""
        if self.status == "nothing_new":
            return "nothing new: no new or changed data since the last retrain; no model trained"
        if self.status == "failed":
            return f"retrain {self.retrain_id or ''} failed: {self.error}"
        head = (f"retrain {self.retrain_id}: {self.version} {'BLESSED' if self.status == 'blessed' else 'NOT BLESSED'}"
                f"; champion {self.champion_before or '(none)'} -> {self.champion_after or '(none)'}")
        return head + (f". {self.verdict['reason']}" if self.verdict else "")


# ------------------------------------------------------------------------------------------------- steps


def dataset_config(cfg: RetrainConfig) -> Any:
    """The dataset config with the splits build-dataset must keep (``Record.split`` from the ingest's plan)."""
    from mammoflow.dataset.build import DatasetConfig

    dcfg = DatasetConfig.load(cfg.dataset)
    if dcfg.splits.k_folds:
        raise ConfigError(f"dataset {cfg.dataset!r}: k_folds is not supported for retraining (one fixed evaluation "
                          "split). Fix: use a dataset config without k_folds")
    return dcfg


def ingest_step(cfg: RetrainConfig, previous_records: str | Path | None, out_dir: str | Path, *,
                scan: Any = None) -> IngestDelta:
    """Incremental ingest of the watched source (see :func:`mammoflow.retrain.ingest.incremental_ingest`)."""
    return incremental_ingest(cfg.source.name, cfg.source.options(), previous_records, out_dir,
                              split_config=dataset_config(cfg).splits, freeze_test=cfg.evaluation.freeze, scan=scan)


def preprocess_step(cfg: RetrainConfig, records_dir: str | Path, out_dir: str | Path) -> Any:
    """Preprocess into a folder shared by every retrain: records done before are reused, only new ones run.

    The folder belongs to this retrain config, so a changed preprocess chain replaces its images (each image
    records its config hash, so every one is preprocessed again) rather than being refused as foreign work."""
    from mammoflow.preprocess.run import preprocess_records

    return preprocess_records(records_dir, cfg.preprocess, out_dir, overwrite=True)


def build_step(cfg: RetrainConfig, preprocessed_dir: str | Path, data_uri: str) -> dict[str, Any]:
    """Shards for this retrain, every record in the split the ingest's plan gave it; returns the manifest."""
    from mammoflow.dataset.build import build_dataset

    dcfg = dataset_config(cfg)
    dcfg.splits.keep_existing = True  # Record.split carries the plan: nobody moves
    dcfg.splits.on_leak = "error"
    return build_dataset(preprocessed_dir, dcfg, data_uri).manifest


def split_fingerprint(manifest: Mapping[str, Any], split: str) -> str:
    """sha256 of one split's shard list (paths and content hashes): equal fingerprints mean the same examples,
    byte for byte, whichever build wrote them (shards are deterministic, see :mod:`mammoflow.dataset.shards`)."""
    import hashlib

    if split not in manifest.get("splits", {}):
        raise ConfigError(f"the dataset has no {split!r} split to evaluate on (has {sorted(manifest.get('splits', {}))})"
                          ". Fix: set evaluation.split, or add data so that the split is not empty")
    shards = sorted((s["path"], s["sha256"]) for s in manifest["splits"][split]["shards"])
    return hashlib.sha256(json.dumps(shards).encode()).hexdigest()


def warm_start_weights(cfg: RetrainConfig, champion: ModelVersion | None, train_cfg: Any) -> str | None:
    """The champion's weights URI when warm starting is on and the champion's model matches the config's."""
    if not cfg.warm_start or champion is None:
        return None
    if champion.weights_uri is None:
        log.warning("warm start: champion %s has no model.weights.h5; training from scratch", champion.version)
        return None
    from mammoflow.training.config import load_train_config

    with _tempdir() as tmp:
        theirs = load_train_config(str(storage.get_file(storage.join(champion.uri, "config.yaml"),
                                                        Path(tmp) / "config.yaml")))
    same = (theirs.model.name, theirs.model.params, theirs.data.channels, theirs.data.patch_size,
            theirs.data.mode, theirs.data.image_size) == (train_cfg.model.name, train_cfg.model.params,
                                                         train_cfg.data.channels, train_cfg.data.patch_size,
                                                         train_cfg.data.mode, train_cfg.data.image_size)
    if not same:
        raise ConfigError(f"warm start: the champion {champion.version} is a {theirs.model.name} "
                          f"{theirs.model.params} on {theirs.data.patch_size}px x {theirs.data.channels} inputs; this "
                          "config trains another model, so its weights cannot be loaded. Fix: set warm_start: false "
                          "for this retrain (a model change is an intended change: promote or force it with a reason)")
    return champion.weights_uri


@contextlib.contextmanager
def _tempdir() -> Iterator[str]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mammoflow-retrain-") as tmp:
        yield tmp


def train_step(cfg: RetrainConfig, data_uri: str, run_uri: str, *, init_weights: str | None,
               cache_dir: str | Path | None = None) -> Any:
    """Train the challenger (resumes an interrupted run) and save its whole-model weights for later warm starts."""
    from mammoflow.training.config import load_train_config
    from mammoflow.training.loop import train

    overrides = dict(cfg.train_overrides)
    if init_weights:
        overrides["model.weights"] = init_weights
    train_cfg = load_train_config(cfg.train, overrides)
    result = train(train_cfg, data_uri, run_uri, cache_dir=cache_dir)
    weights_uri = storage.join(run_uri, "model.weights.h5")
    if not storage.exists(weights_uri):
        import keras

        with _tempdir() as tmp:
            model = keras.models.load_model(storage.get_file(storage.join(run_uri, "model.keras"),
                                                             Path(tmp) / "model.keras"), compile=False)
            local = Path(tmp) / "model.weights.h5"
            model.save_weights(str(local))
            storage.put_file(local, weights_uri, move=True)
    return result


def evaluate_step(cfg: RetrainConfig, model_uri: str, data_uri: str, out_dir: str | Path, *,
                  split_sha256: str, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Evaluate one model on the evaluation split; the report records which split (name and fingerprint)."""
    from mammoflow.evaluation.evaluate import evaluate

    e = cfg.evaluation
    report = evaluate(model_uri, data_uri, out_dir, split=e.split, method=e.method, n_bootstrap=e.n_bootstrap,
                      seed=e.seed, cache_dir=cache_dir)
    report["evaluation_split"] = {"split": e.split, "split_sha256": split_sha256, "data_uri": data_uri}
    return report


def bless_step(cfg: RetrainConfig, challenger_eval: str | Path, champion_eval: str | Path | None,
               challenger_report: Mapping[str, Any], champion_report: Mapping[str, Any] | None, *,
               challenger: str, champion: str | None, force_reason: str | None = None,
               by: str | None = None) -> Verdict:
    """The verdict, with paired bootstrap CIs from both evaluations' predictions on every judged level."""
    policy = cfg.blessing
    paired = {}
    if champion_eval is not None and policy.paired_test:
        level = resolve_level(challenger_report, policy.level)
        for lvl in sorted({r.level or level for r in policy.rules}):
            paired[lvl] = paired_rows(Path(challenger_eval) / "predictions.parquet",
                                      Path(champion_eval) / "predictions.parquet", lvl)
    return bless(challenger_report, champion_report, policy, paired=paired, force=force_reason is not None,
                 force_reason=force_reason, by=who(by) if force_reason else by, challenger=challenger,
                 champion=champion)


def register_step(registry: ModelRegistry, run_uri: str, eval_dir: str | Path, verdict: Verdict, *,
                  evaluation: Mapping[str, Any], lineage: Mapping[str, Any], key: str,
                  by: str | None = None) -> ModelVersion:
    """Register the challenger (blessed or not: a refused version stays for audit, never as champion)."""
    return registry.register(run_uri, evaluation_uri=str(eval_dir), evaluation=evaluation, lineage=lineage,
                             verdict=verdict.to_dict(), verdict_markdown=verdict.to_markdown(), by=by,
                             reason=f"challenger of retrain {lineage.get('retrain_id')}", key=key)


def record_verdict(registry: ModelRegistry, version: str, verdict: Verdict, by: str | None = None) -> None:
    """The verdict's audit event: ``bless``, ``refuse`` or ``force_bless`` (an override, with its reason)."""
    action = "force_bless" if verdict.forced else ("bless" if verdict.blessed else "refuse")
    registry.record(action, reason=verdict.force_reason if verdict.forced else verdict.reason,  # type: ignore[arg-type]
                    by=verdict.forced_by if verdict.forced else by, version=version,
                    details={"kind": verdict.kind, "champion": verdict.champion,
                             "would_have_blessed": verdict.would_have_blessed,
                             "verdict_reason": verdict.reason,
                             "deltas": {k: {x: d.get(x) for x in ("challenger", "champion", "delta", "passed")}
                                        for k, d in verdict.deltas.items()}})


# ------------------------------------------------------------------------------------------------- the run


def _rel(work: Path, path: Path) -> str:
    return os.path.relpath(path, work)


def _history(work: Path, result: RetrainResult) -> None:
    line = {k: v for k, v in result.to_dict().items() if k not in ("verdict", "ingest")}
    line["reason"] = (result.verdict or {}).get("reason")
    if result.ingest:
        line["ingest"] = {k: result.ingest.get(k) for k in ("new_records", "changed_records", "removed_records",
                                                            "quarantined_new", "nothing_new")}
    with open(work / HISTORY_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line, sort_keys=True, default=str) + "\n")


def update_metrics(state: RetrainState, result: RetrainResult, registry: ModelRegistry | None,
                   rules: list[str]) -> None:
    """Fold one run's outcome into the state's Prometheus values (the CLI loop and the KFP pipeline alike);
    ``rules``: the judged metrics (:func:`rule_keys`) whose champion values are exported."""
    m = state.metrics
    now = time.time()
    m.setdefault("mammoflow_retrain_first_run_timestamp_seconds", now)
    m["mammoflow_retrain_last_run_timestamp_seconds"] = now
    m["mammoflow_retrain_last_duration_seconds"] = result.seconds
    m["mammoflow_retrain_last_run_nothing_new"] = 1.0 if result.status == "nothing_new" else 0.0
    m["mammoflow_retrain_last_run_failed"] = 1.0 if result.status == "failed" else 0.0
    runs = m.setdefault("runs_by_status", {})
    runs[result.status] = runs.get(result.status, 0) + 1
    if result.status == "nothing_new":
        m["mammoflow_retrain_nothing_new_runs_total"] = m.get("mammoflow_retrain_nothing_new_runs_total", 0) + 1
    if result.ingest and "mode" in result.ingest:  # gauges of the last ingest; a run stopped by the scan keeps them
        ingested = result.ingest["new_records"] + result.ingest["changed_records"]
        quarantined = result.ingest["quarantined_new"] + result.ingest.get("preprocess_quarantined", 0)
        m["mammoflow_retrain_last_ingest_records"] = ingested
        m["mammoflow_retrain_last_ingest_quarantined"] = quarantined
        m["mammoflow_retrain_table_records"] = result.ingest["total_records"]
        m["mammoflow_retrain_records_ingested_total"] = m.get("mammoflow_retrain_records_ingested_total", 0) + ingested
        m["mammoflow_retrain_records_quarantined_total"] = \
            m.get("mammoflow_retrain_records_quarantined_total", 0) + quarantined
    if result.status in ("blessed", "refused"):
        m["mammoflow_retrain_last_success_timestamp_seconds"] = now
        m["mammoflow_retrain_last_verdict_blessed"] = 1.0 if result.status == "blessed" else 0.0
        m["mammoflow_retrain_last_verdict_forced"] = 1.0 if (result.verdict or {}).get("forced") else 0.0
        m["challenger_metrics"] = {k: d.get("challenger") for k, d in (result.verdict or {}).get("deltas", {}).items()}
    champion = registry.champion() if registry is not None else None
    if champion is not None:
        m["mammoflow_retrain_champion_version"] = version_number(champion.version)
        metrics = champion.info.get("metrics") or {}
        m["champion_metrics"] = {k: (metrics.get(k) or {}).get("value") for k in rules if k in metrics}


def _push(cfg: RetrainConfig, state: RetrainState) -> bool:
    if not cfg.push.gateway:
        return False
    try:
        push_metrics(cfg.push.gateway, cfg.push.job, retrain_values(state.metrics), grouping_key={"retrain": cfg.name},
                     timeout=cfg.push.timeout)
        return True
    except OSError as exc:  # an unreachable gateway must not fail a finished retrain; the alerts will notice
        log.error("could not push metrics to %s: %s", cfg.push.gateway, exc)
        return False


def rule_keys(cfg: RetrainConfig, registry: ModelRegistry) -> list[str]:
    """The judged metrics as "level.metric" (the level the champion was judged at, when the policy says primary)."""
    champion = registry.champion()
    judged = (champion.evaluation.get("level") if champion else None) or "roi"
    level = judged if cfg.blessing.level == "primary" else cfg.blessing.level
    keys = [f"{r.level or level}.{r.metric}" for r in cfg.blessing.rules]
    keys += [k if "." in k else f"{level}.{k}" for k in cfg.blessing.minimums]
    return sorted(set(keys))


def retrain_once(cfg: RetrainConfig, *, force_bless_reason: str | None = None, by: str | None = None,
                 pipeline_run_id: str | None = None) -> RetrainResult:
    """One retraining run (see the module docstring). ``force_bless_reason``: bless the challenger whatever the
    verdict (an intended change, e.g. a new label definition), recorded in the audit log with ``by`` and the reason."""
    work = Path(cfg.work_dir).resolve()
    with work_lock(work):
        state = RetrainState.load(work)
        registry = ModelRegistry(cfg.registry_uri)
        started = utc_now()
        t0 = time.perf_counter()
        result = RetrainResult(status="failed", started=iso(started))
        try:
            result = _run(cfg, state, registry, work, result, force_bless_reason, by, pipeline_run_id)
        except BaseException as exc:
            result.status, result.error = "failed", f"{type(exc).__name__}: {exc}"
            result.finished, result.seconds = iso(utc_now()), round(time.perf_counter() - t0, 2)
            if not isinstance(exc, KeyboardInterrupt):
                update_metrics(state, result, None, [])
                state.save(work)
                _history(work, result)
                result.pushed = _push(cfg, state)
            raise
        result.finished, result.seconds = iso(utc_now()), round(time.perf_counter() - t0, 2)
        update_metrics(state, result, registry, rule_keys(cfg, registry))
        state.save(work)
        _history(work, result)
        result.pushed = _push(cfg, state)
        if result.retrain_id:
            atomic_write_text(work / "runs" / result.retrain_id / "result.json",
                              json.dumps(result.to_dict(), indent=2, sort_keys=True, default=str) + "\n")
        log.info("%s", result.summary())
        return result


def _run(cfg: RetrainConfig, state: RetrainState, registry: ModelRegistry, work: Path, result: RetrainResult,
         force_reason: str | None, by: str | None, pipeline_run_id: str | None) -> RetrainResult:
    cache = work / "cache"
    # Automated decisions are recorded as the retrain job, under the account it runs as.
    actor = by or f"mammoflow-retrain ({who()})"
    previous = work / state.last_records if state.last_records else None
    config_sha = cfg.sha256()
    scan = None
    if state.in_progress and state.in_progress.get("config_sha256") != config_sha:
        log.warning("retrain %s was interrupted under another config: abandoned, starting afresh from the last "
                    "completed ingest", state.in_progress["id"])
        state.in_progress = None
    if state.in_progress is None:
        scan = scan_changes(cfg.source.options(), previous)
        if scan.nothing_changed:
            log.info("nothing new: %d files unchanged since %s", len(scan.unchanged), state.last_records)
            result.status = "nothing_new"
            result.ingest = {"nothing_new": True, "new_records": 0, "changed_records": 0, "removed_records": 0,
                             "quarantined_new": 0, "files": scan.summary(),
                             "total_records": count_records(previous)}
            return result
        rid = f"r{state.next_id:04d}"
        state.next_id += 1
        state.in_progress = {"id": rid, "config_sha256": config_sha, "stage": "started", "started": result.started,
                             "host": socket.gethostname()}
        state.save(work)
    rid = state.in_progress["id"]
    result.retrain_id = rid
    records_dir = work / "records" / rid
    run_dir = work / "runs" / rid
    base = storage.join(cfg.storage, "retrain", cfg.name, rid)
    data_uri, run_uri = storage.join(base, "data"), storage.join(base, "train")
    result.paths = {"records": str(records_dir), "run_dir": str(run_dir), "data": data_uri, "train": run_uri,
                    "registry": registry.root}

    # 1. Ingest (only what changed).
    if _done(state, "ingested") and (records_dir / "ingest_delta.json").exists():
        delta = IngestDelta.read(records_dir)
    else:
        delta = ingest_step(cfg, previous, records_dir, scan=scan)
        state.stage(work, "ingested")
    result.ingest = delta.to_dict()
    if delta.nothing_new:
        result.status = "nothing_new"
        state.last_records, state.in_progress = _rel(work, records_dir), None
        return result

    # 2-4. Preprocess (shared folder, resumed), shards, train.
    champion = registry.champion()
    result.champion_before = champion.version if champion else None
    pre = preprocess_step(cfg, records_dir, work / "preprocessed")
    result.ingest["preprocess_quarantined"] = pre.quarantined_new
    manifest = build_step(cfg, work / "preprocessed", data_uri)
    split_sha = split_fingerprint(manifest, cfg.evaluation.split)
    train_data = data_uri
    if cfg.diagnostics.train_on_shuffled_labels:
        from mammoflow.retrain.diagnostics import shuffled_label_copy

        train_data = storage.join(base, "data-shuffled-labels")
        shuffled_label_copy(data_uri, train_data, seed=cfg.evaluation.seed)
    from mammoflow.training.config import load_train_config

    init = warm_start_weights(cfg, champion, load_train_config(cfg.train, dict(cfg.train_overrides)))
    train_step(cfg, train_data, run_uri, init_weights=init, cache_dir=cache)
    state.stage(work, "trained")

    # 5. Evaluate both models on the same split of the same dataset.
    ch_eval = run_dir / "eval" / "challenger"
    ch_report = evaluate_step(cfg, run_uri, data_uri, ch_eval, split_sha256=split_sha, cache_dir=cache)
    champ_eval, champ_report = None, None
    if champion is not None:
        champ_eval = run_dir / "eval" / "champion"
        champ_report = evaluate_step(cfg, champion.uri, data_uri, champ_eval, split_sha256=split_sha, cache_dir=cache)

    # 6. Bless.
    verdict_file = run_dir / "verdict.json"
    if _done(state, "judged") and verdict_file.exists():
        verdict = Verdict.from_dict(json.loads(verdict_file.read_text()))
    else:
        verdict = bless_step(cfg, ch_eval, champ_eval, ch_report, champ_report, challenger=f"challenger {rid}",
                             champion=champion.version if champion else None, force_reason=force_reason, by=by)
        verdict.write(run_dir)
        state.stage(work, "judged")
    result.verdict = verdict.to_dict()

    # 7. Register (every challenger), record the verdict, promote when blessed.
    evaluation = {"split": cfg.evaluation.split, "split_sha256": split_sha, "data_uri": data_uri,
                  "manifest_sha256": ch_report.get("data", {}).get("manifest_sha256"),
                  "plan_sha256": delta.plan_sha256, "level": verdict.evaluation.get("level")}
    lineage = {"retrain": cfg.name, "retrain_id": rid, "pipeline_run_id": pipeline_run_id,
               "parent_version": champion.version if (champion and init) else None,
               "warm_start_weights": init, "champion_at_judgement": result.champion_before,
               "records_dir": str(records_dir), "dataset_uri": data_uri,
               "diagnostics": dataclasses.asdict(cfg.diagnostics),
               "ingest": {k: delta.to_dict()[k] for k in ("new_records", "changed_records", "removed_records",
                                                          "total_records", "new_patients", "new_by_split")}}
    version = register_step(registry, run_uri, ch_eval, verdict, evaluation=evaluation, lineage=lineage,
                            key=f"retrain:{state.token}:{rid}", by=actor)
    result.version = version.version
    state.stage(work, "registered")
    if not _done(state, "recorded"):
        record_verdict(registry, version.version, verdict, by=actor)
        state.stage(work, "recorded")
    if verdict.blessed:
        registry.promote(version.version, by=verdict.forced_by if verdict.forced else actor,
                         reason=(f"forced blessing in retrain {rid}: {verdict.force_reason}" if verdict.forced
                                 else f"blessed by retrain {rid}: {verdict.reason}"))
        result.promoted = True
    state.stage(work, "promoted")
    after = registry.champion()
    result.champion_after = after.version if after else None
    result.status = "blessed" if verdict.blessed else "refused"
    state.last_records, state.in_progress = _rel(work, records_dir), None
    return result


def count_records(records_dir: Path | None) -> int:
    """Records in a records folder (0 when there is none yet)."""
    if records_dir is None or not (records_dir / "records.jsonl").exists():
        return 0
    with open(records_dir / "records.jsonl", encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def retrain_forever(cfg: RetrainConfig, interval: float, *, max_runs: int | None = None,
                    stop: threading.Event | None = None, by: str | None = None) -> list[RetrainResult]:
    """:func:`retrain_once` every ``interval`` seconds (from the end of one run to the start of the next).

    A failed run is logged, recorded and pushed, and the loop goes on (a full disk or a network error should not end
    a week of unattended retraining); ``stop`` (or Ctrl-C) ends it. Returns the results of the runs made.
    """
    if interval <= 0:
        raise ConfigError(f"interval must be > 0 seconds, got {interval}")
    stop = stop or threading.Event()
    results: list[RetrainResult] = []
    while not stop.is_set() and (max_runs is None or len(results) < max_runs):
        try:
            results.append(retrain_once(cfg, by=by))
        except MammoflowError as exc:
            log.error("retrain failed: %s (next attempt in %.0f s)", exc, interval)
            results.append(RetrainResult(status="failed", error=str(exc)))
        except Exception as exc:  # noqa: BLE001 - an unattended loop outlives one bad run; it is logged and pushed
            log.exception("retrain failed unexpectedly (next attempt in %.0f s)", interval)
            results.append(RetrainResult(status="failed", error=f"{type(exc).__name__}: {exc}"))
        if max_runs is not None and len(results) >= max_runs:
            break
        stop.wait(interval)
    return results
