"""The data steps the training and sweep pipelines start with, and their parameters.

Data source (a ``dsl.If``: the built-in phantoms, or a check that the real dataset and its labels CSV are where the
run says) -> ingest -> preprocess in N record partitions (a ``dsl.ParallelFor``) -> plan-dataset (the partitions'
records merged, the split plan made once) -> build-dataset in N partitions -> merge-dataset (one manifest). :class:`DataParameters` are the pipeline parameters these steps
take, declared once for both pipelines (see :mod:`mammoflow.pipelines.signature`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mammoflow.pipelines.options import PipelineOptions, configure, pushes_its_status
from mammoflow.pipelines.signature import parameter, takes


@dataclass(frozen=True)
class DataParameters:
    """The data steps' pipeline parameters; while a pipeline is defined, each field holds the run's value."""

    source: str = parameter("phantoms", "phantoms (built-in demo data) or a reader: mias, mias-rois, cbis-ddsm, "
                            "dicom-dir.")
    data_root: str = parameter("", "The real dataset's folder, zip or gs:// URI (unused for phantoms).")
    labels: str = parameter("", "dicom-dir: labels CSV (columns path,label[,patient_id,laterality,view]), relative "
                            "to data_root, or a full path / gs:// URI; empty: data_root/labels.csv when it exists, "
                            "else the images are unlabelled. Other sources take none.")
    pseudonymise_paths: bool = parameter(False, "dicom-dir: record ids are salted pseudonyms of the file paths, "
                                         "for site folders named after patients (see mammoflow ingest --help).")
    preset: str = parameter("yu2020", "Paper preset for preprocessing and dataset building: yu2020, jaamour2023, "
                            "xi2018.")
    preprocess_config: str = parameter("auto", "Preprocessing preset or YAML; auto = the preset's (none for "
                                       "released ROIs).")
    dataset_config: str = parameter("auto", "Dataset preset or YAML; auto = the preset.")
    storage_root: str = parameter("", "Local folder or gs:// prefix for phantoms, shards and run folders.")
    n_demo_images: int = parameter(96, "Number of phantom mammograms (source=phantoms).")
    seed: int = parameter(0, "Seed of the phantoms, and of the bootstrap of the training pipeline's evaluation.")
    partitions: int = parameter(1, "Record partitions (by patient) that preprocessing and dataset building fan out "
                                "over (a ParallelFor each; about one per node). The records, shards and manifest "
                                "do not depend on it.")


@dataclass
class DataSteps:
    """The tasks of the data steps whose outputs later steps use."""

    source: Any  # the reader used (a dsl.OneOf of the two branches)
    ingest: Any
    plan: Any  # merges the preprocess partitions (its output: the preprocessed records) and plans the splits
    merge: Any  # merges the build partitions into the dataset

    @property
    def records(self) -> Any:
        return self.plan.outputs["preprocessed"]

    @property
    def dataset(self) -> Any:
        return self.merge.outputs["dataset"]


def add_ingest_steps(ops: dict[str, Any], options: PipelineOptions, data: DataParameters) -> tuple[Any, Any]:
    """Add the data source and ingest to the pipeline being defined; returns (the reader used, the ingest task)."""
    from kfp import dsl

    from mammoflow.steps.data import PHANTOM_SOURCE

    with dsl.If(data.source == PHANTOM_SOURCE, name="built-in-phantoms"):
        demo = configure(ops["demo_data"](storage_root=data.storage_root, n_images=data.n_demo_images,
                                          seed=data.seed), "demo_data", options)
    with dsl.Else(name="real-data"):
        located = configure(ops["locate_data"](source=data.source, data_root=data.data_root, labels=data.labels),
                            "locate_data", options)
    reader = dsl.OneOf(demo.outputs["source"], located.outputs["source"])
    root = dsl.OneOf(demo.outputs["data_root"], located.outputs["data_root"])
    # The data as it is now is part of ingest's cache key: data rewritten at the same path is ingested again.
    digest = dsl.OneOf(demo.outputs["data_digest"], located.outputs["data_digest"])
    # With phantoms, a labels CSV reaches ingest too, which refuses it (they are read as mias).
    ingest = configure(ops["ingest"](source=reader, data_root=root, labels=data.labels,
                                     pseudonymise_paths=data.pseudonymise_paths, data_digest=digest), "ingest",
                       options)
    return reader, ingest


def add_partitioned_steps(ops: dict[str, Any], options: PipelineOptions, *, records: Any, source: Any, preset: Any,
                          preprocess_config: Any, dataset_config: Any, storage_root: Any, partitions: Any
                          ) -> tuple[Any, Any]:
    """Add preprocessing and dataset building, fanned out over ``partitions`` record partitions (a
    ``dsl.ParallelFor`` each, :mod:`mammoflow.steps.partitions`), to the pipeline being defined, after the ingest
    whose ``records`` they read; returns (plan-dataset: the preprocessed records, merge-dataset: the dataset)."""
    from kfp import dsl

    chain = {"source": source, "preset": preset, "preprocess_config": preprocess_config}
    parts = configure(ops["partition_list"](partitions=partitions), "partition_list", options)
    with dsl.ParallelFor(parts.output, name="preprocess-partitions") as index:
        pre = configure(ops["preprocess_partition"](records=records, **chain, storage_root=storage_root,
                                                    partition=index, partitions=partitions),
                        "preprocess_partition", options)
    plan = configure(ops["plan_dataset"](records=records, **chain, dataset_config=dataset_config,
                                         storage_root=storage_root, partitions=partitions,
                                         preprocessed_parts=dsl.Collected(pre.output)), "plan_dataset", options)
    # The dataset folder travels in the preprocessed records' metadata (kfp.local 2.17 resolves a task's output
    # parameter inside a ParallelFor to the loop item; artifacts resolve right).
    dataset = {"preprocessed": plan.outputs["preprocessed"], "preset": preset, "dataset_config": dataset_config}
    with dsl.ParallelFor(parts.output, name="build-partitions") as index:
        part = configure(ops["build_partition"](**dataset, partition=index, partitions=partitions),
                         "build_partition", options)
    merge = configure(ops["merge_dataset"](**dataset, partitions=partitions, built_parts=dsl.Collected(part.output)),
                      "merge_dataset", options)
    return plan, merge


def add_data_steps(ops: dict[str, Any], options: PipelineOptions, data: DataParameters) -> DataSteps:
    """Add the data steps to the pipeline being defined: ingest, then preprocessing and dataset building in
    ``data.partitions`` partitions (:func:`add_partitioned_steps`)."""
    reader, ingest = add_ingest_steps(ops, options, data)
    plan, merge = add_partitioned_steps(ops, options, records=ingest.outputs["records"], source=reader,
                                        preset=data.preset, preprocess_config=data.preprocess_config,
                                        dataset_config=data.dataset_config, storage_root=data.storage_root,
                                        partitions=data.partitions)
    return DataSteps(source=reader, ingest=ingest, plan=plan, merge=merge)


def data_pipeline(name: str, description: str, options: PipelineOptions) -> Any:
    """Decorator of a pipeline that starts with the data steps (training, sweep): it takes the
    :class:`DataParameters` (``storage_root`` defaulting to the options'), runs as a sub-pipeline and pushes how its
    run ended (:func:`~mammoflow.pipelines.options.pushes_its_status`)."""
    def decorate(fn: Any) -> Any:
        return pushes_its_status(name, description, options)(takes(DataParameters,
                                                                   storage_root=options.storage_root)(fn))
    return decorate
