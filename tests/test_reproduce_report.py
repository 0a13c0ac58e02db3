"""The reproduce report's bookkeeping lines (pure functions, no training)."""

from __future__ import annotations

from pathlib import Path

from mammoflow.reproduce import report


def test_wall_time_line_says_when_finished_runs_were_reused() -> None:
    fresh = {"wall_time_s": 812.4, "ours": {"members": [{}, {}, {}], "reused_runs": 0}}
    assert report._wall_time_line(fresh) == "Wall time of this invocation: 812 s."
    resumed = {"wall_time_s": 57.0, "ours": {"members": [{}, {}, {}], "reused_runs": 3}}
    line = report._wall_time_line(resumed)
    assert line.startswith("Wall time of this invocation: 57 s (3 of 3 training runs")
    assert "reused" in line
    assert report._wall_time_line({"wall_time_s": 5.0, "ours": None}) == "Wall time of this invocation: 5 s."


def test_experiment_log_is_named_relative_to_the_package() -> None:
    name = report._experiments_file()
    assert name == "mammoflow/reproduce/EXPERIMENTS.md"
    assert not Path(name).is_absolute()
