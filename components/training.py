"""Training components: one training run, or a Ray Tune sweep of many (both resume when retried).

No ``from __future__ import annotations`` here: KFP reads the artifact types from the live annotations.
"""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output


def train(dataset: Input[Dataset], train_config: str, train_overrides: dict, storage_root: str, run_id: str,
          metrics_port: int, model: Output[Model], metrics: Output[Metrics]):
    """Train a registered model on the dataset's shards; checkpoints every epoch in object storage.

    The run folder is runs/<run_id>/train under the storage root: the same on every retry of this step, so a
    pod preempted mid-run resumes from its last checkpoint instead of starting over.

    Args:
        dataset: From build_dataset (metadata uri = the shards' folder).
        train_config: Train preset (demo, yu2020, jaamour2023, xi2018) or a YAML path / gs:// URI.
        train_overrides: Dotted overrides, e.g. {"schedule.steps_per_epoch": 10, "seed": 3}.
        storage_root: Local folder or gs:// prefix.
        run_id: Pipeline run id (names the run folder).
        metrics_port: Serve Prometheus gauges on this port while training (0: off).
        model: model.keras with config.yaml, metrics.json, run.json and history; metadata run_uri.
        metrics: Best epoch's validation and training loss and accuracy.
    """

    from mammoflow import steps

    steps.setup_step_logging()
    out_uri = steps.run_uri(storage_root, run_id)
    result = steps.train(train_config, dataset.metadata["uri"], out_uri, overrides=train_overrides,
                            metrics_port=metrics_port)
    steps.package_run(out_uri, model.path)
    model.metadata.update({"framework": "keras", "run_uri": out_uri, "data_uri": dataset.metadata["uri"],
                           "train_config": train_config, "best_epoch": result.best_epoch,
                           "epochs_run": result.epochs_run})
    for key in ("val_loss", "val_accuracy", "train_loss", "train_accuracy", "best_epoch", "epochs_run"):
        value = result.metrics.get(key)
        if isinstance(value, (int, float)):
            metrics.log_metric(key, float(value))


def sweep(dataset: Input[Dataset], spec: str, datasets: dict, storage_root: str, run_id: str, ray_address: str,
          max_concurrent: int, results: Output[Artifact], metrics: Output[Metrics]):
    """Run an ablation sweep on Ray Tune: every trial calls the same training function as the train step.

    Args:
        dataset: From build_dataset.
        spec: Sweep spec name (demo, yu2020_branches, jaamour2023_divide_conquer, xi2018_cv) or YAML path / URI.
        datasets: For a spec that ablates datasets: the other datasets, name -> URI (``dataset`` serves the spec's
            default one).
        storage_root: Local folder or gs:// prefix; the sweep goes to sweeps/<run_id>/ (a retry resumes it).
        run_id: Pipeline run id.
        ray_address: Ray cluster to use: its Jobs API, http://mammoflow-head-svc.mammoflow.svc.cluster.local:8265
            (the sweep runs as a Ray job there, this step follows it and stops it if the step is cancelled;
            token from the Secret mammoflow-ray-token), or ray://...:10001 (Ray Client, the fallback);
            empty: a Ray inside this pod.
        max_concurrent: At most this many trials at once (0: the spec's setting).
        results: results.csv/.md, summary.json, best_config.yaml, spec.yaml; metadata uri = the sweep folder.
        metrics: Trial counts and the best trial's metric.
    """
    import csv
    import os

    from mammoflow import steps

    steps.setup_step_logging()
    out_uri = steps.sweep_uri(storage_root, run_id)
    summary = steps.sweep(spec, dataset.metadata["uri"], out_uri, address=ray_address or None,
                             max_concurrent=max_concurrent or None, datasets=datasets)
    steps.copy_files(out_uri, results.path, steps.SWEEP_PACKAGE_FILES)
    results.metadata.update({"uri": out_uri, "spec": spec, **{k: v for k, v in summary.items()
                                                                if isinstance(v, (str, int, float))}})
    for key in ("trials", "finished", "stopped_early", "failed", "trial_epochs_saved", "wall_time_s"):
        metrics.log_metric(key, float(summary[key]))
    with open(os.path.join(results.path, "results.csv"), newline="") as fh:
        rows = list(csv.DictReader(fh))
    best = f"best_{summary['metric']}"
    if rows and rows[0].get(best):
        metrics.log_metric(best, float(rows[0][best]))
