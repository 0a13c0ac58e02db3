"""The step layer: one function per pipeline step, over URIs. The CLI verbs and the Kubeflow components are thin
adapters over these functions and nothing else; each step can run in its own pod with nothing but its inputs.

Read in the order the data flows:

- :mod:`~mammoflow.steps.data`: built-in phantoms or a located dataset -> ingest -> preprocess -> build-dataset
- :mod:`~mammoflow.steps.partitions`: the same preprocess and build in N record partitions (the pipelines)
- :mod:`~mammoflow.steps.train`: a training run, or a Ray Tune sweep of many
- :mod:`~mammoflow.steps.evaluate`: voting evaluation with CIs, class activation maps, the report
- :mod:`~mammoflow.steps.retrain`: the steps of one scheduled retraining run, or all of them in one process

Verbs that inspect rather than run a step (``models``, ``registry``, ``pipeline``, ``fetch``) read their own module
directly: there is no step behind them.

Where things live under a ``storage_root`` (local folder or ``gs://bucket/prefix``)::

    raw/phantoms-n<N>-s<seed>/             built-in phantom mammograms (demo data)
    preprocessed/<sha16>/                  the preprocess partitions' images (one folder, named by record)
    datasets/<config>-<sha16>/             shards + manifest.json, content-addressed by records and config
    datasets/<config>-<sha16>/parts/       each build partition's example spools and its part.json
    runs/<run id>/train/                   the training run folder (checkpoints, TensorBoard, model.keras)
    sweeps/<run id>/                       a sweep folder (Ray Tune state, one run folder per trial, results)
    retrain/<name>/                        a scheduled retraining: state.json and one folder per pipeline run

Remote inputs are fetched once into the local cache of :mod:`mammoflow.storage.copies` (``$MAMMOFLOW_CACHE``).
"""

from mammoflow.config import plain_numbers
from mammoflow.logs import setup_step_logging
from mammoflow.steps.data import *  # noqa: F403 - the step layer's face
from mammoflow.steps.evaluate import *  # noqa: F403
from mammoflow.steps.retrain import *  # noqa: F403
from mammoflow.steps.train import *  # noqa: F403
from mammoflow.storage import atomic_write_text as write_text
from mammoflow.storage.copies import (
           CACHE_ENV,
           cache_dir,
           cached_copy_path,
           copy_files,
           fetch_tree,
           publish_tree,
)

__all__ = ["CACHE_ENV", "cache_dir", "cached_copy_path", "copy_files", "fetch_tree", "plain_numbers", "publish_tree",
           "setup_step_logging", "write_text"]
