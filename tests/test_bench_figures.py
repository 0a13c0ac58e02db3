"""The benchmark figures file (runs/bench.json): goals checked on the ratio to the floor, and a partial run keeps
the other benchmarks' figures instead of wiping them."""

from __future__ import annotations

import json

import pytest
from tests.benchmarks import figures


@pytest.fixture
def bench_file(tmp_path, monkeypatch):
    path = tmp_path / "runs" / "bench.json"
    monkeypatch.setenv(figures.BENCH_ENV, str(path))
    monkeypatch.setattr(figures, "_FIGURES", [])
    return path


def test_goal_is_checked_on_the_ratio_when_there_is_a_floor(bench_file) -> None:
    figures.start("bench_a")
    slow = figures.record("read / bare read", 80.0, "ms", floor=20.0, goal="<= 1.5")
    fast = figures.record("cache speed-up", 12.0, "x", goal=">= 10")
    plain = figures.record("rate", 5.0, "images/s")
    assert (slow.ratio, slow.met) == (4.0, False)
    assert (fast.ratio, fast.met) == (None, True)
    assert plain.met is None
    with pytest.raises(ValueError):
        figures.record("bad", 1.0, "x", goal="about 2")


def test_a_partial_run_keeps_the_other_benchmarks_figures(bench_file) -> None:
    figures.start("bench_a")
    figures.record("a1", 1.0, "s", floor=2.0, goal="<= 1")
    figures.start("bench_b")
    figures.record("b1", 3.0, "s")
    figures.write(figures.figures(), ["bench_a", "bench_b"], [])
    figures._FIGURES.clear()
    figures.start("bench_b")
    figures.record("b1", 4.0, "s")
    path, every = figures.write(figures.figures(), ["bench_b"], [])
    doc = json.loads(path.read_text())
    assert path == bench_file
    assert {(f["benchmark"], f["name"], f["value"]) for f in doc["figures"]} == {("bench_a", "a1", 1.0),
                                                                                ("bench_b", "b1", 4.0)}
    assert doc["figures"][0]["ratio"] == 0.5 and doc["figures"][0]["met"] is True
    assert "| a1 | 1 s | 2 | 0.5 | <= 1 | yes |" in figures.table(every)
