"""The retraining pipeline: scan -> incremental ingest -> preprocess -> build-dataset -> train (warm start) ->
evaluate challenger and champion -> bless -> register -> promote when blessed; the outcome is recorded and pushed
by an exit handler, whatever happened.

A recurring run of it (``mammoflow pipeline schedule --pipeline retrain --cron '0 0 2 * * *'``, at most one run at
a time, no catch-up) retrains a model every night on what arrived in the watched folder. Nothing new ends a run
right after the scan, or after the ingest when files changed but no record did; the exit handler records such a run
like any other. The retraining's state (records baseline, running totals) is ``retrain/<name>/state.json`` under
the storage root, so successive runs share it.

The watched source, its labels CSV included, is the config's ``source`` section (``{name: dicom-dir, root:
gs://BUCKET/site, labels: gs://BUCKET/site-labels.csv}``; a ``labels.csv`` inside a dicom-dir root is read without
being named), so this pipeline takes no data_root or labels parameter.
"""

# No `from __future__ import annotations`: KFP reads the pipeline's parameter and output types from the live
# annotations.
from typing import Any

from mammoflow.pipelines.options import METRICS_PORT, PipelineOptions, configure
from mammoflow.pipelines.signature import pipeline_outputs

NAME = "mammoflow-retrain"


def build(options: PipelineOptions | None = None) -> Any:
    """The retraining pipeline (a KFP ``GraphComponent``) for ``options``."""
    from kfp import dsl

    options = options or PipelineOptions.from_env()
    ops = options.components()
    Outputs = pipeline_outputs("summary", "Markdown")  # the return annotation below

    @dsl.pipeline(name=NAME, description="Scheduled retraining: only new data is ingested, a challenger is trained "
                  "(warm started from the champion), judged against the champion on the same evaluation split, "
                  "registered with its verdict and promoted only when blessed; every outcome is pushed to "
                  "Prometheus.")
    def retrain_pipeline(
        config: str = "",
        config_overrides: dict = {},  # noqa: B006 - KFP reads parameter defaults from the signature
        storage_root: str = options.storage_root,
        force_bless_reason: str = "",
        requested_by: str = "",
        push_gateway: str = options.push_gateway,
        metrics_port: int = METRICS_PORT,
    ) -> Outputs:
        """Parameters of the retraining pipeline.

        Args:
            config: Retrain config YAML, a path in the image or a gs:// URI (watched source with its labels CSV,
                train preset, blessing policy, push.gateway).
            config_overrides: Nested overrides of the config, e.g. {"train_overrides": {"seed": 3}}.
            storage_root: Local folder or gs:// prefix: state, shards, runs and (by default) the registry.
            force_bless_reason: Bless this run's challenger whatever the verdict, for this reason (audited).
            requested_by: Who asked for this run (audit log); empty: kfp:mammoflow-retrain.
            push_gateway: Pushgateway URL (default: $MAMMOFLOW_PUSH_GATEWAY when compiled); empty: the config's
                push.gateway (none: nothing is pushed).
            metrics_port: Port of the training pod's Prometheus endpoint (0: off).
        """
        common = {"config": config, "config_overrides": config_overrides, "storage_root": storage_root}
        run = {**common, "run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER}
        push = configure(ops["push_retrain_metrics"](**run, push_gateway=push_gateway, pipeline=NAME),
                         "push_retrain_metrics", options)
        with dsl.ExitHandler(push, name="record-and-push"):
            scan = configure(ops["retrain_scan"](**run), "retrain_scan", options)
            with dsl.If(scan.outputs["Output"] == True, name="files-changed"):  # noqa: E712 - a KFP condition
                ingest = configure(ops["retrain_ingest"](**run), "retrain_ingest", options)
                with dsl.If(ingest.outputs["Output"] == False, name="new-records"):  # noqa: E712
                    pre = configure(ops["retrain_preprocess"](**run, records=ingest.outputs["records"]),
                                    "retrain_preprocess", options)
                    data = configure(ops["retrain_build_dataset"](**run, preprocessed=pre.outputs["preprocessed"]),
                                     "retrain_build_dataset", options)
                    dataset = data.outputs["dataset"]
                    train = configure(ops["retrain_train"](**run, metrics_port=metrics_port, dataset=dataset),
                                      "retrain_train", options)
                    challenger = configure(ops["retrain_evaluate"](**run, model_uri=train.outputs["run_uri"],
                                                                   dataset=dataset), "retrain_evaluate", options)
                    challenger.set_display_name("evaluate-challenger")
                    champion = configure(ops["retrain_evaluate"](**run, model_uri=train.outputs["champion_uri"],
                                                                 dataset=dataset), "retrain_evaluate", options)
                    champion.set_display_name("evaluate-champion")
                    verdict = configure(ops["bless"](**run, pipeline=NAME, force_bless_reason=force_bless_reason,
                                                     requested_by=requested_by,
                                                     challenger=challenger.outputs["evaluation"],
                                                     champion=champion.outputs["evaluation"]), "bless", options)
                    version = configure(ops["register"](**run, pipeline=NAME, requested_by=requested_by,
                                                        model=train.outputs["model"],
                                                        evaluation=challenger.outputs["evaluation"],
                                                        verdict=verdict.outputs["verdict_json"]), "register", options)
                    with dsl.If(verdict.outputs["Output"] == True, name="blessed"):  # noqa: E712
                        configure(ops["promote"](**run, pipeline=NAME, version=version.output,
                                                 verdict=verdict.outputs["verdict_json"]), "promote", options)
        return Outputs(summary=push.outputs["summary"], metrics=push.outputs["metrics"])

    return retrain_pipeline


retrain_pipeline = build()
