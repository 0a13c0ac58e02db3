"""Evaluation components: evaluate (voting, metrics with CIs), explain (CAMs) and the HTML report.

No ``from __future__ import annotations`` here: KFP reads the artifact types from the live annotations.
"""

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output


def log_kfp_evaluation(report: dict, evaluation_dir: str, metrics: Metrics, classification: ClassificationMetrics
                       ) -> None:
    """Show an evaluation in the KFP UI: its scalar metrics (:func:`mammoflow.steps.primary_metrics`) on a
    ``Metrics`` artifact, the ROC curve and confusion matrix of ``classification_metrics.json`` on a
    ``ClassificationMetrics`` artifact. Not a stage: a helper of the evaluate and retrain_evaluate components."""
    import json
    import os

    from mammoflow import steps

    for name, value in steps.primary_metrics(report).items():
        metrics.log_metric(name, value)
    with open(os.path.join(evaluation_dir, "classification_metrics.json")) as fh:
        kfp_view = json.load(fh)
    if kfp_view.get("roc"):
        roc = kfp_view["roc"]
        classification.log_roc_curve(roc["fpr"], roc["tpr"], roc["threshold"])
    if kfp_view.get("confusion_matrix"):
        cm = kfp_view["confusion_matrix"]
        classification.log_confusion_matrix(cm["categories"], cm["matrix"])


def evaluate(model: Input[Model], dataset: Input[Dataset], split: str, n_bootstrap: int, seed: int,
             evaluation: Output[Artifact], metrics: Output[Metrics], classification: Output[ClassificationMetrics]):
    """Predict every patch of the split's ROIs, vote per ROI, and compute metrics with bootstrap 95% CIs.

    Args:
        model: From train.
        dataset: From build_dataset.
        split: Split to evaluate (test).
        n_bootstrap: Bootstrap resamples for the confidence intervals.
        seed: Seed of the bootstrap.
        evaluation: metrics.json, predictions.parquet, ROC/PR/confusion/calibration PNGs.
        metrics: Scalar metrics of the primary level (ROI) and the patch level, with CI bounds.
        classification: ROC curve and confusion matrix of the primary level, drawn by the KFP UI.
    """

    from mammoflow import steps
    from mammoflow.components.evaluation import log_kfp_evaluation

    steps.setup_step_logging()
    report = steps.evaluate(model.path, dataset.metadata["uri"], evaluation.path, split=split,
                            n_bootstrap=n_bootstrap, seed=seed)
    log_kfp_evaluation(report, evaluation.path, metrics, classification)
    evaluation.metadata.update({"split": split, "level": report["primary_level"], "model": report["model"]["name"],
                                "data_uri": dataset.metadata["uri"]})


def explain(model: Input[Model], records: Input[Dataset], dataset: Input[Dataset], n_images: int,
            cams: Output[Artifact], metrics: Output[Metrics]):
    """Class activation maps over whole preprocessed images, held-out images with known lesions first; each map
    is scored where lesions are known (pointing game, IoU).

    Args:
        model: From train.
        records: Preprocessed records folder (the images the model's ROIs were cut from).
        dataset: From build_dataset (its split plan says which images were held out).
        n_images: How many images to explain.
        cams: Overlays (PNG), raw maps (NPY), per-image JSON and explain.json.
        metrics: Pointing-game hit rate, chance rate and mean IoU over the images with known lesions.
    """

    from mammoflow import steps

    steps.setup_step_logging()
    index = steps.explain(model.path, records.path, cams.path, data_uri=dataset.metadata["uri"], limit=n_images)
    summary = index["summary"]
    for key in ("n_images", "n_scored", "pointing_game_rate", "chance_rate_mean", "iou_mean"):
        if isinstance(summary.get(key), (int, float)):
            metrics.log_metric(key, float(summary[key]))
    cams.metadata.update({"method": index["method"], "layer": index["layer"], "images": summary["n_images"]})


def report(model: Input[Model], evaluation: Input[Artifact], cams: Input[Artifact], html: Output[HTML],
           markdown: Output[Markdown]):
    """One self-contained HTML page (images embedded) and a Markdown version: data, metrics with 95% CIs next to
    the paper's numbers, curves, confusion matrix, calibration, CAM gallery, worst misses, training history.

    Args:
        model: From train (a self-contained run package).
        evaluation: From evaluate.
        cams: From explain.
        html: report.html, rendered by the KFP UI.
        markdown: report.md (its images are not embedded: read the HTML for them).
    """
    import os
    import shutil
    import tempfile

    from mammoflow import steps

    steps.setup_step_logging()
    with tempfile.TemporaryDirectory(prefix="mammoflow-report-") as tmp:
        paths = steps.report(model.path, tmp, evaluation=evaluation.path, explain=cams.path)
        os.makedirs(os.path.dirname(html.path), exist_ok=True)
        shutil.copyfile(paths["html"], html.path)
        shutil.copyfile(paths["markdown"], markdown.path)
    html.metadata["run_uri"] = model.metadata.get("run_uri", "")


def sweep_report(sweep: Input[Artifact], html: Output[HTML], markdown: Output[Markdown]):
    """The sweep's report: every trial's result, the best configuration and the time early stopping saved.

    Args:
        sweep: From sweep (metadata uri = the sweep folder in object storage).
        html: report.html.
        markdown: report.md.
    """
    import os
    import shutil
    import tempfile

    from mammoflow import steps

    steps.setup_step_logging()
    with tempfile.TemporaryDirectory(prefix="mammoflow-report-") as tmp:
        paths = steps.report(sweep.metadata["uri"], tmp)
        os.makedirs(os.path.dirname(html.path), exist_ok=True)
        shutil.copyfile(paths["html"], html.path)
        shutil.copyfile(paths["markdown"], markdown.path)
    html.metadata["sweep_uri"] = sweep.metadata["uri"]
