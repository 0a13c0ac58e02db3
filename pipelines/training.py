"""The training pipeline: data source -> ingest -> preprocess -> build-dataset -> train -> evaluate -> explain ->
report.

``training_pipeline`` is built with the options of the environment (:meth:`PipelineOptions.from_env`);
:func:`build` makes one for other images, node pools or credentials.
"""

# No `from __future__ import annotations`: KFP reads the pipeline's parameter and output types from the live
# annotations.
from typing import Any

from mammoflow.pipelines.data import add_data_steps
from mammoflow.pipelines.options import METRICS_PORT, PipelineOptions, configure

NAME = "mammoflow-training"


def build(options: PipelineOptions | None = None) -> Any:
    """The training pipeline (a KFP ``GraphComponent``) for ``options``."""
    from typing import NamedTuple

    from kfp import dsl
    from kfp.dsl import HTML, Metrics

    options = options or PipelineOptions.from_env()
    ops = options.components()

    class Outputs(NamedTuple):
        report: HTML
        metrics: Metrics

    @dsl.pipeline(name=NAME, description="Train, evaluate and explain one mammography classifier: built-in "
                  "phantoms or a real dataset -> ingest -> preprocess -> shards -> train -> voting evaluation "
                  "with 95% CIs -> CAMs -> HTML report.")
    def training_pipeline(
        source: str = "phantoms",
        data_root: str = "",
        preset: str = "yu2020",
        preprocess_config: str = "auto",
        dataset_config: str = "auto",
        train_config: str = "demo",
        train_overrides: dict = {},  # noqa: B006 - KFP reads parameter defaults from the signature
        storage_root: str = options.storage_root,
        n_demo_images: int = 96,
        seed: int = 0,
        split: str = "test",
        n_bootstrap: int = 2000,
        n_explain: int = 4,
        metrics_port: int = METRICS_PORT,
    ) -> Outputs:
        """Args:
            source: phantoms (built-in demo data) or a reader: mias, mias-rois, cbis-ddsm, dicom-dir.
            data_root: The real dataset's folder, zip or gs:// URI (unused for phantoms).
            preset: Paper preset for preprocessing and dataset building: yu2020, jaamour2023, xi2018.
            preprocess_config: Preprocessing preset or YAML; auto = the preset's (none for released ROIs).
            dataset_config: Dataset preset or YAML; auto = the preset.
            train_config: Train preset (demo, yu2020, jaamour2023, xi2018) or YAML path / gs:// URI.
            train_overrides: Dotted overrides of the train config, e.g. {"schedule.steps_per_epoch": 10}.
            storage_root: Local folder or gs:// prefix for phantoms, shards and run folders.
            n_demo_images: Number of phantom mammograms (source=phantoms).
            seed: Seed of the phantoms and of the bootstrap.
            split: Split to evaluate.
            n_bootstrap: Bootstrap resamples for the 95% CIs.
            n_explain: Images in the CAM gallery.
            metrics_port: Port of the training pod's Prometheus endpoint (0: off).
        """
        data = add_data_steps(ops, options, source=source, data_root=data_root, preset=preset,
                              preprocess_config=preprocess_config, dataset_config=dataset_config,
                              storage_root=storage_root, n_demo_images=n_demo_images, seed=seed)
        train = configure(ops["train"](dataset=data.dataset, train_config=train_config,
                                       train_overrides=train_overrides, storage_root=storage_root,
                                       run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, metrics_port=metrics_port),
                          "train", options)
        model = train.outputs["model"]
        evaluate = configure(ops["evaluate"](model=model, dataset=data.dataset, split=split,
                                             n_bootstrap=n_bootstrap, seed=seed), "evaluate", options)
        explain = configure(ops["explain"](model=model, records=data.records, dataset=data.dataset,
                                           n_images=n_explain), "explain", options)
        report = configure(ops["report"](model=model, evaluation=evaluate.outputs["evaluation"],
                                         cams=explain.outputs["cams"]), "report", options)
        return Outputs(report=report.outputs["html"], metrics=evaluate.outputs["metrics"])

    return training_pipeline


training_pipeline = build()
