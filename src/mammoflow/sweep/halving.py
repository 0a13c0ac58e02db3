"""Synchronous successive halving on Ray Tune (``scheduler: {name: sha, grace_period, reduction_factor}``).

Ray's ASHA is asynchronous: a trial that reaches an empty rung has nothing to be compared with and goes on, so
the first arrivals at every rung are promoted before the rung fills (the demo spec: 10 of 16 trial-epochs where
successive halving needs 8). Ray's HyperBand is synchronous but spreads the trials over brackets, smallest first
(the demo's 4 trials: 16 of 16). This scheduler is plain synchronous successive halving on the epoch axis:

- at each rung (:func:`mammoflow.sweep.spec.rung_epochs`: epochs 1, 2 for grace 1, factor 2, 4-epoch trials) a
  trial is PAUSED until every trial that can still reach the rung has reported it; then the best ``1/rf`` go on
  (at least one; ties by trial id, NaN counts as the worst) and the rest are stopped (``stopped_early``);
- a paused trial frees its CPU/GPU: Ray saves no checkpoint of a function trainable (``"Got empty checkpoint"``
  at debug level) and stops its process; when promoted it starts a new process and ``train()`` resumes from the
  trial's run folder after its last finished epoch. So the trial-epochs run are exactly
  :func:`mammoflow.sweep.spec.expected_trial_epochs`, with the same survivors as the full grid's top-k at each rung;
- every trial of the sweep must be able to run or pause: ``max_concurrent`` (which counts paused trials) below the
  number of trials would leave the first rung waiting forever, and is refused (:func:`check_concurrency`).
  Parallelism is bounded by the trials' ``resources`` instead;
- each pause leaves a marker ``RUN/pauses/<epoch>-<ns>.json``, so the trial's next start is recorded as the
  resumption of a pause (``resumes_pause`` in its attempt record) and not counted as a retry;
- the rung table is kept in ``OUT/sha_rungs.json`` (atomic writes): Ray saves no scheduler state, so after a
  driver ``--resume`` the scheduler reads it back, and each restarted trial first re-reports its last finished
  epoch, so a trial paused at a rung is paused (or promoted, or stopped) again instead of training past it.

Built on Ray Tune's DeveloperAPI (``TrialScheduler``); ``tests/test_sweep_halving.py`` runs it on a real local
Ray to pin the pause path of Ray 2.60.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from mammoflow import storage
from mammoflow.errors import ConfigError
from mammoflow.sweep.results import write_pause_marker
from mammoflow.sweep.spec import rung_epochs, survivors

log = logging.getLogger(__name__)

STATE_FILE = "sha_rungs.json"  # OUT/sha_rungs.json
OPTIONS = ("grace_period", "reduction_factor")


def check_concurrency(n_trials: int, max_concurrent: int | None, where: str) -> None:
    """Refuse a ``max_concurrent`` below the number of trials: paused trials count against it in Ray, so the trials
    beyond it would never start and the first rung would never fill."""
    if max_concurrent is not None and max_concurrent < n_trials:
        raise ConfigError(f"{where}: max_concurrent {max_concurrent} is below the sweep's {n_trials} trials, and "
                          "scheduler sha pauses every trial at a rung until all have reached it (a paused trial "
                          "counts as running for max_concurrent: the sweep would wait forever). Fix: drop "
                          "max_concurrent (the trials' resources bound how many run at once), or use scheduler asha")


def make_sha(options: Mapping[str, Any], *, n_trials: int, max_t: int, metric: str, mode: str,
             out_uri: str | None = None, where: str = "scheduler") -> SyncHalvingScheduler:
    """The scheduler of ``scheduler: {name: sha, ...}``; ConfigError names a bad option."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"{where}: scheduler sha takes {', '.join(OPTIONS)}, not {', '.join(unknown)} (its last "
                          "rung is the trials' own length)")
    grace = options.get("grace_period", 1)
    factor = options.get("reduction_factor", 4)
    if not isinstance(grace, int) or isinstance(grace, bool) or grace < 1 or \
            not isinstance(factor, (int, float)) or factor <= 1:
        raise ConfigError(f"{where}: scheduler sha: grace_period must be a whole number of epochs >= 1 and "
                          f"reduction_factor a number > 1 (got {grace!r}, {factor!r})")
    if grace > max_t:
        raise ConfigError(f"{where}: scheduler sha: grace_period {grace} is longer than the longest trial "
                          f"({max_t} epochs). Fix: a grace_period of at most {max_t}")
    return SyncHalvingScheduler(n_trials, grace_period=grace, reduction_factor=float(factor), max_t=max_t,
                                metric=metric, mode=mode, out_uri=out_uri)


