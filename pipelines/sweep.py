"""The sweep pipeline: data source -> ingest -> preprocess -> build-dataset -> Ray Tune sweep -> report.

The sweep runs every trial through the same training function as the training pipeline, on a Ray inside its
pod (one GPU) or, with ``ray_address``, on the KubeRay cluster of k8s/base/raycluster.yaml.
"""

# No `from __future__ import annotations`: KFP reads the pipeline's parameter and output types from the live
# annotations.
from typing import Any

from mammoflow.pipelines.data import add_data_steps
from mammoflow.pipelines.options import PipelineOptions, configure

NAME = "mammoflow-sweep"


def build(options: PipelineOptions | None = None) -> Any:
    """The sweep pipeline (a KFP ``GraphComponent``) for ``options``."""
    from typing import NamedTuple

    from kfp import dsl
    from kfp.dsl import HTML, Metrics

    options = options or PipelineOptions.from_env()
    ops = options.components()

    class Outputs(NamedTuple):
        report: HTML
        metrics: Metrics

    @dsl.pipeline(name=NAME, description="An ablation sweep on Ray Tune with early stopping: built-in phantoms or "
                  "a real dataset -> ingest -> preprocess -> shards -> sweep -> HTML report.")
    def sweep_pipeline(
        source: str = "phantoms",
        data_root: str = "",
        preset: str = "yu2020",
        preprocess_config: str = "auto",
        dataset_config: str = "auto",
        spec: str = "demo",
        storage_root: str = options.storage_root,
        n_demo_images: int = 96,
        seed: int = 0,
        ray_address: str = "",
        max_concurrent: int = 0,
    ) -> Outputs:
        """Args:
            source: phantoms (built-in demo data) or a reader: mias, mias-rois, cbis-ddsm, dicom-dir.
            data_root: The real dataset's folder, zip or gs:// URI (unused for phantoms).
            preset: Paper preset for preprocessing and dataset building.
            preprocess_config: Preprocessing preset or YAML; auto = the preset's (none for released ROIs).
            dataset_config: Dataset preset or YAML; auto = the preset.
            spec: Sweep spec (demo, yu2020_branches, jaamour2023_divide_conquer, xi2018_cv) or YAML path / URI.
            storage_root: Local folder or gs:// prefix.
            n_demo_images: Number of phantom mammograms (source=phantoms).
            seed: Seed of the phantoms.
            ray_address: Ray cluster address; empty = a Ray inside the sweep's pod.
            max_concurrent: At most this many trials at once (0: the spec's setting).
        """
        data = add_data_steps(ops, options, source=source, data_root=data_root, preset=preset,
                              preprocess_config=preprocess_config, dataset_config=dataset_config,
                              storage_root=storage_root, n_demo_images=n_demo_images, seed=seed)
        sweep = configure(ops["sweep"](dataset=data.dataset, spec=spec, storage_root=storage_root,
                                       run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, ray_address=ray_address,
                                       max_concurrent=max_concurrent), "sweep", options)
        report = configure(ops["sweep_report"](sweep=sweep.outputs["results"]), "sweep_report", options)
        return Outputs(report=report.outputs["html"], metrics=sweep.outputs["metrics"])

    return sweep_pipeline


sweep_pipeline = build()
