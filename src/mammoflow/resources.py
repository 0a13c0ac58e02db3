"""What this process may use of the machine (or of its pod): CPUs, and the one worker pool that uses them
(:func:`pool_map`, for ingest and preprocess)."""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

J = TypeVar("J")
R = TypeVar("R")


def available_cpus(cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup") -> int:
    """CPUs this process may use: the container's CPU limit (cgroup v2 ``cpu.max`` or v1 CFS quota), else the
    CPUs it may run on. ``os.cpu_count()`` gives the node's count, which would start a Ray with far more trial
    slots than the pod's limit allows."""
    import math

    root = Path(cgroup_root)
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = period = None
    try:
        if (root / "cpu.max").is_file():
            q, p = (root / "cpu.max").read_text().split()[:2]
            quota, period = (None if q == "max" else int(q)), int(p)
        elif (root / "cpu" / "cpu.cfs_quota_us").is_file():
            q = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
            quota = q if q > 0 else None
            period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        quota = None
    if quota is not None and period:
        count = min(count, max(1, math.ceil(quota / period)))
    return count


# --------------------------------------------------------------------------------------------- the worker pool

# A process's first pool costs about half a second to start (its forkserver imports NumPy, OpenCV and pydicom),
# and each worker holds its own copy of a job's images: each gets at least this many jobs, so small runs stay in
# this process.
MIN_JOBS_PER_WORKER = 4


def worker_count(requested: int | None, n_jobs: int) -> int:
    """Processes for ``n_jobs`` jobs: ``requested``, or (``None``) every CPU this process may use (the pod's limit
    on a cluster, :func:`available_cpus`), never more than one per :data:`MIN_JOBS_PER_WORKER` jobs."""
    wanted = available_cpus() if requested is None else max(1, int(requested))
    return max(1, min(wanted, n_jobs // MIN_JOBS_PER_WORKER))


def pool_map(work: Callable[[J], R], jobs: Sequence[J], processes: int, *, setup: Callable[..., None] | None = None,
             setup_args: tuple[Any, ...] = (), desc: str = "jobs", unit: str = "it", chunksize: int = 1
             ) -> Iterator[R]:
    """``work(job)`` of every job, in job order, computed by ``processes`` worker processes (the one pool of the
    project: ingest and preprocess use it).

    Workers are forked from a forkserver (see :func:`_pool_context`): a clean single-threaded process that has
    imported NumPy, OpenCV, pydicom and the workers' modules once, so a worker starts in milliseconds instead of
    importing them again (not forked from this process: forking a process that holds threads can leave a lock
    held forever in the child). Each worker gets this process's environment and working folder as they are when
    the pool starts, as a spawned one would. Workers ignore Ctrl-C (the whole group gets it: the parent alone handles it), run OpenCV on one thread (one
    process per core already), run ``setup(*setup_args)`` once, and send the log records of each job back with its
    result: they are handled here, in job order, by this process's handlers. No worker outlives the iteration: SIGTERM ends this process with exit code 143 (through
    Python, see :func:`sigterm_as_exit`) and the pool is terminated on any exit that is not the end of the jobs
    (an error, Ctrl-C, SIGTERM, the caller closing the iterator). ``work`` and ``setup`` must be module-level
    functions (they are pickled by name).
    """
    from mammoflow.logs import progress

    level = logging.getLogger().getEffectiveLevel()
    with sigterm_as_exit():  # before the pool exists: a SIGTERM never finds workers without this process's handler
        pool = _pool_context().Pool(processes, initializer=_worker_init,
                                    initargs=(setup, setup_args, level, dict(os.environ)))
        try:
            results = pool.imap(functools.partial(_logged, work), jobs, chunksize=chunksize)
            for result, records in progress(results, desc=desc, total=len(jobs), unit=unit):
                _handle(records)
                yield result
            pool.close()
        except BaseException:  # SIGTERM, Ctrl-C, an error, or the caller stopped reading: no worker outlives it
            pool.terminate()
            raise
        finally:
            pool.join()


class _Collect(logging.Handler):
    """A worker's one log handler: keeps the records of the job being run, to send them with its result."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args, record.exc_info = record.getMessage(), None, None  # picklable whatever the args
        self.records.append(record)


_COLLECT = _Collect()


# What every worker needs, imported once by the forkserver (names, not imports: this module stays at the bottom of
# the project's layers). A name that does not import is skipped by the server; the worker imports it as usual.
WORKER_PRELOAD = ("numpy", "cv2", "pydicom", "pydicom.pixels", "pylibjpeg", "openjpeg", "libjpeg", "rle",
                  "mammoflow.io.dicom", "mammoflow.io.images", "mammoflow.io.handoff", "mammoflow.sources.parallel",
                  "mammoflow.sources.cbis_images", "mammoflow.sources.dicom_dir", "mammoflow.sources.dicom_scan",
                  "mammoflow.sources.mias", "mammoflow.sources.mias_rois", "mammoflow.storage.copies",
                  "mammoflow.preprocess.run", "mammoflow.preprocess.chain", "mammoflow.preprocess.ops")


def _pool_context() -> Any:
    """The pool's start method: ``forkserver`` where the platform has it (Linux, macOS), else ``spawn``.

    The forkserver is started once per process, by the first pool, with :data:`WORKER_PRELOAD` imported; later
    pools (preprocess after ingest in one ``pipeline run``, every test of a session) fork from it at once. It is
    single-threaded, so forking it is safe, and it exits with this process (it reads a pipe that closes then,
    whatever ends this process)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(WORKER_PRELOAD))  # read when the server starts; later calls change nothing
    return ctx


def _worker_init(setup: Callable[..., None] | None, setup_args: tuple[Any, ...], level: int,
                 environ: dict[str, str]) -> None:
    # The forkserver holds the environment of the moment it started: the pool's own is this one.
    os.environ.clear()
    os.environ.update(environ)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent alone handles it
    root = logging.getLogger()
    root.handlers[:] = [_COLLECT]
    root.setLevel(level)
    import cv2

    cv2.setNumThreads(1)  # one worker process per core already: OpenCV's own threads would only contend
    if setup is not None:
        setup(*setup_args)


def _logged(work: Callable[[J], R], job: J) -> tuple[R, list[logging.LogRecord]]:
    _COLLECT.records = []
    try:
        return work(job), _COLLECT.records
    finally:
        _COLLECT.records = []


def _handle(records: list[logging.LogRecord]) -> None:
    for record in records:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """While a pool works, SIGTERM (a pod being stopped) ends this process through Python, exit code 143, so the
    pool is terminated on the way out instead of leaving its workers running. A handler someone else installed is
    left alone, as is everything off the main thread."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
