"""``mammoflow reproduce yu2020 --budget cpu-pretrained``: the papers' transfer-learning protocols (HED-VGG16 Fusion1
/ Fusion2 frozen + fine-tuned, torchvision MobileNetV2 two phases) end to end on a few synthetic ROIs laid out like
the released MIAS_ROIs.zip; choices on validation, weights named truthfully, tables side by side."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mammoflow.errors import ConfigError
from mammoflow.reproduce.pretrained import (
    CELLS,
    Candidate,
    cells_for,
    choose,
    ensemble_rows,
    roi_level,
    stage_config,
)
from mammoflow.reproduce.yu2020 import reproduce_yu2020, weights_overrides

COUNTS = {"train": (4, 4), "val": (3, 3), "test": (3, 3)}  # (normal, tumour) per split

#: Tiny inputs for every cell: 32x32 patches for the VGG16 cells, 64x64 whole ROIs for MobileNetV2, 2 steps/epoch.
TINY = {"data.patch_size": 32, "data.image_size": 64, "data.batch_size": 8, "schedule.steps_per_epoch": 2,
        "data.patches_per_roi": {"normal": 2, "tumour": 2}}


def _one_epoch(phases: list[dict]) -> list[dict]:
    return [{**p, "epochs": 1} for p in phases]


def tiny_cells() -> tuple:
    """The protocol's cells with one epoch per phase (stages, weights, scaling, trainability unchanged)."""
    import dataclasses

    out = []
    for c in CELLS:
        frozen = {**c.frozen, "schedule.phases": _one_epoch(c.frozen["schedule.phases"])}
        finetune = None if c.finetune is None else \
            {**c.finetune, "schedule.phases": _one_epoch(c.finetune["schedule.phases"])}
        out.append(dataclasses.replace(c, frozen=frozen, finetune=finetune))
    return tuple(out)


