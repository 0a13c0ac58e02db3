"""The figures a benchmark run measures, gathered in one machine-readable file (``runs/bench.json``).

Each benchmark calls :func:`record` for every figure it prints; ``python -m tests.benchmarks`` writes them all, with
the goal each figure has (from issue 18's table) and whether this run met it, then prints the table. A figure is
usually a ratio of ours to a *floor* (the bare library call doing the same work), so the machine's speed cancels.
"""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

BENCH_FILE = Path("runs") / "bench.json"
BENCH_ENV = "MAMMOFLOW_BENCH_FILE"  # where to write instead (tests of this module)


@dataclass(frozen=True)
class Figure:
    benchmark: str  # the bench_* module that measured it
    name: str
    value: float
    unit: str
    floor: float | None = None  # the bare operation's figure in the same unit, when the figure compares to one
    ratio: float | None = None  # value / floor
    goal: str | None = None  # e.g. "<= 1.5" (applies to the ratio when there is a floor, else to the value)
    met: bool | None = None
    note: str = ""


_FIGURES: list[Figure] = []
_current = {"benchmark": ""}


def start(benchmark: str) -> None:
    """Figures recorded from now on belong to ``benchmark``."""
    _current["benchmark"] = benchmark


def _met(goal: str | None, x: float | None) -> bool | None:
    if goal is None or x is None or not math.isfinite(x):
        return None
    op, _, bound = goal.partition(" ")
    limit = float(bound)
    return {"<=": x <= limit, ">=": x >= limit, "<": x < limit, ">": x > limit}[op]


def record(name: str, value: float, unit: str, *, floor: float | None = None, goal: str | None = None,
           note: str = "") -> Figure:
    """Keep one figure of this run. ``goal`` is ``"<= X"`` or ``">= X"``, checked on the ratio when ``floor`` is
    given, else on the value."""
    if goal is not None and goal.partition(" ")[0] not in ("<=", ">=", "<", ">"):
        raise ValueError(f"goal must look like '<= 1.5' or '>= 10', got {goal!r}")
    ratio = value / floor if floor else None
    fig = Figure(_current["benchmark"], name, float(value), unit, None if floor is None else float(floor), ratio, goal,
                 _met(goal, ratio if floor is not None else value), note)
    _FIGURES.append(fig)
    return fig


def figures() -> list[Figure]:
    return list(_FIGURES)


def table(figs: list[Figure]) -> str:
    """The figures as a Markdown table (the README's benchmark section shows it)."""
    rows = ["| figure | measured | floor | ratio | goal | met |", "| --- | --- | --- | --- | --- | --- |"]
    for f in figs:
        met = {True: "yes", False: "**no**", None: ""}[f.met]
        rows.append(f"| {f.name} | {f.value:.4g} {f.unit} | {'' if f.floor is None else f'{f.floor:.4g}'} | "
                    f"{'' if f.ratio is None else f'{f.ratio:.3g}'} | {f.goal or ''} | {met} |")
    return "\n".join(rows)


def write(figs: list[Figure], benchmarks: list[str], failed: list[str]) -> tuple[Path, list[Figure]]:
    """Write ``runs/bench.json`` (or ``$MAMMOFLOW_BENCH_FILE``) atomically: this run's figures, plus those of the
    benchmarks it did not run, kept from the file's previous content (so ``make bench`` then ``python -m
    tests.benchmarks preprocess`` leaves every figure there). Returns the path and every figure it holds."""
    from mammoflow.storage import atomic_write_text

    path = Path(os.environ.get(BENCH_ENV) or BENCH_FILE)
    kept: list[Figure] = []
    if path.is_file():
        try:
            kept = [Figure(**f) for f in json.loads(path.read_text())["figures"] if f.get("benchmark") not in benchmarks]
        except (ValueError, KeyError, TypeError):
            kept = []  # an unreadable old file is replaced, not merged
    allf = kept + figs
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"written": datetime.now(UTC).isoformat(timespec="seconds"),
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
           "benchmarks": benchmarks, "failed": failed, "figures": [asdict(f) for f in allf]}
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    return path, allf

