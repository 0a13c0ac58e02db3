"""Synchronous successive halving (scheduler ``sha``, mammoflow.sweep.halving).

Without a Ray runtime: the real scheduler class driven by a small simulator of Tune's controller (its
``get_trials``/``stop_trial`` and the calls it makes to a scheduler), over every order of the trials and random
orders of their results, with Ray's pause of a function trainable (the trial stays RUNNING while Ray "saves" it,
then PAUSED; a promoted trial restarts and resumes after its last epoch): the trial-epochs run are exactly
``expected_trial_epochs`` and the trials that go on at each rung are the true top-k. The same simulator on Ray's
ASHAScheduler runs more. A driver --resume (a new scheduler reading OUT/sha_rungs.json) trains nothing twice and
no trial past an undecided rung.

On a real local Ray (2 CPUs, marked slow): the demo-like sweep through ``run_sweep`` on phantoms, and a fast
file-resuming trainable with one injected failure.
"""

from __future__ import annotations

import itertools
import json
import math
import pickle
import random
from pathlib import Path

import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from mammoflow.errors import ConfigError
from mammoflow.sweep.halving import STATE_FILE, SyncHalvingScheduler, check_concurrency
from mammoflow.sweep.results import node_account, resumes_pause, write_pause_marker
from mammoflow.sweep.spec import expected_trial_epochs, load_spec, rung_epochs, survivors


# ------------------------------------------------------------------------------------------- the simulator
class FakeTrial:
    def __init__(self, trial_id: str, total: int, max_failures: int = 0) -> None:
        self.trial_id, self.total, self.max_failures = trial_id, total, max_failures
        self.status = "PENDING"
        self.done = 0  # epochs in its "run folder"
        self.num_failures = 0
        self.last_result: dict = {}

    def should_recover(self) -> bool:
        return self.num_failures <= self.max_failures

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"{self.trial_id}:{self.status}@{self.done}"


class FakeController:
    """Tune's controller as a scheduler sees it: trials in creation order, PAUSE keeps a trial RUNNING until Ray
    has "saved" it (then PAUSED, its slot free), STOP/stop_trial end it (on_trial_complete or on_trial_remove)."""

    def __init__(self, scheduler, trials: list[FakeTrial], slots: int, scores: dict[str, list[float]],
                 seed: int, reorder: bool = True) -> None:
        self.scheduler, self.trials, self.slots, self.scores = scheduler, trials, slots, scores
        self.rng = random.Random(seed)
        self.reorder = reorder
        self.pausing: set[str] = set()
        self.epochs_run = 0
        self.trained: list[tuple[str, int]] = []  # (trial, epoch) in order: an epoch twice would be a bug
        for t in trials:
            scheduler.on_trial_add(self, t)

    def get_trials(self) -> list[FakeTrial]:
        return list(self.trials)

    def stop_trial(self, trial: FakeTrial) -> None:
        if trial.status in ("PENDING", "PAUSED"):
            self.scheduler.on_trial_remove(self, trial)
        elif trial.status == "RUNNING":
            self.scheduler.on_trial_complete(self, trial, trial.last_result)
        trial.status = "TERMINATED"
        self.pausing.discard(trial.trial_id)

    def _report(self, trial: FakeTrial, epoch: int) -> None:
        result = {"epoch": epoch, "val_loss": self.scores[trial.trial_id][epoch - 1], "trial_name": trial.trial_id,
                  "run_finished": int(epoch == trial.total)}
        trial.last_result = result
        decision = self.scheduler.on_trial_result(self, trial, result)
        if decision == TrialScheduler.PAUSE:
            self.pausing.add(trial.trial_id)
        elif decision == TrialScheduler.STOP or epoch == trial.total:
            self.stop_trial(trial)

    def _start(self, trial: FakeTrial) -> None:
        trial.status = "RUNNING"
        if trial.done and getattr(self.scheduler, "rereports", False):
            self._report(trial, trial.done)  # the trainable's re-report of its last finished epoch (sha)

    def running(self) -> list[FakeTrial]:
        return [t for t in self.trials if t.status == "RUNNING" and t.trial_id not in self.pausing]

    def step(self) -> bool:
        for tid in sorted(self.pausing):  # Ray finishes some pauses before the next result, some after
            trial = next(t for t in self.trials if t.trial_id == tid)
            if self.rng.random() < 0.5 or not self.running():
                self.pausing.discard(tid)
                trial.status = "PAUSED"
        busy = sum(t.status == "RUNNING" for t in self.trials)
        while busy < self.slots:
            trial = self.scheduler.choose_trial_to_run(self)
            if trial is None:
                break
            self._start(trial)
            busy += 1
        running = self.running()
        if not running:
            return bool(self.pausing)
        trial = self.rng.choice(running) if self.reorder else running[0]
        trial.done += 1
        self.epochs_run += 1
        self.trained.append((trial.trial_id, trial.done))
        self._report(trial, trial.done)
        return True

    def run(self, max_steps: int = 10_000) -> None:
        for _ in range(max_steps):
            if not self.step():
                break
        else:  # pragma: no cover - a hang would be the bug
            raise AssertionError(f"the simulated sweep did not end: {self.trials}")
        assert all(t.status == "TERMINATED" for t in self.trials), self.trials