def _png(rng: np.random.Generator, tumour: bool) -> bytes:
    from PIL import Image

    img = rng.normal(90, 12, (120, 120))
    if tumour:  # a bright blob
        yy, xx = np.mgrid[:120, :120]
        img += 70 * np.exp(-((yy - 60) ** 2 + (xx - 60) ** 2) / (2 * 18.0**2))
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def tiny_rois_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MIAS_ROIs.zip with the released layout ({train,val,test,trainval}/{Normal,Tumor} (n).png), 20 ROIs."""
    rng = np.random.default_rng(17)
    path = tmp_path_factory.mktemp("rois") / "MIAS_ROIs.zip"
    with zipfile.ZipFile(path, "w") as zf:
        trainval: dict[str, list[bytes]] = {"Normal": [], "Tumor": []}
        for split, (n_normal, n_tumour) in COUNTS.items():
            for cls, n in (("Normal", n_normal), ("Tumor", n_tumour)):
                for i in range(1, n + 1):
                    data = _png(rng, cls == "Tumor")
                    zf.writestr(f"MIAS_ROIs/{split}/{cls} ({i}).png", data)
                    if split in ("train", "val"):
                        trainval[cls].append(data)
        for cls, items in trainval.items():
            for i, data in enumerate(items, start=1):
                zf.writestr(f"MIAS_ROIs/trainval/{cls} ({i}).png", data)
    return path


# --------------------------------------------------------------------------------------------- configuration


def test_each_cell_gets_the_weights_its_backbone_takes_and_their_input_scaling():
    from mammoflow.models.pretrained import accepted_by
    from mammoflow.models.registry import get_model_info

    by_name = {c.name: c for c in CELLS}
    assert set(by_name) == {"hed_vgg16_fusion1", "hed_vgg16_fusion2", "tv_mobilenetv2"}
    for cell in CELLS:
        assert cell.weights in accepted_by(get_model_info(cell.model).backbone)
    f1 = stage_config(by_name["hed_vgg16_fusion1"], "frozen")
    assert f1.model.weights == "hed-bsds500" and f1.head_cache and f1.data.centring == "caffe"
    assert not any(p.trainable_backbone for p in f1.schedule.phases) and f1.data.patch_size == 72
    ft = stage_config(by_name["hed_vgg16_fusion1"], "finetune", init="/runs/x/model.weights.h5")
    assert ft.model.weights == "/runs/x/model.weights.h5" and not ft.head_cache
    assert all(p.trainable_backbone and p.learning_rate <= 1e-4 for p in ft.schedule.phases)
    mob = stage_config(by_name["tv_mobilenetv2"], "frozen")
    assert mob.model.weights == "torchvision-imagenet" and mob.data.centring == "torch"
    assert mob.data.mode == "whole_image" and mob.data.image_size == 144  # 120x120 ROIs upscaled
    assert [p.trainable_backbone for p in mob.schedule.phases] == [False, True]  # Jaamour's two phases
    assert mob.schedule.phases[1].learning_rate == 1e-5
    assert by_name["hed_vgg16_fusion1"].weights_label == "HED (BSDS500 edges, VGG16 initialised from ImageNet)"
    assert "ImageNet MobileNetV2" in by_name["tv_mobilenetv2"].weights_label


def test_weights_names_pick_the_pretrained_protocol_and_other_weights_are_refused(tmp_path):
    from mammoflow.reproduce.budgets import default_budget

    assert default_budget("hed-bsds500") == default_budget("torchvision-imagenet") == "cpu-pretrained"
    assert default_budget(None) == default_budget("imagenet") == "fast"
    assert weights_overrides("hed-bsds500") == {"model.weights": "hed-bsds500"}
    assert cells_for("torchvision-imagenet") == cells_for(None) == CELLS
    with pytest.raises(ConfigError, match="cpu-pretrained"):
        reproduce_yu2020(tmp_path / "missing.zip", tmp_path / "out", weights="imagenet", budget="cpu-pretrained")
    assert not (tmp_path / "out").exists()  # refused before any work


def test_roi_level_ensemble_averages_patch_and_whole_roi_models_by_roi_id():
    patches = pd.DataFrame({"example_id": ["a", "a", "b", "b"], "patch_index": [0, 1, 0, 1], "label": [1, 1, 0, 0],
                            "prob": [0.8, 0.6, 0.2, 0.4], "p0": [0.2, 0.4, 0.8, 0.6], "p1": [0.8, 0.6, 0.2, 0.4]})
    whole = pd.DataFrame({"example_id": ["b", "a"], "patch_index": [0, 0], "label": [0, 1], "prob": [0.1, 0.9],
                          "p0": [0.9, 0.1], "p1": [0.1, 0.9]})
    rois = roi_level(patches)
    assert rois["prob"].tolist() == pytest.approx([0.7, 0.3])
    both = ensemble_rows([patches, whole]).set_index("example_id")
    assert both.loc["a", "prob"] == pytest.approx((0.7 + 0.9) / 2) and both.loc["b", "prob"] == pytest.approx(0.2)
    with pytest.raises(ConfigError):  # another ROI set: refused, never averaged by row order
        ensemble_rows([patches, whole.assign(example_id=["b", "c"])])


def test_ours_is_chosen_by_target_recall_then_val_accuracy_then_auc():
    def cand(name, met, acc, auc):
        return Candidate(name, (name,), {"met_target": met, "val_accuracy": acc, "threshold": 0.5}, auc)

    assert choose([cand("a", True, 0.8, 0.9), cand("b", False, 0.95, 0.99), cand("c", True, 0.85, 0.7)]).name == "c"
    assert choose([cand("a", True, 0.8, 0.9), cand("b", True, 0.8, 0.95)]).name == "b"
    assert choose([cand("a", True, 0.8, 0.9), cand("b", True, 0.8, 0.9)]).name == "a"  # first on ties


# --------------------------------------------------------------------------------------------- end to end


def test_cli_refuses_other_weights_for_the_pretrained_budget(tiny_rois_zip: Path, tmp_path: Path):
    from click.testing import CliRunner

    from mammoflow.cli import cli

    args = ["reproduce", "yu2020", "--data", str(tiny_rois_zip), "--out", str(tmp_path / "o"), "--budget",
            "cpu-pretrained", "--weights", "imagenet"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert "hed-bsds500 / torchvision-imagenet" in result.output + str(result.exception)
    assert not (tmp_path / "o" / "dataset").exists()


def test_pretrained_protocol_end_to_end_on_tiny_rois(tiny_rois_zip: Path, tmp_path: Path):
    out = tmp_path / "pre"
    first = reproduce_yu2020(tiny_rois_zip, out, weights="torchvision-imagenet", overrides=TINY, n_bootstrap=100,
                             pretrained_cells=tiny_cells())
    assert first.budget == "cpu-pretrained" and len(first.cells) == 3

    summary = json.loads((out / "summary.json").read_text())
    assert summary["budget"]["name"] == "cpu-pretrained"
    sec = summary["pretrained"]
    for name in ("hed_vgg16_fusion1", "hed_vgg16_fusion2"):
        cell = sec["cells"][name]
        frozen = json.loads((out / "runs" / name / "frozen" / "run.json").read_text())
        assert frozen["status"] == "finished"
        import yaml

        cfg = yaml.safe_load((out / "runs" / name / "finetune" / "config.yaml").read_text())
        # stage 2 starts from stage 1's whole-model weights, every conv unfrozen at a low rate
        assert cfg["model"]["weights"] == str(out / "runs" / name / "frozen" / "model.weights.h5")
        assert cfg["schedule"]["phases"][0]["trainable_backbone"] is True
        assert (out / "runs" / name / "frozen" / "model.weights.h5").exists()
        losses = {s: v["best_val_loss"] for s, v in cell["stages"].items()}
        assert cell["final_stage"] == min(losses, key=losses.get)  # chosen on validation loss
        assert cell["weights"] == "hed-bsds500"
    mob = sec["cells"]["tv_mobilenetv2"]
    assert mob["weights"] == "torchvision-imagenet" and list(mob["stages"]) == ["frozen"]
    hist = json.loads((out / "runs" / "tv_mobilenetv2" / "frozen" / "history.json").read_text())
    assert len(hist) == 2  # a frozen and an unfrozen phase (one epoch each here)

    # thresholds fitted on validation; the test split predicted once per final model
    for name, cell in sec["cells"].items():
        assert cell["val"]["threshold"]["fitted_on"] == "val"
        test_rows = pd.read_parquet(out / "predictions" / name / "test.parquet")
        assert test_rows["example_id"].nunique() == 6
        report = json.loads((out / "evaluations" / name / "metrics.json").read_text())
        assert report["threshold"] == cell["val"]["threshold"]["threshold"] and report["split"] == "test"
        assert report["levels"]["roi"]["n"] == 6
    ours = sec["ours"]
    cands = [Candidate(c["name"], tuple(c["members"]), c, c["val_auc"]) for c in ours["candidates"]]
    assert len(cands) == 7 and ours["name"] == choose(cands).name
    ours_metrics = json.loads((out / "evaluations" / "ours" / "metrics.json").read_text())
    assert ours_metrics["threshold"] == ours["val"]["threshold"]["threshold"]
    assert ours["target"]["met"] == (ours["target"]["accuracy_met"] and ours["target"]["recall_met"])

    md = (out / "report.md").read_text()
    assert "HED (BSDS500 edges, VGG16 initialised from ImageNet)" in md
    assert "torchvision ImageNet MobileNetV2" in md
    assert "HED (BSDS500 edges" in md and "hed-bsds500 = HED" in md
    for line in md.splitlines():  # HED is never called ImageNet weights
        if "hed_vgg16" in line and "ImageNet" in line:
            assert "initialised from ImageNet" in line
    header = next(line for line in md.splitlines() if line.startswith("| metric | hed_vgg16_fusion1"))
    assert "from-scratch ensemble (--budget cpu)" in header and "paper: Yu VGG16_Fusion1 [1-5]" in header
    acc_row = next(line for line in md.splitlines() if line.startswith("| Accuracy | "))
    cells = [c.strip() for c in acc_row.strip("|").split("|")][1:]
    assert len(cells) == 7  # 3 cells, ours, from scratch, 2 paper cells side by side
    assert cells[4].startswith("0.6875 [0.5625, 0.7969]") and cells[5].startswith("0.8906 [")
    acc = ours["test"]["accuracy"]
    assert cells[3].startswith(f"{acc['value']:.4f} [{acc['ci_low']:.4f}, {acc['ci_high']:.4f}]")
    assert "Target (accuracy >= 0.90 and tumour recall >= 0.9565)" in md
    assert ("**met**" in md.split("for ours:")[1].splitlines()[0]) == ours["target"]["met"]
    assert "HED (BSDS500 edges" in (out / "report.html").read_text()

    # The other weights name runs the same protocol: a re-run resumes every finished run and prediction.
    again = reproduce_yu2020(tiny_rois_zip, out, weights="hed-bsds500", overrides=TINY, n_bootstrap=100,
                             pretrained_cells=tiny_cells())
    assert again.budget == "cpu-pretrained"
    assert all(s["resumed_finished_run"] for c in again.cells.values() for s in c["stages"].values())
    assert again.summary["pretrained"]["ours"]["test"] == ours["test"]
    resumed = again.summary["pretrained"]["cells"]
    assert all(c["train_wall_s"] > 0 for c in resumed.values())  # what the reused run folders recorded
    assert resumed["tv_mobilenetv2"]["final_label"].startswith("one run: 1 epochs frozen at 0.001, then 1 epochs "
                                                                "unfrozen at 1e-05")
