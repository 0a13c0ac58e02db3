"""Every stage verb's ``--help`` ends with examples that parse against the real commands (option names, required
options, choices, preset names), and the predict example's ``--out`` is written atomically."""

from __future__ import annotations

import json
import shlex
from importlib import resources
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from mammoflow.cli import cli
from mammoflow.config import preset_names

VERBS = ("build-dataset", "evaluate", "explain", "predict", "preprocess", "report", "reproduce", "train", "weights")

# Which preset kind an option's value names when it is not a path.
PRESET_OPTIONS = {("preprocess", "--config"): "preprocess", ("build-dataset", "--config"): "dataset",
                  ("train", "--config"): "train", ("explain", "--preprocess"): "preprocess",
                  ("predict", "--preprocess"): "preprocess"}


def _command(path: list[str]) -> click.Command:
    ctx = click.Context(cli)
    cmd: click.Command = cli
    for name in path:
        assert isinstance(cmd, click.Group)
        sub = cmd.get_command(ctx, name)
        assert sub is not None, f"no verb {' '.join(path)}"
        cmd = sub
    return cmd


def example_lines(epilog: str) -> list[str]:
    """The ``mammoflow ...`` lines of an epilog, backslash continuations joined."""
    text = epilog.replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip().startswith("mammoflow ")]


def check_example(line: str) -> None:
    """Parse one example as the CLI would, without running it: every option exists on its command, takes the
    value it is given (choices, preset names), and every required option is there."""
    tokens = shlex.split(line, comments=True)
    assert tokens[0] == "mammoflow"
    path, rest = [tokens[1]], tokens[2:]
    cmd = _command(path)
    if isinstance(cmd, click.Group):
        path.append(rest[0])
        cmd, rest = _command(path), rest[1:]
    options = {name: p for p in cmd.params if isinstance(p, click.Option) for name in (*p.opts, *p.secondary_opts)}
    given: set[str] = set()
    positional: list[str] = []
    tokens_left = iter(rest)
    for token in tokens_left:
        if not token.startswith("-"):
            positional.append(token)
            continue
        assert token in options, f"{line!r}: {token} is not an option of `mammoflow {' '.join(path)}`"
        param = options[token]
        given.add(param.name)  # type: ignore[arg-type]
        if param.is_flag:
            continue
        value = next(tokens_left, None)
        assert value is not None and not value.startswith("--"), f"{line!r}: {token} needs a value"
        if isinstance(param.type, click.Choice):
            assert value in param.type.choices, f"{line!r}: {value!r} is not one of {param.type.choices}"
        kind = PRESET_OPTIONS.get((path[0], token))
        if kind and "/" not in value and not value.endswith((".yaml", ".yml")):
            assert value in preset_names(kind), f"{line!r}: no {kind} preset {value!r}"
    arguments = [p for p in cmd.params if isinstance(p, click.Argument)]
    assert len(positional) == len(arguments), f"{line!r}: arguments {positional}"
    for param, value in zip(arguments, positional, strict=True):
        if isinstance(param.type, click.Choice):
            assert value in param.type.choices, f"{line!r}: {value!r} is not one of {param.type.choices}"
    missing = [p.name for p in cmd.params if isinstance(p, click.Option) and p.required and p.name not in given]
    assert not missing, f"{line!r}: required option(s) {missing} missing"


@pytest.mark.parametrize("verb", VERBS)
def test_help_shows_examples_that_fit_the_commands(verb):
    result = CliRunner().invoke(cli, [verb, "--help"])
    assert result.exit_code == 0, result.output
    assert "Examples:" in result.output
    shown = example_lines(result.output)
    own = [line for line in shown if line.startswith(f"mammoflow {verb} ")]
    assert len(own) >= 2, f"{verb}: fewer than two examples of the verb itself"
    for line in shown:
        check_example(line)


def test_reproduce_subcommand_help_has_the_examples_too():
    result = CliRunner().invoke(cli, ["reproduce", "yu2020", "--help"])
    assert result.exit_code == 0 and "Examples:" in result.output
    assert sum(line.startswith("mammoflow reproduce yu2020") for line in example_lines(result.output)) >= 3


def test_the_example_checker_catches_wrong_examples():
    """The check above is only worth something if it fails on the mistakes it is meant to catch."""
    for wrong in ("mammoflow preprocess --records r --config yu2020 --output pre",       # no such option
                  "mammoflow preprocess --records r --out pre",                           # --config missing
                  "mammoflow preprocess --records r --config yu2021 --out pre",           # no such preset
                  "mammoflow evaluate --model m --data d --out e --method median",        # not a choice
                  "mammoflow reproduce yu2020 --out o --budget gpu"):
        with pytest.raises(AssertionError):
            check_example(wrong)
    check_example("mammoflow preprocess --records r --config cfg/my.yaml --out pre --overwrite")


# ------------------------------------------------------------------------------------------- predict --out


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A finished run as `mammoflow train` leaves it (config.yaml, model.keras, metrics.json), untrained weights."""
    from mammoflow.models import create_model

    run = tmp_path_factory.mktemp("run")
    (run / "config.yaml").write_text((resources.files("mammoflow") / "presets" / "train" / "demo.yaml").read_text())
    create_model("compact_fusion", input_shape=(48, 48, 1), widths=[8, 8, 16, 16], fc_units=[16], dropout=0.0,
                 seed=0).save(run / "model.keras")
    (run / "metrics.json").write_text(json.dumps({"label_names": {"0": "normal", "1": "tumour"}}))
    return run


def test_predict_out_is_atomic_and_kept_when_nothing_is_predicted(run_folder, tmp_path):
    from mammoflow.io.images import write_png

    roi = np.random.default_rng(0).integers(0, 255, (120, 120), dtype=np.uint8)
    write_png(tmp_path / "roi.png", roi)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "preds" / "predictions.jsonl"

    result = CliRunner().invoke(cli, ["predict", "--model", str(run_folder), "--images", str(tmp_path / "roi.png"),
                                      "--images", str(broken), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "predicted 1 image(s), 1 unreadable" in result.output
    (line,) = out.read_text().splitlines()
    assert json.loads(line)["n_patches"] == 25
    assert out.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in out.parent.iterdir()] == ["predictions.jsonl"]  # no temporary file left

    before = out.read_bytes()
    failed = CliRunner().invoke(cli, ["predict", "--model", str(run_folder), "--images", str(broken),
                                      "--out", str(out)])
    assert failed.exit_code != 0 and "no image could be predicted" in failed.output
    assert out.read_bytes() == before
