"""Retraining components: scan -> ingest -> preprocess -> build-dataset -> train -> evaluate (challenger and
champion) -> bless -> register -> promote, and the exit handler's push of the outcome.

Each one calls a ``mammoflow.steps.retrain_*`` step, itself a call into :mod:`mammoflow.retrain.stages` (the step
functions ``mammoflow retrain --once`` runs in one process). Every step takes the retrain config (a YAML path or
``gs://`` URI, plus overrides), the storage root and the pipeline run id: what a run keeps lives under
``<storage_root>/retrain/<name>/<run id>/`` (see :mod:`mammoflow.retrain.run`), where later steps and the exit
handler find it. The scan freezes the config there; later steps work with that frozen copy and refuse to go on if
the config they are given no longer has its sha256.

The steps whose outcome decides a ``dsl.If`` (scan, ingest, bless) return a single ``bool``: kfp.local resolves a
condition only on a task's single output, so the ids and URIs later steps need travel through the run folder.

No ``from __future__ import annotations`` here: KFP reads the artifact types from the live annotations.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output


def retrain_scan(config: str, config_overrides: dict, storage_root: str, run_id: str, summary: Output[Markdown],
                 metrics: Output[Metrics]) -> bool:
    """Compare the watched source with the last completed ingest (files listed, new ones hashed, no image decoded).

    Args:
        config: Retrain config: a YAML path or gs:// URI (source, train preset, blessing policy, pushgateway).
        config_overrides: Nested overrides of the config, e.g. {"train_overrides": {"seed": 3}}.
        storage_root: Local folder or gs:// prefix; the retraining keeps its state under retrain/<name>/.
        run_id: Pipeline run id.
        summary: What the scan found; says so when nothing changed and the run ends here.
        metrics: Files scanned, new, changed and removed; changed (0/1).

    Returns:
        Whether any file changed (False: nothing new, the run ends).
    """
    from mammoflow import steps

    steps.setup_step_logging()
    cfg = steps.load_retrain(config, config_overrides, storage_root)
    out = steps.retrain_scan(cfg, run_id)
    files = out["files"]
    for key in ("scanned", "new", "changed", "removed"):
        metrics.log_metric(f"files_{key}", float(files[key]))
    metrics.log_metric("changed", 1.0 if out["changed"] else 0.0)
    if out["changed"]:
        text = (f"# Retrain {cfg.name}: new data\n\nRetrain {out['retrain_id']}: {files['new']} new, "
                f"{files['changed']} changed and {files['removed']} removed files since the last ingest "
                f"({files['scanned']} scanned).\n")
    else:
        text = (f"# Retrain {cfg.name}: nothing new\n\nNo file of the watched source changed since the last ingest "
                f"({files['scanned']} scanned, {out['total_records']} records): no model is trained in this run.\n")
    steps.write_text(summary.path, text)
    return bool(out["changed"])


def retrain_ingest(config: str, config_overrides: dict, storage_root: str, run_id: str, records: Output[Dataset],
                   summary: Output[Markdown], metrics: Output[Metrics]) -> bool:
    """Incremental ingest: only new and changed files are read; the split plan is extended (nobody moves).

    Args:
        config: Retrain config (YAML path or gs:// URI).
        config_overrides: Nested overrides of the config.
        storage_root: Local folder or gs:// prefix.
        run_id: Pipeline run id.
        records: The records folder (records, quarantine, split_plan.json, ingest_delta.json); metadata uri = its
            copy under the run folder, the next run's baseline.
        summary: What the ingest added; says so when nothing is new and the run ends here.
        metrics: The IngestDelta's counts.

    Returns:
        Whether nothing is new (no record added, changed or removed: the run ends).
    """
    from mammoflow import steps

    steps.setup_step_logging()
    cfg = steps.load_retrain(config, config_overrides, storage_root)
    delta = steps.retrain_ingest(cfg, run_id, records.path)
    for key in ("new_records", "changed_records", "removed_records", "carried_records", "total_records",
                "quarantined_new", "quarantined_total", "new_patients"):
        metrics.log_metric(key, float(delta[key]))
    metrics.log_metric("nothing_new", 1.0 if delta["nothing_new"] else 0.0)
    records.metadata.update({"uri": delta["records_uri"], "mode": delta["mode"], "new_by_split": delta["new_by_split"],
                             "plan_sha256": delta["plan_sha256"], "freeze_test": delta["freeze_test"]})
    if delta["nothing_new"]:
        text = (f"# Retrain {cfg.name}: nothing new\n\nFiles changed, but no record was added, changed or removed "
                f"({delta['total_records']} records, {delta['quarantined_new']} newly quarantined inputs): no model "
                "is trained in this run.\n")
    else:
        text = (f"# Retrain {cfg.name}: ingest\n\n{delta['new_records']} new, {delta['changed_records']} changed and "
                f"{delta['removed_records']} removed records ({delta['new_patients']} new patients, by split "
                f"{delta['new_by_split']}); {delta['quarantined_new']} newly quarantined; {delta['total_records']} "
                "records in all.\n")
    steps.write_text(summary.path, text)
    return bool(delta["nothing_new"])


def retrain_preprocess(config: str, config_overrides: dict, storage_root: str, run_id: str,
                       records: Input[Dataset], preprocessed: Output[Dataset]):
    """Preprocess into the folder every run shares (retrain/<name>/preprocessed): only new records are processed.

    Args:
        config: Retrain config (its preprocess chain).
        config_overrides: Nested overrides of the config.
        storage_root: Local folder or gs:// prefix.
        run_id: Pipeline run id.
        records: From ingest (its copy under the run folder is what is preprocessed).
        preprocessed: This run's preprocessed records table; its images are the shared folder's (metadata uri).
    """
    from mammoflow import steps

    steps.setup_step_logging()
    cfg = steps.load_retrain(config, config_overrides, storage_root)
    out = steps.retrain_preprocess(cfg, run_id, preprocessed.path)
    preprocessed.metadata.update({"uri": out["shared_uri"], "config_hash": out["config_hash"],
                                  "processed": out["processed"], "reused": out["reused"],
                                  "quarantined": out["quarantined_total"]})


def retrain_build_dataset(config: str, config_overrides: dict, storage_root: str, run_id: str,
                          preprocessed: Input[Dataset], dataset: Output[Dataset]):
    """Shards under the run folder, every record in the split its ingest gave it; fingerprint of the evaluation split.

    Args:
        config: Retrain config (its dataset config and evaluation split).
        config_overrides: Nested overrides of the config.
        storage_root: Local folder or gs:// prefix.
        run_id: Pipeline run id.
        preprocessed: From preprocess (the shared folder it wrote is what is built).
        dataset: manifest.json and split_summary.md; metadata uri = the shards, split_sha256 = the evaluation
            split's fingerprint.
    """
    from mammoflow import steps

    steps.setup_step_logging()
    cfg = steps.load_retrain(config, config_overrides, storage_root)
    out = steps.retrain_build(cfg, run_id)
    steps.copy_files(out["data_uri"], dataset.path, ("manifest.json", "split_summary.md", "dataset_config.yaml"))
    dataset.metadata.update({"uri": out["data_uri"], "train_uri": out["train_uri"], "split": out["split"],
                             "split_sha256": out["split_sha256"], "manifest_sha256": out["manifest_sha256"],
                             "examples": out["examples"], "counts": out["counts"]})


def retrain_train(config: str, config_overrides: dict, storage_root: str, run_id: str, metrics_port: int,
                  dataset: Input[Dataset], model: Output[Model], metrics: Output[Metrics]
                  ) -> NamedTuple("Challenger", [("run_uri", str), ("champion", str), ("champion_uri", str)]):
    """Train the challenger, warm started from the champion's weights (when the config says so and they match).

    The run folder is under the run folder (the same on every retry, so a preempted pod resumes from its last
    checkpoint).

    Args:
        config: Retrain config (train preset, overrides, warm start).
        config_overrides: Nested overrides of the config.
        storage_root: Local folder or gs:// prefix.
        run_id: Pipeline run id.
        metrics_port: Serve Prometheus gauges on this port while training (0: off).
        dataset: From build-dataset.
        model: model.keras with config.yaml, metrics.json, run.json and history; metadata run_uri.
        metrics: Best epoch's validation and training loss and accuracy.

    Returns:
        run_uri: the challenger's run folder; champion and champion_uri: the champion it is judged against ("" when
        there is none yet).
    """
    from mammoflow import steps

    steps.setup_step_logging()
    cfg = steps.load_retrain(config, config_overrides, storage_root)
    out = steps.retrain_train(cfg, run_id, metrics_port=metrics_port)
    steps.package_run(out["run_uri"], model.path)
    model.metadata.update({"framework": "keras", "run_uri": out["run_uri"], "data_uri": dataset.metadata["uri"],
                           "train_config": cfg.train, "champion": out["champion"] or "",
                           "warm_start_weights": out["warm_start_weights"] or "", "best_epoch": out["best_epoch"],
                           "epochs_run": out["epochs_run"]})
    for key in ("val_loss", "val_accuracy", "train_loss", "train_accuracy", "best_epoch", "epochs_run"):
        value = out["metrics"].get(key, out.get(key))
        if isinstance(value, (int, float)):
            metrics.log_metric(key, float(value))
    return out["run_uri"], out["champion"] or "", out["champion_uri"] or ""


def retrain_evaluate(config: str, config_overrides: dict, storage_root: str, run_id: str, model_uri: str,
                     dataset: Input[Dataset], evaluation: Output[Artifact], metrics: Output[Metrics],
                     classification: Output[ClassificationMetrics]):
    """Evaluate one model (the challenger's run, or the champion's registry version) on the evaluation split.

    Both evaluations use the same split of the same shards, so their rows pair up for the blessing's paired test.

    Args:
        config: Retrain config (its evaluation section).
        config_overrides: Nested overrides of the config.
        storage_root: Local folder or gs:// prefix.
        run_id: Pipeline run id.
        model_uri: The model's run folder or registry version; "" when there is no champion yet (nothing to do).
        dataset: From build-dataset.
        evaluation: metrics.json, predictions.parquet and plots; metadata absent=True when there was no model.
        metrics: Scalar metrics of the primary level and the patch level, with CI bounds.
        classification: ROC curve and confusion matrix of the primary level.
    """
    import os

    from mammoflow import steps

    steps.setup_step_logging()
    os.makedirs(evaluation.path, exist_ok=True)
    if not model_uri:
        evaluation.metadata.update({"absent": True, "reason": "no champion yet"})
        return
    cfg = steps.load_retrain(config, config_overrides, storage_root)
    report = steps.retrain_evaluate(cfg, run_id, model_uri, evaluation.path)
    from mammoflow.components.evaluation import log_kfp_evaluation

    log_kfp_evaluation(report, evaluation.path, metrics, classification)
    evaluation.metadata.update({"absent": False, "model_uri": model_uri, "split": report["evaluation_split"]["split"],
                                "level": report["primary_level"], "data_uri": report["evaluation_split"]["data_uri"]})


def bless(config: str, config_overrides: dict, storage_root: str, run_id: str, pipeline: str,
          force_bless_reason: str, requested_by: str, challenger: Input[Artifact], champion: Input[Artifact],
          verdict: Output[Markdown], verdict_json: Output[Artifact], metrics: Output[Metrics]) -> bool:
    """May the challenger replace the champion? The verdict with a reason a person can read.

    Args:
        config: Retrain config (its blessing policy).
        config_overrides: Nested overrides of the config.
        storage_root: Local folder or gs:// prefix.
        run_id: Pipeline run id.
        pipeline: The pipeline's name (who forced a blessing, when requested_by is empty).
        force_bless_reason: Bless whatever the verdict, for this reason (audited); "" for no override.
        requested_by: Who asked for this run (audit log); "" for the pipeline itself.
        challenger: The challenger's evaluation.
        champion: The champion's evaluation (absent for the first model).
        verdict: verdict.md, shown in the KFP UI.
        verdict_json: verdict.json and verdict.md.
        metrics: blessed and forced (0/1), and each judged metric of both models.

    Returns:
        Whether the challenger is blessed.
    """
    import os

    from mammoflow import steps

    steps.setup_step_logging()
    cfg = steps.load_retrain(config, config_overrides, storage_root)
    absent = champion.metadata.get("absent", True)
    out = steps.retrain_bless(cfg, run_id, challenger.path, None if absent else champion.path,
                                 force_reason=force_bless_reason, by=requested_by or f"kfp:{pipeline}")
    os.makedirs(verdict_json.path, exist_ok=True)
    out.write(verdict_json.path)
    steps.write_text(verdict.path, out.to_markdown())
    metrics.log_metric("blessed", 1.0 if out.blessed else 0.0)
    metrics.log_metric("forced", 1.0 if out.forced else 0.0)
    for key, delta in out.deltas.items():
        for role in ("challenger", "champion", "delta"):
            if isinstance(delta.get(role), (int, float)):
                metrics.log_metric(f"{role}_{key}", float(delta[role]))
    verdict_json.metadata.update({"blessed": out.blessed, "kind": out.kind, "forced": out.forced,
                                  "champion": out.champion or ""})
    return bool(out.blessed)


def register(config: str, config_overrides: dict, storage_root: str, run_id: str, pipeline: str, requested_by: str,
             model: Input[Model], evaluation: Input[Artifact], verdict: Input[Artifact]) -> str:
    """Hand the challenger to the model registry (blessed or refused) with its evaluation, verdict and lineage, and
    record the verdict in the registry's audit log. Re-running it registers nothing twice (keyed by the run id).

    Args:
        config: Retrain config (its registry).
        config_overrides: Nested overrides of the config.
        storage_root: Local folder or gs:// prefix.
        run_id: Pipeline run id (the registration's idempotency key and lineage).
        pipeline: The pipeline's name (lineage, audit log).
        requested_by: Who asked for this run (audit log); "" for the pipeline itself.
        model: From train (its run_uri is registered).
        evaluation: The challenger's evaluation.
        verdict: From bless.

    Returns:
        The registered version (v0007).
    """
    import json
    import os

    from mammoflow import steps
    from mammoflow.retrain.blessing import Verdict

    steps.setup_step_logging()
    cfg = steps.load_retrain(config, config_overrides, storage_root)
    with open(os.path.join(verdict.path, "verdict.json")) as fh:
        judged = Verdict.from_dict(json.load(fh))
    version = steps.retrain_register(cfg, run_id, evaluation.path, judged, pipeline=pipeline,
                                        by=requested_by or f"kfp:{pipeline}")
    return version.version


def promote(config: str, config_overrides: dict, storage_root: str, run_id: str, pipeline: str, version: str,
            verdict: Input[Artifact]):
    """Make the blessed challenger the champion; the verdict's reason goes to the audit log.

    Args:
        config: Retrain config (its registry).
        config_overrides: Nested overrides of the config.
        storage_root: Local folder or gs:// prefix.
        run_id: Pipeline run id.
        pipeline: The pipeline's name (the audit log's actor).
        version: From register.
        verdict: From bless.
    """
    import json
    import os

    from mammoflow import steps
    from mammoflow.retrain.blessing import Verdict

    steps.setup_step_logging()
    cfg = steps.load_retrain(config, config_overrides, storage_root)
    with open(os.path.join(verdict.path, "verdict.json")) as fh:
        judged = Verdict.from_dict(json.load(fh))
    steps.retrain_promote(cfg, run_id, version, judged, by=f"kfp:{pipeline}")


def push_retrain_metrics(config: str, config_overrides: dict, storage_root: str, run_id: str, push_gateway: str,
                         pipeline: str, status: dsl.PipelineTaskFinalStatus, summary: Output[Markdown],
                         metrics: Output[Metrics]):
    """The exit handler: whatever happened (nothing new, blessed, refused, failed), record the run's outcome in the
    retraining's state (running totals) and push the complete metric set to the Pushgateway.

    Args:
        config: Retrain config (its push section).
        config_overrides: Nested overrides of the config.
        storage_root: Local folder or gs:// prefix.
        run_id: Pipeline run id.
        push_gateway: Pushgateway URL; "" for the config's push.gateway (none: nothing is pushed).
        pipeline: The pipeline's name: its run status is pushed too (mammoflow_pipeline_*, label pipeline).
        status: The final status of the steps inside the exit handler.
        summary: The run's outcome for people.
        metrics: Outcome flags and counts of this run.
    """
    from mammoflow import steps
    from mammoflow.pushgateway import push_pipeline_status

    steps.setup_step_logging()
    failed = status.state != "SUCCEEDED"
    try:
        cfg = steps.load_retrain(config, config_overrides, storage_root)
    except Exception:
        if push_gateway:  # no config (e.g. a schedule without one): the run's failure is still seen
            push_pipeline_status(push_gateway, pipeline, succeeded=False)
        raise
    error = (status.error_message or f"the run ended {status.state}") if failed else None
    result, _ = steps.retrain_finalize(cfg, run_id, failed=failed, error=error, push_gateway=push_gateway or None)
    gateway = push_gateway or cfg.push.gateway
    if gateway:
        push_pipeline_status(gateway, pipeline, succeeded=result.status != "failed")
    steps.write_text(summary.path, steps.retrain_markdown(cfg, run_id, result, gateway))
    for name in ("nothing_new", "blessed", "refused", "failed"):
        metrics.log_metric(name, 1.0 if result.status == name else 0.0)
    ingest = result.ingest or {}
    for key in ("new_records", "changed_records", "removed_records", "total_records", "quarantined_new"):
        if isinstance(ingest.get(key), (int, float)):
            metrics.log_metric(key, float(ingest[key]))
    metrics.log_metric("seconds", float(result.seconds))
    metrics.log_metric("pushed", 1.0 if result.pushed else 0.0)
    summary.metadata.update({"status": result.status, "retrain_id": result.retrain_id or "",
                             "version": result.version or "", "champion": result.champion_after or ""})