class SyncHalvingScheduler(FIFOScheduler):
    """Synchronous successive halving over ``n_trials`` trials, time axis ``epoch`` (see the module doc).

    State, by trial id: ``scores[rung][trial]`` (the metric at the rung, signed so that lower is better),
    ``kept[rung]`` (the trials that go on, once the rung is decided), ``gone`` (trials that ended: they no longer
    count for later rungs), ``promoted`` (paused winners waiting to restart) and ``doomed`` (losers still pausing:
    stopped once Ray has paused them).
    """

    _supports_buffered_results = False  # one result at a time: a rung decision must see each epoch

    def __init__(self, n_trials: int, *, grace_period: int = 1, reduction_factor: float = 4, max_t: int,
                 metric: str = "val_loss", mode: str = "min", out_uri: str | None = None,
                 time_attr: str = "epoch") -> None:
        super().__init__()
        self._metric, self._mode = metric, mode
        self.n_trials, self.factor, self.time_attr = n_trials, reduction_factor, time_attr
        self.rungs = rung_epochs(grace_period, reduction_factor, max_t)
        self.out_uri = out_uri
        self.scores: dict[int, dict[str, float]] = {r: {} for r in self.rungs}
        self.kept: dict[int, list[str]] = {}
        self.gone: set[str] = set()
        self.promoted: set[str] = set()
        self.doomed: set[str] = set()
        self._loaded = False
        self._busy = False

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles the scheduler into tuner.pkl: an unpickled copy (a driver --resume) reads the rung table
        from OUT/sha_rungs.json again, and holds none of the paused trials, which Tune restores as PENDING."""
        return {**self.__dict__, "_loaded": False, "_busy": False, "promoted": set(), "doomed": set()}

    # ----------------------------------------------------------------------------------- Tune's interface
    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        return True

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        self._load()
        tid = trial.trial_id
        self.promoted.discard(tid)
        # A trial that reports is alive, even one that had left (a driver --resume with restart_errored restarts the
        # trials that failed for good): counted as gone, it would be left out of its rung's ranking and stay paused.
        self.gone.discard(tid)
        epoch = int(result.get(self.time_attr, 0) or 0)
        if result.get("run_finished") or epoch not in self.scores:
            return TrialScheduler.CONTINUE
        if epoch in self.kept:  # re-reported after a restart (pause, retry, driver --resume): decided already
            return TrialScheduler.CONTINUE if tid in self.kept[epoch] else TrialScheduler.STOP
        self.scores[epoch][tid] = self._signed(result.get(self._metric))
        if not self._full(epoch):
            self._save()
            name = result.get("trial_name")
            if self.out_uri and name:
                write_pause_marker(storage.join(self.out_uri, "trials", str(name)), epoch)
            log.debug("sha: trial %s paused at epoch %d (%d of the rung's trials in)", tid, epoch,
                      len(self.scores[epoch]))
            return TrialScheduler.PAUSE
        self._decide(tune_controller, epoch, running=tid)
        return TrialScheduler.CONTINUE if tid in self.kept[epoch] else TrialScheduler.STOP

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self._leave(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self._leave(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        # Ray calls this also for a failure it will retry (it has stopped the trial's actor, status ERROR, and adds
        # the trial again as PENDING): only a final failure takes the trial out of the rungs.
        if not (trial.status == Trial.ERROR and trial.should_recover()):
            self._leave(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        self._load()
        self._stop_doomed(tune_controller)
        trials = tune_controller.get_trials()
        for trial in trials:
            if trial.status == Trial.PENDING:
                return trial
        for trial in trials:
            if trial.status == Trial.PAUSED and trial.trial_id in self.promoted:
                return trial
        if trials and not any(t.status in (Trial.RUNNING, Trial.PENDING) for t in trials) and \
                any(t.status == Trial.PAUSED for t in trials):
            self._unblock(tune_controller)
        return None

    def debug_string(self) -> str:
        return (f"Synchronous successive halving: rungs {self.rungs}, factor {self.factor:g}; "
                + ", ".join(f"epoch {r}: {len(self.scores[r])} in" + (f", {len(self.kept[r])} kept"
                                                                      if r in self.kept else "")
                            for r in self.rungs))

    # ----------------------------------------------------------------------------------- rungs
    def _signed(self, value: Any) -> float:
        if not isinstance(value, (int, float)) or math.isnan(value):
            return math.inf
        return float(value) if self._mode == "min" else -float(value)

    def _full(self, rung: int) -> bool:
        """Whether every trial that can still reach ``rung`` has reported it."""
        reached = self.scores[rung]
        return len(reached) + len(self.gone.difference(reached)) >= self.n_trials

    def _decide(self, tune_controller, rung: int, running: str | None = None) -> None:
        scores = self.scores[rung]
        ranked = sorted((t for t in scores if t not in self.gone or t == running), key=lambda t: (scores[t], t))
        self.kept[rung] = ranked[:survivors(len(scores), self.factor)]
        self._save()
        log.info("sha: epoch %d ranked %d trials, %d go on", rung, len(scores), len(self.kept[rung]))
        for tid in ranked:
            if tid != running:
                (self.promoted if tid in self.kept[rung] else self.doomed).add(tid)
        self._stop_doomed(tune_controller)

    def _stop_doomed(self, tune_controller) -> None:
        """Stop the losers Ray has finished pausing (one still saving its result is stopped on a later call)."""
        if not self.doomed:
            return
        with self._quiet():
            for trial in list(tune_controller.get_trials()):
                if trial.trial_id not in self.doomed:
                    continue
                if trial.status in (Trial.PAUSED, Trial.PENDING):
                    self.doomed.discard(trial.trial_id)
                    tune_controller.stop_trial(trial)
                    self.gone.add(trial.trial_id)
                elif trial.status in (Trial.TERMINATED, Trial.ERROR):
                    self.doomed.discard(trial.trial_id)
        self._save()

    def _leave(self, tune_controller, trial: Trial) -> None:
        """A trial ended (finished, stopped, failed for good): rungs it can no longer reach may now be full."""
        tid = trial.trial_id
        self.promoted.discard(tid)
        self.doomed.discard(tid)
        if tid in self.gone:
            return
        self.gone.add(tid)
        self._save()
        if self._busy:
            return
        with self._quiet():
            for rung in self.rungs:
                if rung not in self.kept and self.scores[rung] and self._full(rung):
                    self._decide(tune_controller, rung)

    def _unblock(self, tune_controller) -> None:
        """Nothing runs and nothing was promoted: decide every rung with results (only if ``n_trials`` was more
        than the trials Ray made; a safety net so a sweep can never hang)."""
        log.warning("sha: every trial is paused and no rung is full (%d trials expected): deciding the rungs "
                    "with the trials that reached them", self.n_trials)
        with self._quiet():
            for rung in self.rungs:
                if rung not in self.kept and self.scores[rung]:
                    self._decide(tune_controller, rung)

    @contextmanager
    def _quiet(self) -> Iterator[None]:
        """Stopping a trial calls back into on_trial_remove: no decisions from inside a decision."""
        busy, self._busy = self._busy, True
        try:
            yield
        finally:
            self._busy = busy

    # ----------------------------------------------------------------------------------- OUT/sha_rungs.json
    def _state_uri(self) -> str | None:
        return storage.join(self.out_uri, STATE_FILE) if self.out_uri else None

    def _save(self) -> None:
        uri = self._state_uri()
        if uri is None:
            return
        doc = {"n_trials": self.n_trials, "rungs": self.rungs, "reduction_factor": self.factor,
               "scores": {str(r): self.scores[r] for r in self.rungs},
               "kept": {str(r): ids for r, ids in self.kept.items()}, "gone": sorted(self.gone),
               "saved_at": round(time.time(), 3)}
        storage.put_bytes(uri, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())

    def _load(self) -> None:
        """Read the rung table back once (a driver --resume: Ray restores the scheduler as it was built)."""
        if self._loaded:
            return
        self._loaded = True
        uri = self._state_uri()
        if uri is None or not storage.exists(uri):
            return
        doc = json.loads(storage.get_bytes(uri))
        if doc.get("rungs") != self.rungs or doc.get("n_trials") != self.n_trials:
            raise ConfigError(f"{uri}: rungs {doc.get('rungs')} of {doc.get('n_trials')} trials, but this sweep "
                              f"has rungs {self.rungs} of {self.n_trials}. Fix: resume with the same spec, or "
                              "use a new --out")
        self.scores = {r: {t: float(v) for t, v in doc["scores"].get(str(r), {}).items()} for r in self.rungs}
        self.kept = {int(r): list(ids) for r, ids in doc["kept"].items()}
        self.gone = set(doc["gone"])
        log.info("sha: rung table read back from %s (%s)", uri, self.debug_string())