def _scores(n: int, epochs: int, seed: int) -> dict[str, list[float]]:
    """Per-trial validation losses per epoch: random, with a tie and a NaN when there are enough trials."""
    rng = random.Random(seed)
    table = {f"t{i}": [round(rng.uniform(0.2, 1.5), 2) for _ in range(epochs)] for i in range(n)}
    if n >= 3:
        table["t1"][0] = table["t2"][0]  # a tie at the first rung: broken by trial id
        table[f"t{n - 1}"][0] = math.nan  # a NaN counts as the worst
    return table


def _true_survivors(scores: dict[str, list[float]], rungs: list[int], factor: float) -> list[set[str]]:
    """The full grid's top-k at each rung among the previous rung's top-k (NaN worst, ties by id)."""
    alive, kept = sorted(scores), []
    for rung in rungs:
        key = {t: (math.inf if math.isnan(scores[t][rung - 1]) else scores[t][rung - 1], t) for t in alive}
        alive = sorted(alive, key=key.__getitem__)[:survivors(len(alive), factor)]
        kept.append(set(alive))
    return kept


def _sha(n: int, epochs: int, factor: float, out: Path | None = None) -> SyncHalvingScheduler:
    sched = SyncHalvingScheduler(n, grace_period=1, reduction_factor=factor, max_t=epochs, metric="val_loss",
                                 mode="min", out_uri=str(out) if out else None)
    sched.rereports = True
    return sched


CASES = [(4, 4, 2, 2), (4, 4, 2, 1), (4, 4, 2, 3), (6, 5, 2, 2), (9, 9, 3, 3), (5, 3, 2, 2), (3, 4, 4, 2)]


@pytest.mark.parametrize("n, epochs, factor, slots", CASES)
def test_sha_runs_exactly_the_successive_halving_budget_with_the_true_survivors(n, epochs, factor, slots):
    rungs = rung_epochs(1, factor, epochs)
    expected = expected_trial_epochs([epochs] * n, {"name": "sha", "grace_period": 1, "reduction_factor": factor})
    orders = list(itertools.permutations(range(n))) if n <= 4 else \
        [random.Random(k).sample(range(n), n) for k in range(24)]
    for k, order in enumerate(orders):
        scores = _scores(n, epochs, seed=k % 5)
        trials = [FakeTrial(f"t{i}", epochs) for i in order]
        sched = _sha(n, epochs, factor)
        ctl = FakeController(sched, trials, slots, scores, seed=k)
        ctl.run()
        assert ctl.epochs_run == expected, (order, ctl.trained)
        assert len(set(ctl.trained)) == len(ctl.trained)  # no epoch trained twice
        truth = _true_survivors(scores, rungs, factor)
        for rung, kept in zip(rungs, truth, strict=True):
            assert set(sched.kept[rung]) == kept, (rung, order)
        reached_end = {t.trial_id for t in trials if t.done == epochs}
        assert reached_end == (truth[-1] if truth else {t.trial_id for t in trials})


