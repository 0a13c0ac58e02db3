"""Ingest on every CPU: each file's decode, validation and hashing in the project's one worker pool
(:func:`mammoflow.resources.pool_map`, the same as preprocess's), merged in file order.

A reader splits its loop in two: the work on one file, a module-level function ``work(context, job)`` that returns
what the file gives or raises :class:`~mammoflow.errors.InputError`, run by :func:`map_files` (in worker processes
when there are enough files); and the bookkeeping, in file order, in the reader's process (duplicates, quarantine,
accounting). So the records folder is byte-identical whatever the number of workers, and so is the log: each
worker's log records are handled by this process, in file order. Workers send an error back as its fields
(:class:`Failed`: an InputError does not pickle). Any other exception stops the ingest as it would serially, and no
worker outlives it (SIGTERM: exit code 143).

``workers``: the processes to use; None is every CPU this process may use
(:func:`mammoflow.resources.worker_count`); a streamed data root (:class:`~mammoflow.storage.copies.StreamedTree`)
must be read with 1, because its window of local files lives in this process (:func:`mammoflow.steps.ingest` sees
to it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from mammoflow.errors import InputError
from mammoflow.logs import progress
from mammoflow.resources import pool_map

log = logging.getLogger(__name__)

C = TypeVar("C")
J = TypeVar("J")
R = TypeVar("R")


@dataclass(frozen=True)
class Failed:
    """An :class:`InputError` as plain fields, to cross a process boundary."""

    path: str
    problem: str
    fix: str
    code: str
    record_id: str | None

    @classmethod
    def of(cls, err: InputError) -> Failed:
        return cls(err.path, err.problem, err.fix, err.code, err.record_id)

    def error(self) -> InputError:
        return InputError(self.path, self.problem, self.fix, code=self.code, record_id=self.record_id)


def map_files(work: Callable[[C, J], R], context: C, jobs: Sequence[J], n: int, *, desc: str, unit: str
              ) -> Iterator[R | InputError]:
    """``work(context, job)`` of every job in job order, an :class:`InputError` it raised in place of its result;
    in ``n`` worker processes when ``n`` > 1 (``work`` must then be a module-level function, ``context`` and the
    jobs picklable)."""
    if n <= 1:
        for job in progress(jobs, desc=desc, unit=unit):
            yield _error_or(_outcome(work, context, job))
        return
    log.info("%s: %d worker processes", desc, n)
    for outcome in pool_map(_in_worker, jobs, n, setup=_setup, setup_args=(work, context), desc=desc, unit=unit):
        yield _error_or(outcome)


_WORKER: dict[str, Any] = {}


def _setup(work: Callable[[Any, Any], Any], context: Any) -> None:
    _WORKER.update(work=work, context=context)


def _in_worker(job: Any) -> Any:
    return _outcome(_WORKER["work"], _WORKER["context"], job)


def _outcome(work: Callable[[C, J], R], context: C, job: J) -> R | Failed:
    try:
        return work(context, job)
    except InputError as err:
        return Failed.of(err)


def _error_or(outcome: Any) -> Any:
    return outcome.error() if isinstance(outcome, Failed) else outcome
