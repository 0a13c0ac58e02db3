"""``mammoflow report``: a self-contained HTML page (checked in headless Chromium) and its Markdown twin."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tests.test_evaluate_support import train_tiny_run, write_tiny_dataset

from mammoflow.cli import cli
from mammoflow.evaluation import report as rp

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def reported(tmp_path_factory) -> dict[str, Path]:
    """A trained tiny run, its evaluation (some tumours missed on purpose), a CAM folder, and the report."""
    from mammoflow.evaluation.evaluate import evaluate
    from mammoflow.evaluation.explain import explain
    from mammoflow.io.images import write_png
    from mammoflow.synth.phantoms import make_phantom

    root = tmp_path_factory.mktemp("report")
    data = write_tiny_dataset(root / "data", faint_test_every=2)
    run = train_tiny_run(data, root / "run", root / "cache")
    evaluate(str(run), str(data), run / "evaluation", calibrate=True, n_bootstrap=200, cache_dir=root / "cache")
    (root / "images").mkdir()
    for i in range(2):
        ph = make_phantom(i, shape=(160, 160), lesions=[("circumscribed", "malignant")])
        write_png(root / "images" / f"ph{i}.png", ph.image)
        les = ph.lesions[0]
        explain(str(run), out=run / "explain", images=[str(root / "images" / f"ph{i}.png")],
                circles=[(les.center_row, les.center_col, les.radius)], stride=12)
    out = root / "report"
    result = CliRunner().invoke(cli, ["report", "--run", str(run), "--out", str(out), "--cache-dir",
                                      str(root / "cache")])
    assert result.exit_code == 0, result.output
    return {"root": root, "run": run, "out": out, "data": data}


def test_html_is_self_contained_with_every_section(reported):
    html = (reported["out"] / "report.html").read_text()
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]+)"', html)
    assert len(srcs) >= 5 + 2 + 1  # 5 figures, 2 CAM overlays, at least one missed-tumour thumbnail
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(href|src)="(https?:|file:|/)', html)  # nothing to fetch: opens anywhere
    for heading in ("What was evaluated", "The data", "Results (test split)", "Compared with the paper",
                    "Curves", "Confusion matrix", "Are the probabilities honest?", "Where the model looks",
                    "Missed tumour cases", "Training history", "Configuration"):
        assert heading in html, heading
    assert "every number on this page comes from the <b>test</b> split" in html
    assert "95% confidence intervals" in html and "resamples of whole patients" in html
    metrics = json.loads((reported["run"] / "evaluation" / "metrics.json").read_text())
    acc = metrics["levels"]["roi"]["metrics"]["accuracy"]
    assert rp.fmt_cell(acc, True)["value"] in html and rp.fmt_cell(acc, True)["ci"] in html
    missed = metrics["levels"]["roi"]["confusion_matrix"]["counts"][1][0]
    tumours = metrics["levels"]["roi"]["support"]["tumour"]
    assert missed > 0 and f"{missed} of {tumours} tumour ROIs of the test split were missed" in html
    assert "compact_fusion: {" not in html and "name: compact_fusion" in html  # the config, as YAML


def test_markdown_twin_links_its_images(reported):
    md = (reported["out"] / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links and all((reported["out"] / link).is_file() for link in links)
    assert all(link.startswith(rp.ASSETS + "/") for link in links)
    assert "| Accuracy | % |" in md and "## Results (test split)" in md
    table = [line for line in md.splitlines() if line.startswith("| Accuracy |")][0]
    assert table.count("|") == 2 + 1 + 5  # measure, unit, then patch, roi, roi_soft, breast, patient


def _chromium(args: list[str], profile: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian package `chromium`)")
def test_report_opens_in_headless_chromium(reported, tmp_path):
    """The page renders (a non-trivial screenshot) and every <img> decodes (naturalWidth > 0)."""
    import cv2

    page = reported["out"] / "report.html"
    shot = tmp_path / "shot.png"
    run = _chromium([f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()], tmp_path / "profile1")
    assert shot.exists(), run.stderr[-2000:]
    img = cv2.imread(str(shot))
    assert img.shape[:2] == (1600, 1200)
    assert img.std() > 20 and len(np.unique(img.reshape(-1, 3), axis=0)) > 200  # text, tables, figures

    # A copy of the page whose script writes, into the DOM, how many images decoded (naturalWidth > 0).
    probe = tmp_path / "probe.html"
    script = ("<script>window.addEventListener('load', () => { const imgs = [...document.images];"
              "const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;"
              "document.body.setAttribute('data-images', imgs.length + '/' + ok); });</script>")
    probe.write_text(page.read_text().replace("</body>", script + "</body>"))
    dom = _chromium(["--dump-dom", "--virtual-time-budget=5000", probe.as_uri()], tmp_path / "profile2")
    match = re.search(r'data-images="(\d+)/(\d+)"', dom.stdout)
    assert match, dom.stderr[-2000:]
    total, loaded = int(match.group(1)), int(match.group(2))
    assert total >= 8 and loaded == total


def test_sweep_report(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "results.csv").write_text("trial,status,epochs,best_val_loss,axis:model.name\n"
                                       "model.name=vgg16_fusion1,finished,5,0.3125,vgg16_fusion1\n"
                                       "model.name=compact_fusion,stopped_early,2,0.5,compact_fusion\n")
    (sweep / "summary.json").write_text(json.dumps({
        "sweep": "demo", "trials": 2, "finished": 1, "stopped_early": 1, "failed": 0, "metric": "val_loss",
        "mode": "min", "best_trial": "model.name=vgg16_fusion1"}))
    (sweep / "best_config.yaml").write_text("# best trial\nmodel:\n  name: vgg16_fusion1\n")
    paths = rp.build_report(str(sweep), tmp_path / "out")
    html = paths["html"].read_text()
    assert "Sweep sweep" in html and "vgg16_fusion1" in html and "stopped_early" in html
    assert "0.3125" in html and "Best configuration" in html and "ranked by val_loss" in html
    md = paths["markdown"].read_text()
    assert "| trial | status | epochs | best_val_loss | axis:model.name |" in md


def test_cross_validation_folder_and_evaluation_folder_as_run(reported, tmp_path):
    from mammoflow.evaluation.evaluate import evaluate_many

    run = str(reported["run"])
    evaluate_many([run, str(reported["run"] / "model.keras")], str(reported["data"]), tmp_path / "cv",
                  n_bootstrap=20, cache_dir=reported["root"] / "cache")
    html = rp.build_report(str(tmp_path / "cv"), tmp_path / "cv_report")["html"].read_text()
    assert "Cross-validation" in html and "accuracy" in html and "data:image/png;base64," in html
    # An evaluation folder finds its training run back through metrics.json.
    inputs = rp.find_inputs(str(reported["run"] / "evaluation"))
    assert inputs.kind == "evaluation" and inputs.run == reported["run"]


def test_paper_comparison_is_rendered(reported, tmp_path):
    """An evaluation of one of Yu et al.'s models shows the paper's Table 1 numbers beside ours."""
    from mammoflow.evaluation.levels import paper_comparison

    evaluation = tmp_path / "evaluation"
    shutil.copytree(reported["run"] / "evaluation", evaluation)
    metrics = json.loads((evaluation / "metrics.json").read_text())
    metrics["model"]["name"] = "vgg16_fusion1"
    metrics["paper_comparison"] = paper_comparison("vgg16_fusion1", {"branches": [1, 2, 3, 4, 5]}, metrics["levels"])
    (evaluation / "metrics.json").write_text(json.dumps(metrics))
    html = rp.build_report(str(evaluation), tmp_path / "out")["html"].read_text()
    assert "yu2020 VGG16_Fusion1 branches [1, 2, 3, 4, 5]" in html and "Table" in html
    assert "89.1%" in html  # the paper's accuracy, 0.8906
    ours = rp.fmt_cell(metrics["levels"]["roi"]["metrics"]["accuracy"], True)["value"]
    assert ours in html and "points" in html


def test_not_a_run_folder(tmp_path):
    from mammoflow.errors import InputError

    with pytest.raises(InputError, match="not a training run, evaluation or sweep folder"):
        rp.build_report(str(tmp_path), tmp_path / "out")


def test_cell_formatting():
    cell = {"value": 0.8906, "ci_low": 0.8125, "ci_high": 0.9531}
    assert rp.fmt_cell(cell, True) == {"value": "89.1%", "ci": "81.2% to 95.3%", "text": "89.1% (81.2% to 95.3%)"}
    assert rp.fmt_cell({"value": 0.93, "ci_low": None, "ci_high": None}, False)["text"] == "0.930"
    assert rp.fmt_cell({"value": None}, True)["text"] == "n/a"
