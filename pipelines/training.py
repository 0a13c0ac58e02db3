"""The training pipeline: data source -> ingest -> preprocess and build-dataset in N record partitions (a
``dsl.ParallelFor`` each, then their merges) -> train -> evaluate -> explain -> report. Its data parameters (among
them ``partitions``) are :class:`~mammoflow.pipelines.data.DataParameters`, shared with the sweep pipeline.
"""

# No `from __future__ import annotations`: KFP reads the pipeline's parameter and output types from the live
# annotations.
from typing import Any

from mammoflow.pipelines.data import DataParameters, add_data_steps, data_pipeline
from mammoflow.pipelines.options import METRICS_PORT, PipelineOptions
from mammoflow.pipelines.signature import pipeline_outputs

NAME = "mammoflow-training"


def build(options: PipelineOptions | None = None) -> Any:
    """The training pipeline (a KFP ``GraphComponent``) for ``options``."""
    from kfp import dsl

    options = options or PipelineOptions.from_env()
    Outputs = pipeline_outputs()  # the return annotation below

    @data_pipeline(NAME, "Train, evaluate and explain one mammography classifier: built-in "
                        "phantoms or a real dataset -> ingest -> preprocess -> shards -> train -> voting evaluation "
                        "with 95% CIs -> CAMs -> HTML report.", options)
    def training_pipeline(
        data: DataParameters,
        train_config: str = "demo",
        train_overrides: dict = {},  # noqa: B006 - KFP reads parameter defaults from the signature
        split: str = "test",
        n_bootstrap: int = 2000,
        n_explain: int = 4,
        metrics_port: int = METRICS_PORT,
    ) -> Outputs:
        """Parameters of the training pipeline (the data steps' ones are added by ``takes``).

        Args:
            train_config: Train preset (demo, yu2020, jaamour2023, xi2018) or YAML path / gs:// URI.
            train_overrides: Dotted overrides of the train config, e.g. {"schedule.steps_per_epoch": 10}.
            split: Split to evaluate.
            n_bootstrap: Bootstrap resamples for the 95% CIs.
            n_explain: Images in the CAM gallery.
            metrics_port: Port of the training pod's Prometheus endpoint (0: off).
        """
        steps = add_data_steps(options.components(), options, data)
        train = options.task("train", dataset=steps.dataset, train_config=train_config,
                             train_overrides=train_overrides, storage_root=data.storage_root,
                             run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, metrics_port=metrics_port)
        model = train.outputs["model"]
        evaluate = options.task("evaluate", model=model, dataset=steps.dataset, split=split, n_bootstrap=n_bootstrap,
                                seed=data.seed)
        explain = options.task("explain", model=model, records=steps.records, dataset=steps.dataset,
                               n_images=n_explain)
        report = options.task("report", model=model, evaluation=evaluate.outputs["evaluation"],
                              cams=explain.outputs["cams"])
        return Outputs(report=report.outputs["html"], metrics=evaluate.outputs["metrics"])

    return training_pipeline


training_pipeline = build()
