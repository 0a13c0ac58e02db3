"""The project's one worker pool (:func:`mammoflow.resources.pool_map`): what a worker sees of its caller."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from mammoflow.resources import available_cpus, pool_map


def _env(name: str) -> str | None:
    return os.environ.get(name)


def _where(_: int) -> str:
    return os.getcwd()


def _logs(i: int) -> int:
    logging.getLogger("mammoflow.test_pool").warning("job %d of pid %d", i, os.getpid())
    return i * i


@pytest.mark.skipif(available_cpus() < 2, reason="needs 2 CPUs for a pool of 2 workers")
def test_each_pool_sees_the_environment_and_folder_its_caller_has_when_it_starts(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    # Workers fork from one long-lived server: a later pool must still see what changed since it started.
    monkeypatch.setenv("MAMMOFLOW_POOL_PROBE", "first")
    assert list(pool_map(_env, ["MAMMOFLOW_POOL_PROBE"] * 8, 2)) == ["first"] * 8
    monkeypatch.setenv("MAMMOFLOW_POOL_PROBE", "second")
    monkeypatch.setenv("MAMMOFLOW_POOL_PROBE_NEW", "new")
    monkeypatch.chdir(tmp_path)
    assert list(pool_map(_env, ["MAMMOFLOW_POOL_PROBE", "MAMMOFLOW_POOL_PROBE_NEW"] * 4, 2)) == ["second", "new"] * 4
    assert set(pool_map(_where, range(8), 2)) == {str(tmp_path)}
    monkeypatch.delenv("MAMMOFLOW_POOL_PROBE")
    assert list(pool_map(_env, ["MAMMOFLOW_POOL_PROBE"] * 8, 2)) == [None] * 8


@pytest.mark.skipif(available_cpus() < 2, reason="needs 2 CPUs for a pool of 2 workers")
def test_results_and_worker_logs_come_back_in_job_order(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="mammoflow.test_pool"):
        assert list(pool_map(_logs, range(12), 2)) == [i * i for i in range(12)]
    jobs = [r.getMessage().split()[1] for r in caplog.records if r.name == "mammoflow.test_pool"]
    pids = {r.getMessage().split()[-1] for r in caplog.records if r.name == "mammoflow.test_pool"}
    assert jobs == [str(i) for i in range(12)]
    assert str(os.getpid()) not in pids  # the jobs ran in the workers, not here