@pytest.mark.filterwarnings("ignore:All-NaN slice")  # ASHA's cutoff over a rung holding only the NaN trial
def test_the_demo_budget_is_half_the_grid_and_asha_runs_more_in_the_same_simulator():
    sha_runs, asha_runs = [], []
    for k, order in enumerate(itertools.permutations(range(4))):
        scores = _scores(4, 4, seed=k)
        for make, runs in ((lambda: _sha(4, 4, 2), sha_runs), (_asha, asha_runs)):
            ctl = FakeController(make(), [FakeTrial(f"t{i}", 4) for i in order], 2, scores, seed=k)
            ctl.run()
            runs.append(ctl.epochs_run)
    assert set(sha_runs) == {8}  # 8 of 16 in every order
    assert min(asha_runs) >= 8 and sum(asha_runs) / len(asha_runs) > 9  # the first arrivals at a rung go on


def _asha() -> ASHAScheduler:
    sched = ASHAScheduler(time_attr="epoch", max_t=4, grace_period=1, reduction_factor=2)
    sched.set_search_properties("val_loss", "min")
    return sched


@pytest.mark.parametrize("when", [0, 1])
def test_a_trial_retried_after_a_failure_still_counts_once(when):
    """Ray calls on_trial_error also for a failure it retries: the trial stays in its rung. ``when``: the failure
    hits a trial in its first epoch, or a promoted trial in its second (it restarts after epoch 1)."""
    scores = _scores(4, 4, seed=1)
    trials = [FakeTrial(f"t{i}", 4, max_failures=1) for i in range(4)]
    sched = _sha(4, 4, 2)
    ctl = FakeController(sched, trials, 2, scores, seed=3, reorder=False)
    while not (victims := [t for t in ctl.running() if t.done == when and (when == 0 or t.trial_id in
                                                                            sched.kept.get(1, []))]):
        assert ctl.step()
    victim = victims[0]
    victim.num_failures += 1  # Tune: handle_error, stop the actor (ERROR), on_trial_error, requeue as PENDING
    victim.status = "ERROR"
    sched.on_trial_error(ctl, victim)
    victim.status = "PENDING"
    ctl.run()
    assert ctl.epochs_run == 8 and len(set(ctl.trained)) == 8
    assert set(sched.kept[2]) == _true_survivors(scores, [1, 2], 2)[-1]


def test_a_trial_failing_for_good_leaves_the_rung_to_the_others():
    scores = _scores(4, 4, seed=2)
    trials = [FakeTrial(f"t{i}", 4) for i in range(4)]
    sched = _sha(4, 4, 2)
    ctl = FakeController(sched, trials, 2, scores, seed=0, reorder=False)
    ctl.step()  # t0 reports epoch 1 and pauses
    victim = next(t for t in trials if t.status == "RUNNING" and t.done == 0)
    victim.num_failures = 1
    sched.on_trial_error(ctl, victim)  # a final failure: Tune then stops it as ERROR
    victim.status = "ERROR"
    ctl.trials.remove(victim)
    ctl.run()
    assert victim.trial_id not in sched.scores[1] and len(sched.scores[1]) == 3
    assert len(sched.kept[1]) == 1  # 3 reached the rung: the best 1 of 3 goes on


def test_a_driver_resume_reads_the_rung_table_back_and_trains_nothing_past_a_rung(tmp_path):
    scores = _scores(4, 4, seed=4)
    trials = [FakeTrial(f"t{i}", 4) for i in range(4)]
    first = _sha(4, 4, 2, tmp_path)
    ctl = FakeController(first, trials, 2, scores, seed=5)
    while sum(t.done >= 1 for t in trials) < 3:  # crash with one trial short of the first rung
        ctl.step()
    assert 1 not in first.kept and (tmp_path / STATE_FILE).exists()
    # The driver restarts: Tune restores unfinished trials as PENDING and unpickles its copy of the scheduler (made
    # when the sweep started; one pickled mid-run, as here, must also read the table back, not trust its own).
    for t in trials:
        if t.status != "TERMINATED":
            t.status = "PENDING"
    second = pickle.loads(pickle.dumps(first))
    assert not second.promoted and not second.doomed
    second.scores = {r: {} for r in second.rungs}
    ctl2 = FakeController(second, trials, 2, scores, seed=6)
    ctl2.trained, ctl2.epochs_run = list(ctl.trained), ctl.epochs_run
    second.choose_trial_to_run(ctl2)
    assert second.scores[1] == first.scores[1] and len(second.scores[1]) == 3  # read back from OUT/sha_rungs.json
    ctl2.run()
    assert ctl2.epochs_run == 8 and len(set(ctl2.trained)) == 8
    assert set(second.kept[1]) == _true_survivors(scores, [1, 2], 2)[0]
    state = json.loads((tmp_path / STATE_FILE).read_text())
    assert state["kept"]["2"] == second.kept[2] and sorted(state["gone"]) == sorted(t.trial_id for t in trials)
    assert (tmp_path / "trials" / "t0" / "pauses").is_dir()


