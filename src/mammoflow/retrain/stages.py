"""The steps of one retraining run, written once: scan -> ingest -> preprocess -> build -> train -> evaluate
(challenger and champion) -> bless -> register -> promote, then :func:`finalize` (record and push the outcome).

Each step takes a :class:`~mammoflow.retrain.run.RetrainRun`, checks the run's frozen config, reads what the earlier
steps recorded and records what it did, so ``mammoflow retrain --once`` runs them in order in one process
(:func:`mammoflow.retrain.loop.retrain_once`) and the KFP pipeline runs one per pod (:mod:`mammoflow.steps.retrain`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mammoflow import storage
from mammoflow.errors import ConfigError, InputError
from mammoflow.registry import ModelRegistry, ModelVersion, iso, utc_now, who
from mammoflow.retrain.blessing import Verdict
from mammoflow.retrain.run import RetrainRun
from mammoflow.retrain.state import (
           RetrainResult,
           count_records,
           history_line,
           json_bytes,
           push_state,
           read_state,
           result_from_steps,
           rule_keys,
           update_metrics,
           update_state,
)
from mammoflow.storage.copies import cache_dir, cached_copy_path, fetch_tree, publish_tree

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------- helpers


def dataset_config(cfg: Any) -> Any:
    """The dataset config with the splits build-dataset must keep (``Record.split`` from the ingest's plan)."""
    from mammoflow.dataset.build import DatasetConfig

    dcfg = DatasetConfig.load(cfg.dataset)
    if dcfg.splits.k_folds:
        raise ConfigError(f"dataset {cfg.dataset!r}: k_folds is not supported for retraining (one fixed evaluation "
                          "split). Fix: use a dataset config without k_folds")
    return dcfg


def split_fingerprint(manifest: Mapping[str, Any], split: str) -> str:
    """sha256 of one split's shard list (paths and content hashes): equal fingerprints mean the same examples,
    byte for byte, whichever build wrote them (shards are deterministic, see :mod:`mammoflow.dataset.shards`)."""
    if split not in manifest.get("splits", {}):
        raise ConfigError(f"the dataset has no {split!r} split to evaluate on (has {sorted(manifest.get('splits', {}))})"
                          ". Fix: set evaluation.split, or add data so that the split is not empty")
    shards = sorted((s["path"], s["sha256"]) for s in manifest["splits"][split]["shards"])
    return hashlib.sha256(json.dumps(shards).encode()).hexdigest()


@contextlib.contextmanager
def _tempdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mammoflow-retrain-") as tmp:
        yield Path(tmp)


def warm_start_weights(cfg: Any, champion: ModelVersion | None, train_cfg: Any) -> str | None:
    """The champion's weights URI when warm starting is on and the champion's model matches the config's."""
    if not cfg.warm_start or champion is None:
        return None
    if champion.weights_uri is None:
        log.warning("warm start: champion %s has no model.weights.h5; training from scratch", champion.version)
        return None
    from mammoflow.training.config import load_train_config

    with _tempdir() as tmp:
        theirs = load_train_config(str(storage.get_file(storage.join(champion.uri, "config.yaml"),
                                                        tmp / "config.yaml")))
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


def _local_source(cfg: Any, cache: str | None) -> Any:
    """``cfg`` with a watched source in object storage (root, Info.txt, labels, CSVs) fetched to local files: the
    readers take local files. The local copy has the same path in every pod, so incremental ingest compares like
    with like."""
    src = cfg.source
    local = {key: str(fetch_tree(getattr(src, key), cache)) for key in ("root", "info", "labels")
             if getattr(src, key) and storage.is_remote(getattr(src, key))}
    csvs = [str(fetch_tree(c, cache)) if storage.is_remote(c) else c for c in src.csvs]
    if not local and csvs == list(src.csvs):
        return cfg
    return dataclasses.replace(cfg, source=dataclasses.replace(src, **local, csvs=csvs))


def _set_image_root(records_dir: Path, image_root: str) -> None:
    """Point a records folder's images somewhere else (``records_meta.json``)."""
    from mammoflow.records import META_FILE, atomic_write_text

    meta_path = records_dir / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    meta["image_root"] = image_root
    atomic_write_text(meta_path, json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _records_copy(cfg: Any, local_cfg: Any, uri: str | None, dest: Path, missing: tuple[str, str]) -> Path | None:
    """The records folder ``uri`` on local disk with its images there too: a local folder as it is; a remote one
    (or one naming its images by the watched source's URI) copied to ``dest``, its images pointed at the local
    copy of the watched source. ``missing``: the problem and the fix when there is no such folder."""
    from mammoflow.records import RecordsTable

    if not uri:
        return None
    if not storage.exists(storage.join(uri, "records.jsonl")):
        raise InputError(uri, *missing, code="missing_file")
    remote_root, local_root = cfg.source.root, local_cfg.source.root
    if not storage.is_remote(uri) and not (remote_root and storage.is_remote(remote_root)):
        return storage.local_path(uri).absolute()
    base = uri.rstrip("/")
    for obj in storage.list(base):
        storage.get_file(obj, dest / obj[len(base) + 1:])
    if remote_root and storage.is_remote(remote_root):
        image_root = RecordsTable.read(dest).image_root
        if storage.is_remote(image_root):
            rel = image_root[len(remote_root.rstrip("/")):].lstrip("/")
            _set_image_root(dest, str(Path(local_root) / rel) if rel else str(local_root))
    return dest


_BASELINE_MISSING = ("the records baseline named by state.json is missing",
                     "restore it, or remove last_records from the retrain's state.json to ingest everything again")


# ------------------------------------------------------------------------------------------------- the steps


def _owns(run: RetrainRun, current: Mapping[str, Any]) -> bool:
    """Whether the retrain in progress is this run's: allocated by it, or (a local work folder) interrupted under
    the same config, which the next run resumes."""
    if current.get("pipeline_run_id") == run.run_id:
        return True
    return not run.layout.pipeline and current.get("config_sha256") == run.config_sha256


def scan(run: RetrainRun) -> dict[str, Any]:
    """Step 1: compare the watched source with the last completed ingest (no image is decoded), and freeze the
    config into the run folder.

    A change allocates the run's retrain id (``r0007``, from ``state.next_id``; once per run, so a retried scan
    keeps it; a local work folder resumes the retrain left in progress under the same config). Returns and records
    ``changed``, ``retrain_id``, ``previous_records``, ``files`` (the scan's counts), ``total_records``,
    ``started`` and ``config_sha256``.
    """
    from mammoflow.retrain.ingest import scan_changes

    cfg, layout = run.cfg, run.layout
    started = iso(utc_now())
    state, _ = read_state(layout.state_uri)
    current = state.in_progress or {}
    if current and _owns(run, current):
        run.retrain_id = str(current["id"])
        if "scan" in run.load_steps():
            run.check()
            log.info("retrain %s: resumed (steps done: %s)", run.retrain_id, ", ".join(run.steps))
            return run.step("scan")
    if layout.pipeline:
        run.freeze()
    local_cfg = _local_source(cfg, layout.cache)
    with _tempdir() as tmp:
        previous = _records_copy(cfg, local_cfg, layout.baseline(state.last_records), tmp / "previous",
                                 _BASELINE_MISSING)
        changes = scan_changes(local_cfg.source.options(), previous)
        total = count_records(previous)
    out: dict[str, Any] = {"started": started, "pipeline_run_id": run.run_id, "changed": not changes.nothing_changed,
                           "files": changes.summary(), "previous_records": state.last_records,
                           "total_records": total, "retrain_id": run.retrain_id, "config_sha256": run.config_sha256}
    if changes.nothing_changed:
        log.info("nothing new: %d files unchanged since %s", len(changes.unchanged), state.last_records)
    else:
        def allocate(st: Any) -> str:
            cur = st.in_progress or {}
            if cur and _owns(run, cur):
                return str(cur["id"])
            if cur:
                log.warning("retrain %s (run %s) did not finish: abandoned; this run starts from the last completed "
                            "ingest", cur.get("id"), cur.get("pipeline_run_id"))
            rid = f"r{st.next_id:04d}"
            st.next_id += 1
            st.in_progress = {"id": rid, "pipeline_run_id": run.run_id, "config_sha256": run.config_sha256,
                              "stage": "started", "started": started}
            return rid

        run.retrain_id = out["retrain_id"] = update_state(layout.state_uri, allocate, name=cfg.name)
        if not layout.pipeline:
            run.freeze()
            run.changes = (previous, changes)  # the ingest in this process reuses the scan's hashes
        log.info("retrain %s: %s", run.retrain_id, changes.summary())
    return run.write_step("scan", out)


def ingest(run: RetrainRun, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Step 2: incremental ingest into ``out_dir`` (a KFP artifact; default: the run's records folder), kept as the
    run's records (the next run's baseline once this run ends). Images of a source in object storage are named by
    their URI in the kept records, so that they stay valid in other pods. Returns the IngestDelta as a dict
    (+ ``records_uri``)."""
    from mammoflow.records import RecordsTable
    from mammoflow.retrain.ingest import incremental_ingest

    cfg = run.check()
    scanned = run.step("scan")
    records_uri = run.records_uri
    local_cfg = _local_source(cfg, run.layout.cache)
    if out_dir is None:
        out_dir = cached_copy_path(records_uri, run.layout.cache) if storage.is_remote(records_uri) else records_uri
    out = Path(out_dir)
    with _tempdir() as tmp:
        prev_uri = run.layout.baseline(scanned.get("previous_records"))
        known = run.changes
        previous = _records_copy(cfg, local_cfg, prev_uri, tmp / "previous", _BASELINE_MISSING)
        delta = incremental_ingest(cfg.source.name, local_cfg.source.options(), previous, out,
                                   split_config=dataset_config(cfg).splits, freeze_test=cfg.evaluation.freeze,
                                   scan=known[1] if known and known[0] == previous else None)
    remote_root = cfg.source.root
    if remote_root and storage.is_remote(remote_root):
        image_root = RecordsTable.read(out).image_root
        rel = Path(image_root).resolve().relative_to(Path(local_cfg.source.root).resolve()).as_posix()
        _set_image_root(out, remote_root.rstrip("/") if rel == "." else storage.join(remote_root, rel))
    if storage.is_remote(records_uri) or storage.local_path(records_uri).absolute() != out.absolute():
        publish_tree(out, records_uri)
    record = {**delta.to_dict(), "out_dir": records_uri, "previous": scanned.get("previous_records"),
              "records_uri": records_uri}
    return run.write_step("ingest", record)


def preprocess(run: RetrainRun, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Step 3: preprocess the run's records into the folder every run shares (records an earlier run did with the
    same chain and input are reused; only new ones run). The folder belongs to this retraining, so a changed chain
    replaces its images rather than being refused as foreign work. ``out_dir`` (a KFP artifact) gets this run's
    records table, its images named by the shared folder. Returns the preprocessing counts."""
    import shutil

    from mammoflow.preprocess.run import preprocess_records

    cfg = run.check()
    records_uri = run.step("ingest")["records_uri"]
    shared, cache = run.layout.preprocessed, run.layout.cache
    local_cfg = _local_source(cfg, cache)
    with _tempdir() as tmp:
        records = _records_copy(cfg, local_cfg, records_uri, tmp / "records",
                                ("this run's records are missing", "run the ingest step first"))
        if storage.is_remote(shared):
            local = fetch_tree(shared, cache) if storage.list(shared) else cached_copy_path(shared, cache)
            started_ns = time.time_ns()
            summary = preprocess_records(records, cfg.preprocess, local, overwrite=True)
            # Publish what this run wrote (new images, resume states, the table), not the whole folder again.
            known = set(storage.list(shared))
            for path in sorted(p for p in local.rglob("*") if p.is_file()):
                dest = storage.join(shared, path.relative_to(local).as_posix())
                if dest not in known or path.stat().st_mtime_ns >= started_ns:
                    storage.put_file(path, dest)
            image_root = shared
        else:
            local = storage.local_path(shared).absolute()
            summary = preprocess_records(records, cfg.preprocess, local, overwrite=True)
            image_root = str(local)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for path in local.iterdir():
            if path.is_file() and not path.name.startswith("."):
                shutil.copyfile(path, out / path.name)
        _set_image_root(out, image_root)
    record = {**dataclasses.asdict(summary), "usable": summary.usable, "shared_uri": shared}
    if summary.usable == 0:
        raise InputError(local / "quarantine.md", "no usable record left after preprocessing",
                         "see the quarantine report for each record's problem and fix", code="empty")
    return run.write_step("preprocess", record)


def build(run: RetrainRun) -> dict[str, Any]:
    """Step 4: shards with every record in the split the ingest's plan gave it (nobody moves), and the evaluation
    split's fingerprint (both models are judged on exactly these examples). With the diagnostics negative control
    on, the training data is a label-shuffled copy (``train_uri``)."""
    from mammoflow.dataset import shards
    from mammoflow.dataset.build import build_dataset

    cfg = run.check()
    run.step("preprocess")
    shared = run.layout.preprocessed
    pre = fetch_tree(shared, run.layout.cache) if storage.is_remote(shared) else storage.local_path(shared).absolute()
    dcfg = dataset_config(cfg)
    dcfg.splits.keep_existing = True  # Record.split carries the plan: nobody moves
    dcfg.splits.on_leak = "error"
    data_uri = run.storage_uri("data")
    manifest = build_dataset(pre, dcfg, data_uri).manifest
    train_uri = data_uri
    if cfg.diagnostics.train_on_shuffled_labels:
        from mammoflow.retrain.diagnostics import shuffled_label_copy

        train_uri = run.storage_uri("data-shuffled-labels")
        shuffled_label_copy(data_uri, train_uri, seed=cfg.evaluation.seed)
    record = {"data_uri": data_uri, "train_uri": train_uri, "split": cfg.evaluation.split,
              "split_sha256": split_fingerprint(manifest, cfg.evaluation.split),
              "manifest_sha256": storage.sha256_of(shards.manifest_uri(data_uri)),
              "examples": manifest.get("examples"), "counts": manifest.get("counts"),
              "classes": manifest.get("classes")}
    return run.write_step("build", record)


def train(run: RetrainRun, metrics_port: int | None = None) -> dict[str, Any]:
    """Step 5: train the challenger (a retried or resumed step resumes its run), warm started from the champion's
    weights when the config says so and the models match; its whole-model weights are saved for later warm
    starts. Returns the run URI, the champion it is compared with and the training metrics."""
    from mammoflow.training.config import load_train_config
    from mammoflow.training.loop import train as train_run

    cfg = run.check()
    data = run.step("build")
    champion = ModelRegistry(cfg.registry_uri).champion()
    init = warm_start_weights(cfg, champion, load_train_config(cfg.train, dict(cfg.train_overrides)))
    overrides = dict(cfg.train_overrides)
    if init:
        overrides["model.weights"] = init
    if metrics_port:
        overrides["metrics_port"] = int(metrics_port)
    run_uri = run.storage_uri("train")
    result = train_run(load_train_config(cfg.train, overrides), data["train_uri"], run_uri,
                       cache_dir=cache_dir(run.layout.cache))
    weights_uri = storage.join(run_uri, "model.weights.h5")
    if not storage.exists(weights_uri):
        from mammoflow.models import load_model

        with _tempdir() as tmp:
            model = load_model(storage.get_file(storage.join(run_uri, "model.keras"), tmp / "model.keras"),
                               compile=False)
            model.save_weights(str(tmp / "model.weights.h5"))
            storage.put_file(tmp / "model.weights.h5", weights_uri, move=True)
    record = {"run_uri": run_uri, "champion": champion.version if champion else None,
              "champion_uri": champion.uri if champion else None, "warm_start_weights": init,
              "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
              "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}}
    return run.write_step("train", record)


def evaluate(run: RetrainRun, model_uri: str, out_dir: str | Path) -> dict[str, Any]:
    """Step 6 (twice: challenger and champion): evaluate one model on the evaluation split of the run's shards; the
    report records which split (name and fingerprint)."""
    from mammoflow.evaluation.evaluate import evaluate as evaluate_model

    cfg = run.check()
    data = run.step("build")
    e = cfg.evaluation
    report = evaluate_model(model_uri, data["data_uri"], out_dir, split=e.split, method=e.method,
                            n_bootstrap=e.n_bootstrap, seed=e.seed, cache_dir=cache_dir(run.layout.cache))
    report["evaluation_split"] = {"split": e.split, "split_sha256": data["split_sha256"], "data_uri": data["data_uri"]}
    return report


def bless(run: RetrainRun, challenger_eval: str | Path, champion_eval: str | Path | None, *,
          force_reason: str | None = None, by: str | None = None) -> Verdict:
    """Step 7: the verdict from both evaluations, with paired bootstrap CIs on the same rows at every judged level;
    written with its reason as ``verdict.json`` and ``verdict.md`` in the run folder. ``force_reason``: bless
    whatever the verdict (an intended change), recorded with ``by``; empty means no override."""
    from mammoflow.retrain.blessing import bless as judge
    from mammoflow.retrain.blessing import paired_rows, resolve_level

    cfg = run.check()
    data, trained = run.step("build"), run.step("train")
    ident = {"split": data["split"], "split_sha256": data["split_sha256"], "data_uri": data["data_uri"]}

    def report(folder: str | Path) -> dict[str, Any]:
        return {**json.loads((Path(folder) / "metrics.json").read_text()), "evaluation_split": ident}

    ch_report = report(challenger_eval)
    champ_report = report(champion_eval) if champion_eval is not None else None
    policy, paired = cfg.blessing, {}
    if champion_eval is not None and policy.paired_test:
        level = resolve_level(ch_report, policy.level)
        for lvl in sorted({r.level or level for r in policy.rules}):
            paired[lvl] = paired_rows(Path(challenger_eval) / "predictions.parquet",
                                      Path(champion_eval) / "predictions.parquet", lvl)
    forced = bool(force_reason)
    verdict = judge(ch_report, champ_report, policy, paired=paired, force=forced, force_reason=force_reason or None,
                    by=who(by) if forced else by, challenger=f"challenger {run.retrain_id}",
                    champion=trained["champion"])
    storage.put_bytes(run.at("verdict.json"), verdict.to_json().encode())
    storage.put_bytes(run.at("verdict.md"), verdict.to_markdown().encode())
    run.write_step("bless", verdict.to_dict())
    return verdict


def register(run: RetrainRun, eval_dir: str | Path, verdict: Verdict, *, by: str) -> ModelVersion:
    """Step 8: hand the challenger to the model registry (blessed or not: a refused version stays for audit, never
    as champion) with its evaluation, verdict and lineage, then record the verdict in the audit log. Idempotent:
    the registration key names the retraining and the retrain id, and a verdict recorded is not recorded twice."""
    cfg = run.check()
    scanned, ingested = run.step("scan"), run.step("ingest")
    data, trained = run.step("build"), run.step("train")
    evaluation = {"split": data["split"], "split_sha256": data["split_sha256"], "data_uri": data["data_uri"],
                  "manifest_sha256": data["manifest_sha256"], "plan_sha256": ingested.get("plan_sha256"),
                  "level": verdict.evaluation.get("level")}
    lineage = {"retrain": cfg.name, "retrain_id": scanned["retrain_id"], "pipeline_run_id": run.pipeline_run_id,
               "pipeline": run.pipeline,
               "parent_version": trained["champion"] if trained["warm_start_weights"] else None,
               "warm_start_weights": trained["warm_start_weights"], "champion_at_judgement": trained["champion"],
               "records_dir": ingested["records_uri"], "dataset_uri": data["data_uri"],
               "diagnostics": dataclasses.asdict(cfg.diagnostics),
               "ingest": {k: ingested.get(k) for k in ("new_records", "changed_records", "removed_records",
                                                       "total_records", "new_patients", "new_by_split")}}
    registry = ModelRegistry(cfg.registry_uri)
    token = read_state(run.layout.state_uri)[0].token
    version = registry.register(trained["run_uri"], evaluation_uri=str(eval_dir), evaluation=evaluation,
                                lineage=lineage, verdict=verdict.to_dict(), verdict_markdown=verdict.to_markdown(),
                                by=by, reason=f"challenger of retrain {scanned['retrain_id']}",
                                key=f"retrain:{token}:{scanned['retrain_id']}")
    if not any(e.version == version.version and e.action in ("bless", "refuse", "force_bless")
               for e in registry.audit_log()):
        record_verdict(registry, version.version, verdict, by=by)
    run.write_step("register", {"version": version.version, "uri": version.uri, "blessed": verdict.blessed})
    return version


def promote(run: RetrainRun, version: str, verdict: Verdict, *, by: str) -> Any:
    """Step 9 (blessed challengers only): make ``version`` the champion, with the verdict as the reason (a forced
    blessing is promoted by whoever forced it)."""
    cfg = run.check()
    rid = run.step("scan")["retrain_id"]
    where = f" (pipeline run {run.pipeline_run_id})" if run.pipeline_run_id else ""
    reason = (f"forced blessing in retrain {rid}{where}: {verdict.force_reason}" if verdict.forced
              else f"blessed by retrain {rid}{where}: {verdict.reason}")
    change = ModelRegistry(cfg.registry_uri).promote(version, reason=reason,
                                                     by=verdict.forced_by if verdict.forced else by)
    run.write_step("promote", {"version": version, "from_version": change.from_version, "changed": change.changed})
    return change


def finalize(run: RetrainRun, *, failed: bool, error: str | None = None,
             push_gateway: str | None = None) -> tuple[RetrainResult, dict[str, Any]]:
    """The last step, whatever happened: record the run's outcome and push the retraining's metrics.

    The outcome (nothing new, blessed, refused, failed) updates the running totals of ``state.json`` once per run;
    a completed run (anything but failed) makes its ingest the next run's baseline and ends the retrain in
    progress (a failed local run leaves it, for the next run to resume). The complete metric set goes to the
    Pushgateway (``push_gateway``, else the config's; none: skipped). Returns the result and the state's metrics.
    """
    from mammoflow.retrain.state import COUNTED_RUN

    cfg, layout, steps = run.cfg, run.layout, run.steps
    registry = ModelRegistry(cfg.registry_uri)
    result = result_from_steps(steps, registry, run.paths(), failed=failed, error=error)
    rules = rule_keys(cfg, registry)

    def record(state: Any) -> dict[str, Any]:
        if state.metrics.get(COUNTED_RUN) != run.run_id:  # a retried exit step must not count the run twice
            update_metrics(state, result, None if result.status == "failed" else registry, rules)
            state.metrics[COUNTED_RUN] = run.run_id
            if result.status != "failed" and "ingest" in steps:
                state.last_records = layout.baseline_name(steps["ingest"]["records_uri"])
            resumable = result.status == "failed" and not layout.pipeline
            if run.retrain_id and (state.in_progress or {}).get("id") == run.retrain_id and not resumable:
                state.in_progress = None
        return dict(state.metrics)

    metrics = update_state(layout.state_uri, record, name=cfg.name)
    gateway = push_gateway or cfg.push.gateway
    result.pushed = push_state(cfg, metrics, gateway)
    if not gateway:
        log.info("no Pushgateway configured (push.gateway): metrics kept in %s only", layout.state_uri)
    if layout.history is not None:
        with open(layout.history, "a", encoding="utf-8") as fh:
            fh.write(history_line(result))
    if run.folder() is not None:
        storage.put_bytes(run.at("result.json"), json_bytes(result.to_dict()))
    log.info("%s", result.summary())
    return result, metrics
