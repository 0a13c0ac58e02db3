"""The sweep pipeline: data source -> ingest -> preprocess -> build-dataset -> Ray Tune sweep -> report.

The sweep runs every trial through the same training function as the training pipeline, on a Ray inside its
pod (one GPU) or, with ``ray_address``, on the KubeRay cluster of k8s/base/raycluster.yaml: submitted as a Ray job
to its dashboard (``http://...:8265``, recommended) or joined through Ray Client (``ray://...:10001``). Its data parameters
are :class:`~mammoflow.pipelines.data.DataParameters`, shared with the training pipeline.
"""

# No `from __future__ import annotations`: KFP reads the pipeline's parameter and output types from the live
# annotations.
from typing import Any

from mammoflow.pipelines.data import DataParameters, add_data_steps, data_pipeline
from mammoflow.pipelines.options import PipelineOptions
from mammoflow.pipelines.signature import pipeline_outputs

NAME = "mammoflow-sweep"


def build(options: PipelineOptions | None = None) -> Any:
    """The sweep pipeline (a KFP ``GraphComponent``) for ``options``."""
    from kfp import dsl

    options = options or PipelineOptions.from_env()
    Outputs = pipeline_outputs()  # the return annotation below

    @data_pipeline(NAME, "An ablation sweep on Ray Tune with early stopping: built-in phantoms or "
                        "a real dataset -> ingest -> preprocess -> shards -> sweep -> HTML report.", options)
    def sweep_pipeline(
        data: DataParameters,
        spec: str = "demo",
        ray_address: str = "",
        max_concurrent: int = 0,
        datasets: dict = {},  # noqa: B006 - KFP reads parameter defaults from the signature
    ) -> Outputs:
        """Parameters of the sweep pipeline (the data steps' ones are added by ``takes``).

        Args:
            spec: Sweep spec (demo, yu2020_branches, jaamour2023_divide_conquer, xi2018_cv) or YAML path / URI.
            ray_address: Ray cluster: http://mammoflow-head-svc.mammoflow.svc.cluster.local:8265 submits the sweep
                as a Ray job (recommended), ray://...:10001 joins through Ray Client; empty = a Ray inside the
                sweep's pod.
            max_concurrent: At most this many trials at once (0: the spec's setting).
            datasets: A spec that ablates datasets (jaamour2023_divide_conquer): its other datasets, name -> URI,
                built beforehand; the pipeline's own dataset serves the spec's default one.
        """
        steps = add_data_steps(options.components(), options, data)
        sweep = options.task("sweep", dataset=steps.dataset, spec=spec, datasets=datasets,
                             storage_root=data.storage_root, run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                             ray_address=ray_address, max_concurrent=max_concurrent)
        report = options.task("sweep_report", sweep=sweep.outputs["results"])
        return Outputs(report=report.outputs["html"], metrics=sweep.outputs["metrics"])

    return sweep_pipeline


sweep_pipeline = build()
