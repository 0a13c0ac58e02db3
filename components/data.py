"""Data components: demo data or a real source -> ingest -> preprocess and build-dataset in N record partitions.

No ``from __future__ import annotations`` here: KFP reads the artifact types from the live annotations. Each
function is shipped alone (see the package docstring), so it imports what it uses inside its body.
"""

from typing import NamedTuple

from kfp.dsl import Dataset, Input, Output


def demo_data(storage_root: str, n_images: int, seed: int, phantoms: Output[Dataset]
              ) -> NamedTuple("DataSource", [("source", str), ("data_root", str), ("data_digest", str)]):
    """Write the built-in MIAS-like phantom mammograms (known lesions) under the storage root.

    Args:
        storage_root: Local folder or gs:// prefix; the images go to raw/phantoms-n<N>-s<seed>/.
        n_images: Number of 1024x1024 phantom mammograms (pairs of breasts of one synthetic patient).
        seed: The same seed writes the same images.
        phantoms: Their ground truth (ground_truth.json, Info.txt); metadata uri points at the images.

    Returns:
        source: the reader to ingest them with (mias); data_root: where they are; data_digest: of the files there.
    """
    import logging

    from mammoflow import steps

    steps.setup_step_logging()
    uri = steps.phantoms_uri(storage_root, n_images, seed)
    summary = steps.demo_data(uri, n_images, seed)
    steps.copy_files(uri, phantoms.path, ("ground_truth.json", "Info.txt"))
    phantoms.metadata.update({**summary, "uri": uri})
    logging.getLogger("mammoflow.components").info("phantoms at %s: %s", uri, summary)
    return summary["source"], uri, steps.data_digest(uri)


def locate_data(source: str, data_root: str, labels: str
                ) -> NamedTuple("DataSource", [("source", str), ("data_root", str), ("data_digest", str)]):
    """Check that a real dataset (and its labels CSV) is where the run says before any work starts.

    Args:
        source: Reader name: mias, mias-rois, cbis-ddsm or dicom-dir.
        data_root: The dataset's folder, zip file or gs:// URI.
        labels: dicom-dir: labels CSV relative to data_root, or a full path / gs:// URI; empty: none given.

    Returns:
        source and data_root (local paths made absolute); data_digest: names, sizes and versions of the dataset's
        files and labels CSV, so that data rewritten at the same path is not taken from KFP's cache.
    """
    import logging

    from mammoflow import steps

    steps.setup_step_logging()
    root = steps.locate_data(source, data_root)
    csv = steps.locate_labels(source, root, labels)
    if csv:
        logging.getLogger("mammoflow.components").info("labels CSV: %s", csv)
    return source, root, steps.data_digest(root, csv)


def ingest(source: str, data_root: str, labels: str, pseudonymise_paths: bool, data_digest: str,
           records: Output[Dataset]):
    """Read a dataset into a records folder: records, quarantine (with the fix for each bad file) and counts.

    Args:
        source: Reader name (mias, mias-rois, cbis-ddsm, dicom-dir).
        data_root: The dataset's folder, zip or gs:// URI (fetched into a local cache when remote).
        labels: dicom-dir: labels CSV relative to data_root, or a full path / gs:// URI (fetched when remote);
            empty: data_root/labels.csv when it exists, else unlabelled.
        pseudonymise_paths: dicom-dir: record ids are salted pseudonyms of the file paths (folders named after
            patients stay out of every output).
        data_digest: Of the input files (from locate_data / demo_data): part of KFP's cache key, recorded.
        records: The records folder (records.jsonl, quarantine.jsonl/.md, ingest_summary.json).
    """

    from mammoflow import steps

    steps.setup_step_logging()
    summary = steps.ingest(source, data_root, records.path, labels=labels,
                               pseudonymise_paths=pseudonymise_paths)
    records.metadata.update({"source": source, "data_root": data_root, "labels_csv": summary["labels_csv"] or "",
                             "read": summary["read"], "used": summary["used"], "quarantined": summary["quarantined"],
                             "labels": summary["labels"], "patients": summary["patients"],
                             "data_digest": data_digest})


# ----------------------------------------------------------- preprocessing and dataset building in N partitions


def partition_list(partitions: int) -> list[int]:
    """The partitions the data steps fan out over (a ParallelFor's items).

    Args:
        partitions: Number of record partitions (1: one piece); records are assigned by patient.

    Returns:
        [0, ..., partitions - 1].
    """
    from mammoflow.steps import partitions as fan_out

    return fan_out.partition_list(partitions)


