"""The data steps both pipelines start with: the data source (built-in phantoms or a real dataset, a ``dsl.If``),
ingest, preprocess and build-dataset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mammoflow.pipelines.options import PipelineOptions, configure


@dataclass
class DataSteps:
    """The tasks of the data steps whose outputs later steps use."""

    source: Any  # the reader used (a dsl.OneOf of the two branches)
    preprocess: Any
    build_dataset: Any

    @property
    def records(self) -> Any:
        return self.preprocess.outputs["preprocessed"]

    @property
    def dataset(self) -> Any:
        return self.build_dataset.outputs["dataset"]


def add_data_steps(ops: dict[str, Any], options: PipelineOptions, *, source: Any, data_root: Any, preset: Any,
                   preprocess_config: Any, dataset_config: Any, storage_root: Any, n_demo_images: Any,
                   seed: Any) -> DataSteps:
    """Add the data steps to the pipeline being defined; the arguments are its pipeline parameters."""
    from kfp import dsl

    from mammoflow.workflow import PHANTOM_SOURCE

    with dsl.If(source == PHANTOM_SOURCE, name="built-in-phantoms"):
        demo = configure(ops["demo_data"](storage_root=storage_root, n_images=n_demo_images, seed=seed),
                         "demo_data", options)
    with dsl.Else(name="real-data"):
        located = configure(ops["locate_data"](source=source, data_root=data_root), "locate_data", options)
    reader = dsl.OneOf(demo.outputs["source"], located.outputs["source"])
    root = dsl.OneOf(demo.outputs["data_root"], located.outputs["data_root"])
    ingest = configure(ops["ingest"](source=reader, data_root=root), "ingest", options)
    preprocess = configure(ops["preprocess"](records=ingest.outputs["records"], source=reader, preset=preset,
                                             preprocess_config=preprocess_config), "preprocess", options)
    build = configure(ops["build_dataset"](records=preprocess.outputs["preprocessed"], preset=preset,
                                           dataset_config=dataset_config, storage_root=storage_root),
                      "build_dataset", options)
    return DataSteps(source=reader, preprocess=preprocess, build_dataset=build)