def test_a_trial_that_failed_for_good_and_is_restarted_by_a_resume_is_ranked_again(tmp_path):
    """Tuner.restore(restart_errored=True) restarts a trial that had failed for good (it left the rungs): when it
    reports again it is ranked with the others, not left paused for ever."""
    scores = _scores(4, 4, seed=6)
    trials = [FakeTrial(f"t{i}", 4) for i in range(4)]
    first = _sha(4, 4, 2, tmp_path)
    ctl = FakeController(first, trials, 4, scores, seed=0, reorder=False)
    ctl.step()  # all four start, t0 reports epoch 1 and pauses
    victim = trials[1]
    assert victim.status == "RUNNING" and victim.done == 0
    victim.num_failures = 1  # no retries left: Tune calls on_trial_error while it is still RUNNING
    first.on_trial_error(ctl, victim)
    assert victim.trial_id in first.gone
    for t in trials:  # the driver dies; the resume restores the unfinished trials and the errored one as PENDING
        t.status = "PENDING" if t.status != "TERMINATED" else t.status
    victim.num_failures = 0
    second = pickle.loads(pickle.dumps(first))
    second.scores = {r: {} for r in second.rungs}
    ctl2 = FakeController(second, trials, 4, scores, seed=1, reorder=False)
    ctl2.trained, ctl2.epochs_run = list(ctl.trained), ctl.epochs_run
    ctl2.run()  # fails (a trial left PAUSED) if the restarted trial were still counted as gone
    assert ctl2.epochs_run == 8 and len(set(ctl2.trained)) == 8
    assert set(second.kept[1]) == _true_survivors(scores, [1, 2], 2)[0]


def test_a_rung_table_of_another_sweep_is_refused(tmp_path):
    (tmp_path / STATE_FILE).write_text(json.dumps({"n_trials": 5, "rungs": [1, 2], "scores": {}, "kept": {},
                                                   "gone": []}))
    sched = _sha(4, 4, 2, tmp_path)
    ctl = FakeController(sched, [FakeTrial("t0", 4)], 1, {"t0": [1.0] * 4}, seed=0)
    with pytest.raises(ConfigError, match="sha_rungs.json: rungs .* of 5 trials"):
        sched.choose_trial_to_run(ctl)


def test_pause_markers_make_a_resumption_not_a_retry(tmp_path):
    run = str(tmp_path / "run")
    assert not resumes_pause(run, 1, [])
    write_pause_marker(run, 1)
    assert resumes_pause(run, 1, [{"epochs_done": 0}])
    claimed = [{"epochs_done": 0, "node_id": "a"}, {"epochs_done": 1, "resumes_pause": 1, "node_id": "a"}]
    assert not resumes_pause(run, 1, claimed)  # the pause was resumed already: this start is a retry
    rows = [{"trial": "x", "_attempts": claimed}, {"trial": "y", "_attempts": claimed + [{"node_id": "b"}]}]
    assert node_account(rows)["retried_trials"] == {"y": ["a", "a", "b"]}


def test_max_concurrent_below_the_trials_is_refused():
    check_concurrency(4, None, "s")
    check_concurrency(4, 4, "s")
    with pytest.raises(ConfigError, match="max_concurrent 2 is below the sweep's 4 trials.*Fix"):
        check_concurrency(4, 2, "sweep demo")
    from mammoflow.sweep.runner import dry_run_lines, run_sweep

    spec = load_spec({**_demo(), "max_concurrent": 3})
    with pytest.raises(ConfigError, match="max_concurrent 3 is below the sweep's 4 trials"):
        dry_run_lines(spec)
    with pytest.raises(ConfigError, match="max_concurrent 2 is below"):  # before Ray starts or data is read
        run_sweep(load_spec(_demo()), {"default": "/nonexistent"}, "/nonexistent/out", max_concurrent=2)


