"""Data components: demo data or a real source -> ingest -> preprocess -> build-dataset.

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


def preprocess(records: Input[Dataset], source: str, preset: str, preprocess_config: str,
               preprocessed: Output[Dataset]):
    """Apply a preprocessing chain to every image; lesion coordinates and masks move with the image.

    Args:
        records: Records folder from ingest.
        source: The reader the records came from (decides the automatic chain).
        preset: Paper preset (yu2020, jaamour2023, xi2018).
        preprocess_config: Chain preset or YAML; "auto" = the preset's chain, or none for released ROIs.
        preprocessed: New records folder holding the preprocessed images.
    """

    from mammoflow import steps

    steps.setup_step_logging()
    config = steps.preprocess_config_for(source, preset, preprocess_config)
    summary = steps.preprocess(records.path, config, preprocessed.path)
    preprocessed.metadata.update({"config": config, "config_hash": summary["config_hash"],
                                  "usable": summary["usable"], "quarantined": summary["quarantined_total"]})


def build_dataset(records: Input[Dataset], preset: str, dataset_config: str, storage_root: str,
                  dataset: Output[Dataset]):
    """Cut ROIs / whole images / lesion crops, plan patient-grouped splits and write shards to object storage.

    Args:
        records: Preprocessed records folder.
        preset: Paper preset (used when dataset_config is "auto").
        dataset_config: Dataset preset or YAML; "auto" = preset.
        storage_root: Local folder or gs:// prefix; shards go to datasets/<config>-<sha16>/.
        dataset: manifest.json and split_summary.md; metadata uri = the shards' folder.
    """
    from mammoflow import steps, storage

    steps.setup_step_logging()
    config = steps.dataset_config_for(preset, dataset_config)
    result = steps.build_dataset(records.path, config, storage_root=storage_root)
    steps.copy_files(result.out_uri, dataset.path, ("manifest.json", "split_summary.md", "dataset_config.yaml"))
    manifest = result.manifest
    dataset.metadata.update({
        "uri": result.out_uri, "config": config, "examples": manifest["examples"],
        "classes": manifest["classes"], "counts": manifest["counts"],
        "manifest_sha256": storage.sha256_of(storage.join(result.out_uri, "manifest.json")),
        "quarantined": manifest["inputs"]["records_quarantined"]})
