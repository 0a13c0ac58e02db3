"""Sweep specs without Ray: parsing, expansion to the papers' cell counts, names, validation, the dry run."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from mammoflow.cli import cli
from mammoflow.commands.sweep import _parse_data
from mammoflow.config import preset_names
from mammoflow.errors import ConfigError
from mammoflow.sweep.runner import dry_run_lines, search_space, trial_folder, tune_samples
from mammoflow.sweep.spec import (
    SweepSpec,
    base_config,
    cell_name,
    expand_cells,
    load_spec,
    split_cell,
    trial_cell,
    trial_config,
    validate_cells,
)

# The papers' designs: Yu et al. 2020 Tables 2-3 (4 models x 5 branch subsets) + the 2 GAP baselines of Table 1;
# Xi et al. 2018, 4 architectures x 5 folds; Jaamour et al. 2023, one axis at a time around the baseline:
# 1 + (5-1 backbones) + (4-1 sizes) + (3-1 class weights) + (2-1 dropouts) + (2-1 weights) + (4-1 datasets) + model H.
PAPER_TRIALS = {"yu2020_branches": 22, "xi2018_cv": 20, "jaamour2023_divide_conquer": 1 + 4 + 3 + 2 + 1 + 1 + 3 + 1,
                "demo": 4}


def test_shipped_specs_are_the_ones_counted_here():
    assert set(preset_names("sweep")) == set(PAPER_TRIALS)


@pytest.mark.parametrize("name", sorted(PAPER_TRIALS))
def test_shipped_spec_dry_run_prints_one_line_per_trial_and_the_count(name):
    result = CliRunner().invoke(cli, ["sweep", "--spec", name, "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    n = PAPER_TRIALS[name]
    assert lines[-1] == f"{n} trials" and lines[-2].startswith("expected trial-epochs with ")
    assert len(lines) == n + 2
    trial_names = [line.split()[0] for line in lines[:-2]]
    assert len(set(trial_names)) == n  # every trial has its own run folder
    # each line carries the cell's overrides as JSON, and they build valid training configs
    spec = load_spec(name)
    base = base_config(spec)
    for line in lines[:-2]:
        cell = json.loads(line.split(None, 1)[1])
        trial_config(base, cell)


def test_yu_grid_is_models_by_branch_subsets_plus_baselines():
    spec = load_spec("yu2020_branches")
    cells = expand_cells(spec)
    grid = [c for c in cells if "model.params.branches" in c]
    assert len(grid) == 20
    assert {c["model.name"] for c in grid} == {"vgg16_fusion1", "vgg19_fusion1", "vgg16_fusion2", "vgg19_fusion2"}
    assert sorted({tuple(c["model.params.branches"]) for c in grid}) == sorted(
        [(5,), (4, 5), (3, 4, 5), (2, 3, 4, 5), (1, 2, 3, 4, 5)])
    assert [c["model.name"] for c in cells[20:]] == ["vgg16_gap", "vgg19_gap"]
    # the override of a cell reaches the config; the rest stays the base's (fc_units of Yu's released code)
    _, config = trial_config(base_config(spec), {"model.name": "vgg19_fusion2", "model.params.branches": [4, 5]})
    assert config.model.name == "vgg19_fusion2" and config.model.params == {"branches": [4, 5],
                                                                             "fc_units": [1024, 1024]}


def test_one_at_a_time_varies_each_axis_alone_and_skips_baseline_values():
    spec = load_spec("jaamour2023_divide_conquer")
    cells = expand_cells(spec)
    assert cells[0] == {}  # the baseline first
    assert all(len(c) == 1 for c in cells[1:-1])  # one axis each ...
    assert cells[-1] == {"model.name": "jaamour_mobilenetv2", "class_weights": "balanced"}  # ... but model H
    assert {"dataset": "default"} not in cells and {"model.name": "jaamour_vgg19"} not in cells
    assert {"data.image_size": 512} not in cells  # the baseline's own size
    assert sorted(split_cell(c)[0] for c in cells if "dataset" in c) == ["calc", "gaussian_histeq", "mass"]


def test_cells_that_train_the_same_thing_run_once():
    spec = SweepSpec(name="dup", base="demo", axes={"seed": {"grid": [7, 8]}},
                     extra_trials=[{"seed": 7}, {"dataset": "default"}, {"seed": 9}])
    # demo's seed is 7: {seed: 7}, {} with dataset default and {seed: 7} again are one trial
    assert expand_cells(spec) == [{"seed": 7}, {"seed": 8}, {"seed": 9}]


def test_repeats_of_a_pure_grid_get_their_own_seeds_and_names():
    spec = SweepSpec(name="rep", base="demo", axes={"class_weights": {"grid": ["none", "balanced"]}}, num_samples=3)
    cells = expand_cells(spec)
    assert len(cells) == 6 and tune_samples(spec) == 1
    seeds = sorted({trial_config(base_config(spec), c)[1].seed for c in cells})
    assert seeds == [7, 8, 9]
    assert len({cell_name(c) for c in cells}) == 6
    assert dry_run_lines(spec)[-1] == "6 trials"


def test_sampled_axes_repeat_the_grid_and_name_folders_by_trial():
    spec = SweepSpec(name="s", base="demo", axes={"class_weights": {"grid": ["none", "balanced"]},
                                                  "optimizer.momentum": {"uniform": [0.8, 0.99]}}, num_samples=2)
    assert not spec.one_folder_per_cell and tune_samples(spec) == 2
    lines = dry_run_lines(spec)
    assert lines[-1] == "4 trials" and "optimizer.momentum~uniform[0.8, 0.99], sample 2" in lines[3]
    space = search_space(spec, expand_cells(spec))
    assert set(space) == {"cell", "optimizer.momentum"}
    cell = trial_cell({"cell": {"class_weights": "none"}, "optimizer.momentum": 0.85}, expand_cells(spec))
    assert cell == {"class_weights": "none", "optimizer.momentum": 0.85}
    assert trial_folder(cell, "abc_00001", one_per_cell=False).endswith("-abc_00001")
    assert trial_folder(cell, "abc_00001", one_per_cell=True) == cell_name(cell)


def test_optuna_picks_cells_by_index():
    cells = [{"class_weights": "none"}, {"class_weights": "balanced"}]
    assert trial_cell({"cell_index": 1, "seed": 3}, cells) == {"class_weights": "balanced", "seed": 3}
    spec = SweepSpec(name="o", base="demo", axes={"class_weights": {"grid": ["none", "balanced"]}},
                     search={"name": "optuna"}, num_samples=5)
    assert dry_run_lines(spec)[-1] == "5 trials"


def test_cell_names_are_stable_readable_and_distinct():
    a = {"model.name": "vgg16_fusion1", "model.params.branches": [4, 5]}
    assert cell_name(a) == cell_name(dict(a))
    assert cell_name(a).startswith("name=vgg16_fusion1,branches=4-5_")
    assert cell_name({}) == "baseline"
    assert cell_name({"class_weights": {"normal": 1.0, "tumour": 2.0}}) != cell_name(
        {"class_weights": {"normal": 2.0, "tumour": 1.0}})
    assert "/" not in cell_name({"model.weights": "gs://bucket/w.h5"})


@pytest.mark.parametrize("bad, message", [
    ({"axes": {"seed": {"grid": []}}}, "non-empty list"),
    ({"axes": {"seed": {"normal": [0, 1]}}}, "unknown kind"),
    ({"axes": {"optimizer.momentum": {"uniform": [0.8]}}}, "takes [low, high]"),
    ({"design": "one_at_a_time", "axes": {"optimizer.momentum": {"uniform": [0.8, 0.9]}}}, "must be a grid"),
    ({"scheduler": {"name": "pbt"}}, "pbt is not supported"),
    ({"scheduler": {"name": "hyperband"}}, "not one of"),
    ({"mode": "lowest"}, "not min or max"),
    ({"name": "a b"}, "letters, digits"),
    ({"num_samples": 0}, "at least 1"),
])
def test_bad_specs_are_refused_with_the_reason(bad, message):
    data = {"name": "x", "base": "demo", **bad}
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_spec(data)


def test_cells_are_validated_before_any_trial(tmp_path):
    spec = SweepSpec(name="v", base="demo", axes={"class_weights": {"grid": ["none", "sometimes"]}})
    with pytest.raises(ConfigError, match="trial class_weights=sometimes.*class_weights"):
        validate_cells(spec, expand_cells(spec))
    spec = SweepSpec(name="v", base="demo", axes={"dataset": {"grid": ["default", "mass"]}})
    with pytest.raises(ConfigError, match="dataset 'mass' is not in datasets"):
        validate_cells(spec, expand_cells(spec))
    spec = SweepSpec(name="v", base="demo", scheduler={"name": "asha", "grace_period": 10})
    with pytest.raises(ConfigError, match="grace_period"):  # longer than the 4 epochs of the demo config
        dry_run_lines(spec)


def test_spec_from_a_yaml_file_with_an_inline_base(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "inline", "base": {"model": {"name": "compact_fusion"}, "seed": 3},
                                    "axes": {"data.patch_size": {"grid": [32, 48]}}}))
    spec = load_spec(str(path))
    cells = expand_cells(spec)
    assert [trial_config(base_config(spec), c)[1].data.patch_size for c in cells] == [32, 48]
    result = CliRunner().invoke(cli, ["sweep", "--spec", str(path), "--dry-run"])
    assert result.exit_code == 0 and result.output.strip().splitlines()[-1] == "2 trials"


def test_data_option_parsing():
    assert _parse_data(("runs/ds",)) == {"default": "runs/ds"}
    assert _parse_data(("gs://b/ds=v2",)) == {"default": "gs://b/ds=v2"}  # '=' inside a bare URI
    assert _parse_data(("default=gs://b/a", "mass=gs://b/m")) == {"default": "gs://b/a", "mass": "gs://b/m"}
    result = CliRunner().invoke(cli, ["sweep", "--spec", "jaamour2023_divide_conquer", "--data", "gs://b/a"])
    assert result.exit_code != 0 and "calc, gaussian_histeq, mass" in result.output


def test_expected_trial_epochs_follow_successive_halving() -> None:
    from mammoflow.sweep.spec import expected_trial_epochs

    # 4 trials of 4 epochs, halving after epochs 1 and 2: 4x1 + 2x1 + 1x2.
    assert expected_trial_epochs([4] * 4, {"name": "asha", "grace_period": 1, "reduction_factor": 2}) == 8
    # Ray's defaults (grace 1, factor 4): 16 trials of 16 epochs -> 16x1 + 4x3 + 1x12.
    assert expected_trial_epochs([16] * 16, {"name": "asha"}) == 16 + 12 + 12
    # Trials shorter than a rung stop at their own end; FIFO and median stopping count every epoch.
    assert expected_trial_epochs([1, 3], {"name": "asha", "grace_period": 2, "reduction_factor": 2}) == 1 + 2 + 1
    assert expected_trial_epochs([5] * 3, {"name": "fifo"}) == expected_trial_epochs([5] * 3, {"name": "median"}) == 15
    assert expected_trial_epochs([], {"name": "asha"}) == 0
    # sha counts the same rungs (and runs exactly that); a float factor's rungs round up and always grow.
    assert expected_trial_epochs([4] * 4, {"name": "sha", "grace_period": 1, "reduction_factor": 2}) == 8
    assert expected_trial_epochs([4] * 4, {"name": "sha", "reduction_factor": 1.5}) == 4 + 2 + 1 + 1  # rungs 1, 2, 3


def test_dry_run_prints_the_expected_trial_epochs() -> None:
    lines = dry_run_lines(load_spec("demo"))
    # the demo spec halves synchronously (scheduler sha)
    assert lines[-2] == "expected trial-epochs with sha: 8 of 16 (0.50 of the full grid)"