def _demo() -> dict:
    spec = load_spec("demo")
    return {k: v for k, v in vars(spec).items()}


@pytest.mark.parametrize("options, message", [
    ({"max_t": 3}, "takes grace_period, reduction_factor, not max_t"),
    ({"grace_period": 5}, "grace_period 5 is longer than the longest trial"),
    ({"reduction_factor": 1}, "reduction_factor a number > 1"),
])
def test_bad_sha_options_are_refused(options, message):
    from mammoflow.sweep.runner import dry_run_lines

    with pytest.raises(ConfigError, match=message):
        dry_run_lines(load_spec({**_demo(), "scheduler": {"name": "sha", **options}}))


def test_the_dry_run_prints_the_exact_budget_for_sha_and_a_caveat_for_asha():
    from mammoflow.sweep.runner import dry_run_lines

    assert dry_run_lines(load_spec("demo"))[-2] == "expected trial-epochs with sha: 8 of 16 (0.50 of the full grid)"
    asha = load_spec({**_demo(), "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2}})
    assert dry_run_lines(asha)[-2] == ("expected trial-epochs with asha: 8 of 16 (0.50 of the full grid; "
                                       "asynchronous: a run may exceed it)")
    assert dry_run_lines(load_spec("yu2020_branches"))[-2] == \
        "expected trial-epochs with sha: 45 of 110 (0.41 of the full grid)"


# ------------------------------------------------------------------------------------------- on a real local Ray
from tests import test_sweep as _sweep_tests  # noqa: E402  (its spec builder)
from tests.test_sweep import phantom_data, ray_local  # noqa: E402,F401  (fixtures)


def _histories(trials: Path) -> dict[str, list[int]]:
    return {d.name: [r["epoch"] for r in json.loads((d / "history.json").read_text())]
            for d in sorted(trials.iterdir()) if (d / "history.json").exists()}


@pytest.mark.slow
def test_a_sweep_on_ray_runs_exactly_the_budget(ray_local, phantom_data, tmp_path):  # noqa: F811
    """3 trials of 3 epochs on 2 CPUs, halved after epoch 1 (and 2): 3 + 1 + 1 = 5 of 9 trial-epochs, each once.
    (Three trials, not four, keep it near a minute: every resumption is a new process that imports TensorFlow.)"""
    from mammoflow.sweep.runner import run_sweep

    spec = load_spec(_sweep_tests._spec("sha_test", _sweep_tests.GOOD + _sweep_tests.BAD[1:], scheduler={
        "name": "sha", "grace_period": 1, "reduction_factor": 2}))
    out = tmp_path / "sweep"
    summary = run_sweep(spec, {"default": phantom_data}, str(out), cache_dir=str(tmp_path / "cache"))
    assert summary["trial_epochs"] == expected_trial_epochs([3] * 3, spec.scheduler) == 5
    assert (summary["trials"], summary["finished"], summary["stopped_early"], summary["failed"]) == (3, 1, 2, 0)
    assert summary["retried_trials"] == {}
    histories = _histories(out / "trials")
    assert len(histories) == 3 and all(h == list(range(1, len(h) + 1)) for h in histories.values())
    assert sorted(map(len, histories.values())) == [1, 1, 3]
    # The trial that went on is the true best after epoch 1 (by the losses in the run folders), and it is the best.
    state = json.loads((out / STATE_FILE).read_text())
    names = {json.loads((out / "trials" / n / "sweep_trial.json").read_text())["trial_id"]: n for n in histories}
    first = {n: json.loads((out / "trials" / n / "history.json").read_text())[0]["val_loss"] for n in histories}
    assert [names[t] for t in state["kept"]["1"]] == [min(first, key=first.get)] == [summary["best_trial"]]
    assert sorted(names[t] for t in state["scores"]["1"]) == sorted(histories)
    # Of the 3 trials at epoch 1, the first two to report paused and the last one decided. A trial restarted only
    # to resume a pause, after the epoch it paused at (recorded so, not as a retry), never from scratch.
    pauses = {n: sorted(p.name.split("-")[0] for p in (out / "trials" / n / "pauses").glob("*.json"))
              for n in histories}
    assert sorted(e for marks in pauses.values() for e in marks if e == "1") == ["1", "1"]
    for name in histories:
        attempts = json.loads((out / "trials" / name / "sweep_trial.json").read_text())["attempts"]
        assert attempts[0]["epochs_done"] == 0 and "resumes_pause" not in attempts[0]
        assert [str(a.get("resumes_pause")) for a in attempts[1:]] == \
            (pauses[name] if name == summary["best_trial"] else [])
        assert all(a["resumes_pause"] == a["epochs_done"] for a in attempts[1:])


def _fake_trainable():
    """A trainable that resumes from its run folder like train() does (history.json), and fails once at
    ``fail_at`` (a RuntimeError in its process: Ray retries it). Made in a function so that Ray pickles it by
    value: the workers cannot import this test module."""

    def fake_trial(config: dict) -> None:
        import json
        from pathlib import Path

        from ray import tune

        from mammoflow.sweep.runner import record_attempt

        run = Path(config["out"]) / "trials" / config["name"]
        record_attempt(str(run))
        path = run / "history.json"
        history = json.loads(path.read_text()) if path.exists() else []
        extra = {"trial_name": config["name"]}
        if history:
            tune.report({**history[-1], **extra, "run_finished": 0})
        for epoch in range(len(history) + 1, len(config["losses"]) + 1):
            if epoch == config.get("fail_at") and not (run / "failed").exists():
                (run / "failed").touch()
                raise RuntimeError("injected failure")
            history.append({"epoch": epoch, "val_loss": config["losses"][epoch - 1]})
            path.write_text(json.dumps(history))
            tune.report({**history[-1], **extra, "run_finished": int(epoch == len(config["losses"]))})

    return fake_trial


@pytest.mark.slow
def test_a_failed_trial_is_retried_and_the_budget_holds(ray_local, tmp_path):  # noqa: F811
    """The best trial fails once in epoch 2, after its resumption from the first rung: Ray retries it, it resumes
    after epoch 1 and the sweep still runs 8 of 16 trial-epochs, the retry counted as one, the pauses as none."""
    from ray import tune

    from mammoflow.sweep.results import read_attempts

    losses = {"a": [0.5, 0.4, 0.3, 0.2], "b": [0.6, 0.5, 0.45, 0.4], "c": [0.9, 0.8, 0.7, 0.6],
              "d": [1.2, 1.1, 1.0, 0.9]}
    cells = [{"name": n, "losses": v, "out": str(tmp_path), **({"fail_at": 2} if n == "a" else {})}
             for n, v in losses.items()]
    tuner = tune.Tuner(
        tune.with_resources(_fake_trainable(), {"cpu": 1}), param_space=tune.grid_search(cells),
        tune_config=tune.TuneConfig(metric="val_loss", mode="min",
                                    scheduler=SyncHalvingScheduler(4, grace_period=1, reduction_factor=2, max_t=4,
                                                                   out_uri=str(tmp_path))),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name="fake", verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=1)))
    grid = tuner.fit()
    assert not grid.errors
    histories = _histories(tmp_path / "trials")
    assert {n: len(h) for n, h in histories.items()} == {"a": 4, "b": 2, "c": 1, "d": 1}
    assert all(h == list(range(1, len(h) + 1)) for h in histories.values())  # no epoch twice
    rows = [{"trial": n, "_attempts": read_attempts(str(tmp_path / "trials" / n))} for n in losses]
    assert list(node_account(rows)["retried_trials"]) == ["a"]
    a = rows[0]["_attempts"]
    # started once from scratch, retried once after epoch 1; any other start resumed a pause (at rung 1 unless it
    # was the last to report epoch 1, at rung 2 only if it got there before b)
    starts = [(x["epochs_done"], x.get("resumes_pause")) for x in a]
    assert starts[0] == (0, None) and [s for s in starts[1:] if s[1] is None] == [(1, None)]
    assert all(done == resumed for done, resumed in starts[1:] if resumed is not None)