def preprocess_partition(records: Input[Dataset], source: str, preset: str, preprocess_config: str,
                         storage_root: str, partition: int, partitions: int) -> str:
    """Preprocess one partition of the records into the shared folder under the storage root.

    Args:
        records: Records folder from ingest (the images stay where they are; only this partition's are fetched).
        source: The reader the records came from (decides the automatic chain).
        preset: Paper preset (yu2020, jaamour2023, xi2018).
        preprocess_config: Chain preset or YAML; "auto" = the preset's chain, or none for released ROIs.
        storage_root: Local folder or gs:// prefix; images go to preprocessed/<sha16>/.
        partition: This partition's index.
        partitions: Number of partitions.

    Returns:
        The preprocessed folder's URI (the same for every partition).
    """
    import logging

    from mammoflow import steps
    from mammoflow.steps import partitions as fan_out

    steps.setup_step_logging()
    config = steps.preprocess_config_for(source, preset, preprocess_config)
    done = fan_out.preprocess_partition(records.path, config, storage_root, partition, partitions)
    logging.getLogger("mammoflow.components").info("preprocess partition: %s", done)
    return done["uri"]


def plan_dataset(records: Input[Dataset], source: str, preset: str, preprocess_config: str, dataset_config: str,
                 storage_root: str, partitions: int, preprocessed_parts: list[str],
                 preprocessed: Output[Dataset]):
    """Merge the partitions' preprocessed records into one records folder and plan the dataset's splits once.

    Args:
        records: Records folder from ingest.
        source: The reader the records came from.
        preset: Paper preset.
        preprocess_config: Chain preset or YAML ("auto": the preset's).
        dataset_config: Dataset preset or YAML; "auto" = preset.
        storage_root: Local folder or gs:// prefix.
        partitions: Number of partitions.
        preprocessed_parts: What each preprocess partition returned (its folder's URI).
        preprocessed: The merged records folder (small: its image_root is the preprocessed folder's URI);
            metadata dataset_uri: the dataset folder, where the split plan is.
    """
    from mammoflow import steps
    from mammoflow.steps import partitions as fan_out

    steps.setup_step_logging()
    config = steps.preprocess_config_for(source, preset, preprocess_config)
    summary = fan_out.plan_dataset(records.path, config, steps.dataset_config_for(preset, dataset_config),
                                   storage_root, partitions, preprocessed.path)
    preprocessed.metadata.update({"config": config, "config_hash": summary["config_hash"],
                                  "usable": summary["usable"], "quarantined": summary["quarantined_total"],
                                  "uri": summary["preprocessed_uri"], "partitions": partitions,
                                  "dataset_uri": summary["dataset_uri"]})


def build_partition(preprocessed: Input[Dataset], preset: str, dataset_config: str, partition: int,
                    partitions: int) -> str:
    """Cut the examples of one partition's records into spools under the dataset folder.

    Args:
        preprocessed: The merged preprocessed records folder (metadata dataset_uri: the dataset folder).
        preset: Paper preset (used when dataset_config is "auto").
        dataset_config: Dataset preset or YAML; "auto" = preset.
        partition: This partition's index.
        partitions: Number of partitions.

    Returns:
        The dataset folder's URI.
    """
    import logging

    from mammoflow import steps
    from mammoflow.steps import partitions as fan_out

    steps.setup_step_logging()
    done = fan_out.build_partition(preprocessed.path, steps.dataset_config_for(preset, dataset_config),
                                   preprocessed.metadata["dataset_uri"], partition, partitions)
    logging.getLogger("mammoflow.components").info("build partition: %s", done)
    return done["uri"]


def merge_dataset(preprocessed: Input[Dataset], preset: str, dataset_config: str, partitions: int,
                  built_parts: list[str], dataset: Output[Dataset]):
    """Cut the partitions' spools into the dataset's shards and write its one manifest.

    Args:
        preprocessed: The merged preprocessed records folder (metadata dataset_uri: the dataset folder).
        preset: Paper preset (used when dataset_config is "auto").
        dataset_config: Dataset preset or YAML; "auto" = preset.
        partitions: Number of partitions.
        built_parts: What each build partition returned.
        dataset: manifest.json and split_summary.md; metadata uri = the shards' folder.
    """
    from mammoflow import steps
    from mammoflow.steps import partitions as fan_out

    steps.setup_step_logging()
    config = steps.dataset_config_for(preset, dataset_config)
    result = fan_out.merge_dataset(preprocessed.path, config, preprocessed.metadata["dataset_uri"], partitions)
    dataset.metadata.update({**steps.publish_dataset(result, config, dataset.path), "partitions": partitions})
