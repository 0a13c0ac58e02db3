"""``retrain_once``: the retraining run on one machine, its steps in order in one process, resumable.

scan -> incremental ingest -> preprocess -> build-dataset (splits kept) -> train (warm start from the champion, or
from scratch) -> evaluate challenger AND champion on the same evaluation split -> bless -> register (+ promote when
blessed) -> record and push the outcome. These are the steps of :mod:`mammoflow.retrain.stages`, the very functions
the KFP retraining pipeline runs one per pod.

Work folder (``work_dir``, local; see :class:`~mammoflow.retrain.run.Layout`)::

    state.json                 next retrain id, the records baseline, the retrain in progress, metric totals
    history.jsonl              one line per run (nothing new, blessed, refused, failed)
    records/r0003/             incremental ingest output (records + split_plan.json + ingest_delta.json)
    preprocessed/              one shared preprocessing output, resumed per record (only new images are done)
    runs/r0003/                config.json (frozen by the scan), steps/<step>.json, eval/{challenger,champion}/,
                               verdict.json, verdict.md, result.json
    cache/                     local copies of shards and models

and under ``storage_root`` (local or ``gs://``): ``retrain/<name>/r0003/data`` (shards) and ``.../train`` (the run).

A run that stops half-way (killed, preempted, an error) is resumed by the next call with the same config: the steps
it recorded are not done again, the others resume. With another config it is abandoned and a new one starts from
the last completed ingest. ``nothing new`` (no file changed, or no record added, changed or removed) stops before
any training and is recorded and pushed like any other outcome.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mammoflow.errors import ConfigError, MammoflowError
from mammoflow.registry import utc_now, who
from mammoflow.retrain import stages
from mammoflow.retrain.blessing import Verdict
from mammoflow.retrain.config import RetrainConfig
from mammoflow.retrain.run import Layout, RetrainRun
from mammoflow.retrain.state import HISTORY_FILE, STATE_FILE, RetrainResult, RetrainState, count_records

__all__ = ["HISTORY_FILE", "LOCK_FILE", "STATE_FILE", "RetrainResult", "RetrainState", "count_records",
           "retrain_forever", "retrain_once", "run_steps", "work_lock"]

log = logging.getLogger(__name__)

LOCK_FILE = ".retrain.lock"


@contextlib.contextmanager
def work_lock(work: Path) -> Iterator[None]:
    """One retrain at a time per work folder (a second process gets a clear error, not a corrupted state)."""
    import fcntl

    work.mkdir(parents=True, exist_ok=True)
    with open(work / LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{work}: another retrain is running on this work folder. Fix: wait for it, or "
                              "give this one another work_dir") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_steps(run: RetrainRun, *, force_reason: str | None = None, by: str | None = None,
              actor: str | None = None) -> None:
    """The run's steps in order, in this process; a step that an earlier attempt of the same retrain recorded is
    not done again. ``by``: who asked (a forced blessing's author); ``actor``: who registers and promotes."""
    actor = actor or by or f"mammoflow-retrain ({who()})"

    def once(step: str, do: Callable[[], Any]) -> Any:
        return run.steps[step] if step in run.steps else do()

    if not stages.scan(run)["changed"]:
        return
    if once("ingest", lambda: stages.ingest(run))["nothing_new"]:
        return
    once("preprocess", lambda: stages.preprocess(run))
    once("build", lambda: stages.build(run))
    trained = once("train", lambda: stages.train(run))
    evals = Path(run.at("eval"))
    if "bless" in run.steps:
        verdict = Verdict.from_dict(run.steps["bless"])
    else:
        stages.evaluate(run, trained["run_uri"], evals / "challenger")
        champion = None
        if trained["champion_uri"]:
            champion = evals / "champion"
            stages.evaluate(run, trained["champion_uri"], champion)
        verdict = stages.bless(run, evals / "challenger", champion, force_reason=force_reason, by=by)
    version = once("register", lambda: {"version": stages.register(run, evals / "challenger", verdict,
                                                                    by=actor).version})["version"]
    if verdict.blessed:
        once("promote", lambda: stages.promote(run, version, verdict, by=actor))


def retrain_once(cfg: RetrainConfig, *, force_bless_reason: str | None = None, by: str | None = None,
                 pipeline_run_id: str | None = None) -> RetrainResult:
    """One retraining run (see the module docstring). ``force_bless_reason``: bless the challenger whatever the
    verdict (an intended change, e.g. a new label definition), recorded in the audit log with ``by`` and the reason.
    Automated decisions are recorded as the retrain job, under the account it runs as."""
    layout = Layout.local(cfg)
    with work_lock(Path(layout.home)):
        run_id = f"local-{utc_now().strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"
        run = RetrainRun(cfg, layout, run_id, pipeline_run_id=pipeline_run_id)
        try:
            run_steps(run, force_reason=force_bless_reason, by=by)
        except BaseException as exc:
            if not isinstance(exc, KeyboardInterrupt):
                stages.finalize(run, failed=True, error=f"{type(exc).__name__}: {exc}")
            raise
        return stages.finalize(run, failed=False)[0]


def retrain_forever(cfg: RetrainConfig, interval: float, *, max_runs: int | None = None,
                    stop: threading.Event | None = None, by: str | None = None) -> list[RetrainResult]:
    """:func:`retrain_once` every ``interval`` seconds (from the end of one run to the start of the next).

    A failed run is logged, recorded and pushed, and the loop goes on (a full disk or a network error should not end
    a week of unattended retraining); ``stop`` (or Ctrl-C) ends it. Returns the results of the runs made.
    """
    if interval <= 0:
        raise ConfigError(f"interval must be > 0 seconds, got {interval}")
    stop = stop or threading.Event()
    results: list[RetrainResult] = []
    while not stop.is_set() and (max_runs is None or len(results) < max_runs):
        try:
            results.append(retrain_once(cfg, by=by))
        except MammoflowError as exc:
            log.error("retrain failed: %s (next attempt in %.0f s)", exc, interval)
            results.append(RetrainResult(status="failed", error=str(exc)))
        except Exception as exc:  # noqa: BLE001 - an unattended loop outlives one bad run; it is logged and pushed
            log.exception("retrain failed unexpectedly (next attempt in %.0f s)", interval)
            results.append(RetrainResult(status="failed", error=f"{type(exc).__name__}: {exc}"))
        if max_runs is not None and len(results) >= max_runs:
            break
        stop.wait(interval)
    return results
