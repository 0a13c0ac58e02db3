"""A real two-node Ray cluster on this machine, and sweeps submitted to it as Ray jobs.

The module starts a head and a second node with ``ray start --block`` (each with its own ``--temp-dir``, one CPU and
a custom resource, token authentication on: ``RAY_AUTH_MODE=token``), and submits sweeps through the project's own
code path: ``mammoflow sweep --address http://127.0.0.1:<dashboard>`` run as a subprocess, with the token in
``RAY_AUTH_TOKEN``.

- The sweep job runs its trials on both nodes (the trials' records name the Ray node of every attempt). Its first
  caller is killed (SIGKILL) mid-sweep: the caller started again follows the job still running, no second job.
  The second node's raylet is then killed by PID while it trains a trial: that trial is retried on the head
  (``max_failures``) after its last checkpointed epoch, and every trial ends exactly once, with a full summary.
- SIGTERM to the caller stops the job (exit 143, job STOPPED); the same command without --resume is refused, with it
  a new job (id suffixed ``-2``) continues the sweep.
- Without the token, the dashboard answers 401 and the command says which variable to set.

Ray rewrites ``--node-ip-address 127.0.0.1`` to this machine's own interface address (``ray start`` calls
``services.resolve_ip_for_localhost``), so the nodes talk over that address: still this machine, never beyond
it. Cleanup kills only the processes this module started (the ``ray start`` processes and their descendants,
recorded with their start times), never ``ray stop``, which would stop every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from tests.test_sweep import BASE as SWEEP_BASE

from mammoflow.sweep.jobs import submission_id
from mammoflow.sweep.results import read_attempts
from mammoflow.sweep.runner import TRIAL_STATUS_FILE
from mammoflow.sweep.spec import cell_name

pytestmark = pytest.mark.slow

RAY = Path(sys.executable).parent / "ray"
START_TIMEOUT_S = 180
SWEEP_TIMEOUT_S = 900
EPOCHS = 2
# The tiny training config of the local sweep tests, with fewer patches per ROI (two trials share a CPU core here).
BASE = {**SWEEP_BASE, "data": {**SWEEP_BASE["data"], "patches_per_roi": {"normal": 2, "tumour": 4}},
        "schedule": {"phases": [{**SWEEP_BASE["schedule"]["phases"][0], "epochs": EPOCHS}]}}
WEIGHTS = ["balanced", "none", {"normal": 1.0, "tumour": 2.0}, {"normal": 1.0, "tumour": 3.0}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------ our own processes only
def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[19])


def _descendants(roots: list[int]) -> dict[int, int]:
    """pid -> start time of ``roots`` and every process below them."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        st = _stat(int(entry.name))
        if st:
            children.setdefault(st[0], []).append(int(entry.name))
            starts[int(entry.name)] = st[1]
    out, todo = {}, [p for p in roots if p in starts]
    while todo:
        pid = todo.pop()
        out[pid] = starts[pid]
        todo += children.get(pid, [])
    return out


class Node:
    """One ``ray start --block`` process (it owns the node's Ray processes) and its temp dir."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        # A short temp dir: Ray's unix sockets live under it and a socket path has at most 107 bytes.
        self.name, self.temp_dir = name, tempfile.mkdtemp(prefix=f"mf{name}", dir="/tmp")
        self.log = logs / f"ray-{name}.log"
        with self.log.open("w") as fh:
            self.proc = subprocess.Popen([str(RAY), "start", "--block", "--temp-dir", self.temp_dir,
                                          "--disable-usage-stats", *args],
                                         stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def child(self, comm: str) -> int | None:
        for pid in _descendants([self.proc.pid]):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                    return pid
            except OSError:
                continue
        return None


class Cluster:
    def __init__(self, tmp: Path) -> None:
        self.token = secrets.token_hex(32)
        self.port, self.dashboard_port = _free_port(), _free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.cache = tmp / "cache"
        # The job's driver and its trials inherit the environment of the nodes' Ray processes: the project's CLI
        # on PATH, the token, and a cache of their own.
        self.env = {**os.environ, "PATH": f"{RAY.parent}{os.pathsep}{os.environ.get('PATH', '')}",
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, "RAY_USAGE_STATS_ENABLED": "0",
                    "MAMMOFLOW_CACHE": str(self.cache), "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.logs = tmp
        self.nodes: list[Node] = []
        self.seen: dict[int, int] = {}

    def node_args(self, resource: str) -> list[str]:
        return ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0",
                "--resources", json.dumps({resource: 1}), "--object-store-memory", str(100 * 1024 * 1024),
                "--dashboard-agent-listen-port", str(_free_port())]

    def start(self) -> None:
        head = Node("head", ["--head", "--port", str(self.port), "--dashboard-host", "127.0.0.1",
                             "--dashboard-port", str(self.dashboard_port), "--ray-client-server-port",
                             str(_free_port()), *self.node_args("node_a")], self.env, self.logs)
        self.nodes.append(head)
        self._wait(lambda: self.get("/api/version") is not None, head, "the head's dashboard")
        second = Node("second", ["--address", f"127.0.0.1:{self.port}", *self.node_args("node_b")], self.env,
                      self.logs)
        self.nodes.append(second)
        self._wait(lambda: len(self.alive_nodes()) == 2, second, "the second node")
        self.remember()

    def _wait(self, ready, node: Node, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ready():
            if node.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start: {node.log.read_text()[-3000:]}")
            time.sleep(0.5)

    def get(self, path: str, token: str | None = "own"):
        headers = {"Authorization": f"Bearer {self.token if token == 'own' else token}"} if token else {}
        request = urllib.request.Request(self.address + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read() or b"null")
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def alive_nodes(self) -> dict[str, dict]:
        """node id -> the state API's record, for the nodes that are alive."""
        reply = self.get("/api/v0/nodes?limit=100") or {}
        rows = ((reply.get("data") or {}).get("result") or {}).get("result") or []
        return {r["node_id"]: r for r in rows if r.get("state") == "ALIVE"}

    def node_id(self, resource: str) -> str:
        return next(nid for nid, r in self.alive_nodes().items() if resource in (r.get("resources_total") or {}))

    def jobs(self) -> list[dict]:
        return self.get("/api/jobs/") or []

    def remember(self) -> None:
        """Record every process the nodes own now (a killed raylet's orphans are found by this record)."""
        self.seen.update(_descendants([n.proc.pid for n in self.nodes]))

    def stop(self) -> None:
        self.remember()
        for node in self.nodes:
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)  # ray start --block stops its node's processes
        for node in self.nodes:
            try:
                node.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        self.seen.update(_descendants([n.proc.pid for n in self.nodes]))
        for pid, start in self.seen.items():
            st = _stat(pid)
            if st and st[1] == start:  # still the process we started, not a reused pid
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for node in self.nodes:
            if node.proc.poll() is None:
                node.proc.wait(timeout=30)
            shutil.rmtree(node.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not RAY.exists():
        pytest.skip(f"no `ray` command beside {sys.executable}")
    if not Path("/proc/self/stat").exists():
        pytest.skip("finds and stops its own Ray processes through /proc")
    running = Cluster(tmp_path_factory.mktemp("ray_cluster"))
    try:
        running.start()
        yield running
    finally:
        running.stop()


def _spec(tmp_path: Path, name: str, weights: list, epochs: int = EPOCHS) -> Path:
    base = {**BASE, "schedule": {"phases": [{**BASE["schedule"]["phases"][0], "epochs": epochs}]}}
    spec = {"name": name, "base": base, "axes": {"class_weights": {"grid": weights}}, "metric": "val_loss",
            "mode": "min", "scheduler": {"name": "fifo"}, "resources": {"cpu": 1}, "max_failures": 2}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _caller(cluster: Cluster, spec: Path, data: Path, out: Path, log: Path, *more: str,
            token: str | None = "own") -> subprocess.Popen:
    """``mammoflow sweep --address http://...`` as a user runs it: only the token in the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    if token:
        env["RAY_AUTH_TOKEN"] = cluster.token if token == "own" else token
    args = ["sweep", "--spec", str(spec), "--data", str(data), "--out", str(out), "--address", cluster.address, *more]
    with log.open("a") as fh:
        return subprocess.Popen([sys.executable, "-m", "mammoflow.cli", *args], stdout=fh, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)


def _wait_for(what: str, check, *, callers=(), timeout: float = SWEEP_TIMEOUT_S, cluster: Cluster | None = None):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        for proc, log in callers:
            assert proc.poll() is None, f"the caller ended (exit {proc.returncode}) before {what}: " \
                                        f"{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if cluster is not None:
            cluster.remember()
        time.sleep(0.3)


def _epochs_done(folder: Path) -> int:
    state = folder / "checkpoints" / "state.json"
    try:
        return json.loads(state.read_text())["epochs_done"]
    except (OSError, ValueError, KeyError):
        return 0


def _job(cluster: Cluster, job_id: str) -> dict | None:
    return next((j for j in cluster.jobs() if j.get("submission_id") == job_id), None)


def _reported_epochs(experiment: Path) -> dict[str, list[int]]:
    """Every epoch Ray Tune received, per trial, from its trial folders' result.json."""
    out: dict[str, list[int]] = {}
    for path in experiment.glob("*/result.json"):
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                out.setdefault(row["trial_name"], []).append(int(row["epoch"]))
    return out


def test_a_sweep_job_runs_on_both_nodes_and_survives_losing_one(cluster, phantom_dataset, tmp_path):
    started = time.monotonic()
    spec = _spec(tmp_path, "two_nodes", WEIGHTS)
    out, log = tmp_path / "sweep", tmp_path / "callers.log"
    folders = {cell_name({"class_weights": w}): out / "trials" / cell_name({"class_weights": w}) for w in WEIGHTS}
    head_id, second_id = cluster.node_id("node_a"), cluster.node_id("node_b")
    job_id = submission_id(str(out))

    first = _caller(cluster, spec, phantom_dataset, out, log)
    try:
        # The caller dies (SIGKILL: no chance to stop anything) once a trial trains; the job goes on.
        _wait_for("a trial to start", lambda: any(read_attempts(str(f)) for f in folders.values()),
                  callers=[(first, log)], cluster=cluster)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert _job(cluster, job_id)["status"] in ("PENDING", "RUNNING")

    second = _caller(cluster, spec, phantom_dataset, out, log)
    try:
        # Kill the second node's raylet while it trains a trial that has checkpointed an epoch, once some trial
        # has ended. If the second node ended one first, the next trial can only go there (the head is still busy),
        # so it then finishes a trial before it dies; if the head ended one first, the second node's first trial
        # is killed. Either way the moment comes: a trial spends a whole epoch with one epoch checkpointed.
        def victim() -> str | None:
            if not any((folder / TRIAL_STATUS_FILE).exists() for folder in folders.values()):
                return None
            for name, folder in folders.items():
                attempts = read_attempts(str(folder))
                if attempts and attempts[-1]["node_id"] == second_id and 1 <= _epochs_done(folder) < EPOCHS \
                        and not (folder / TRIAL_STATUS_FILE).exists():
                    return name
            return None

        def freeze_victim() -> tuple[str, int] | None:
            # A trial between its checkpoint of epoch 1 and the end of its last epoch can finish in the moment
            # between a look at its folder and the raylet's death (it then reports its end and is not retried).
            # So: stop its process first, look again, and let it go on if it has moved past the moment.
            name = victim()
            if name is None:
                return None
            pid = read_attempts(str(folders[name]))[-1]["pid"]
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                return None
            if victim() == name:
                return name, pid
            os.kill(pid, signal.SIGCONT)
            return None

        killed, frozen = _wait_for("a trial on the second node to checkpoint an epoch", freeze_victim,
                                   callers=[(second, log)], cluster=cluster)
        raylet = cluster.nodes[1].child("raylet")
        assert raylet is not None
        epochs_before_kill = _epochs_done(folders[killed])
        os.kill(raylet, signal.SIGKILL)
        os.kill(frozen, signal.SIGKILL)  # the node is lost with every process on it; a stopped one cannot notice
        kill_time = time.monotonic()
        assert second.wait(timeout=SWEEP_TIMEOUT_S) == 0, log.read_text()[-4000:]
        finish = time.monotonic()
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
            second.wait()
    elapsed = time.monotonic() - started

    # One job for the folder, followed to its end by the second caller.
    text = log.read_text()
    assert f"Ray job {job_id} of {out} is already RUNNING" in text
    assert [j["submission_id"] for j in cluster.jobs() if j["submission_id"].startswith(job_id)] == [job_id]
    assert _job(cluster, job_id)["status"] == "SUCCEEDED"
    assert second_id not in cluster.alive_nodes()

    summary = json.loads((out / "summary.json").read_text())
    assert (summary["trials"], summary["finished"], summary["failed"]) == (len(WEIGHTS), len(WEIGHTS), 0)
    assert summary["trial_epochs"] == len(WEIGHTS) * EPOCHS  # from the run folders: nothing twice, nothing missing
    assert summary["retried_trials"] == {killed: [second_id, head_id]}
    reported = _reported_epochs(out / "ray" / "two_nodes")
    nodes_used = set()
    for name, folder in folders.items():
        record = json.loads((folder / TRIAL_STATUS_FILE).read_text())
        assert record["status"] == "finished"
        history = json.loads((folder / "history.json").read_text())
        assert [r["epoch"] for r in history] == list(range(1, EPOCHS + 1))
        assert json.loads((folder / "run.json").read_text())["status"] == "finished"
        epochs = reported[name]
        assert len(epochs) == len(set(epochs)), f"{name}: an epoch reported twice: {epochs}"
        nodes = [a["node_id"] for a in record["attempts"]]
        nodes_used.update(nodes)
        if name == killed:
            # Retried on the survivor, after the epochs the dead node had checkpointed.
            assert nodes == [second_id, head_id]
            assert record["attempts"][1]["epochs_done"] == epochs_before_kill >= 1
            assert record["node_id"] == head_id
        else:
            assert len(nodes) == 1
    assert nodes_used == {head_id, second_id}  # trials ran on both nodes
    by_node = {nid: sum(json.loads((f / TRIAL_STATUS_FILE).read_text())["node_id"] == nid for f in folders.values())
               for nid in (head_id, second_id)}
    assert summary["trials_by_node"] == {k: v for k, v in sorted(by_node.items()) if v}
    # The numbers of the README's closing note (pytest -s shows them).
    print(f"\nray cluster: trials ended per node {by_node}; attempts per trial "
          f"{ {n: len(json.loads((f / TRIAL_STATUS_FILE).read_text())['attempts']) for n, f in folders.items()} }; "
          f"killed during {killed} after {epochs_before_kill} epoch(s); sweep done {finish - kill_time:.0f} s after "
          f"the kill, {elapsed:.0f} s in all")


def test_sigterm_stops_the_job_and_resume_submits_the_next(cluster, phantom_dataset, tmp_path):
    spec = _spec(tmp_path, "cancel", ["none"], epochs=1)
    out, log = tmp_path / "sweep", tmp_path / "callers.log"
    job_id = submission_id(str(out))
    caller = _caller(cluster, spec, phantom_dataset, out, log)
    folder = out / "trials" / cell_name({"class_weights": "none"})
    try:
        # SIGTERM once the trial trains and Tune has saved the sweep's state (so the folder holds a sweep).
        _wait_for("the trial to start", lambda: read_attempts(str(folder)) and
                  list((out / "ray" / "cancel").glob("experiment_state-*.json")), callers=[(caller, log)],
                  timeout=300)
        assert (_job(cluster, job_id) or {}).get("status") == "RUNNING"
        caller.send_signal(signal.SIGTERM)
        assert caller.wait(timeout=120) == 143, log.read_text()[-3000:]
    finally:
        if caller.poll() is None:
            os.killpg(caller.pid, signal.SIGKILL)
            caller.wait()
    assert _job(cluster, job_id)["status"] == "STOPPED"
    assert f"Ray job {job_id} was stopped" in log.read_text()

    # The folder now holds the sweep: without --resume the caller refuses before submitting anything.
    again = _caller(cluster, spec, phantom_dataset, out, log)
    assert again.wait(timeout=120) == 1
    assert "--resume" in log.read_text().splitlines()[-1]
    resumed = _caller(cluster, spec, phantom_dataset, out, log, "--resume")
    assert resumed.wait(timeout=SWEEP_TIMEOUT_S) == 0, log.read_text()[-3000:]
    ids = sorted(j["submission_id"] for j in cluster.jobs() if j["submission_id"].startswith(job_id))
    assert ids == [job_id, f"{job_id}-2"]
    assert _job(cluster, f"{job_id}-2")["status"] == "SUCCEEDED"
    assert "--resume" in _job(cluster, f"{job_id}-2")["entrypoint"]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["trials"], summary["finished"], summary["failed"]) == (1, 1, 0)


def test_the_dashboard_wants_the_token(cluster, phantom_dataset, tmp_path):
    request = urllib.request.Request(cluster.address + "/api/jobs/")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401
    spec, log = _spec(tmp_path, "no_token", ["none"]), tmp_path / "caller.log"
    for token, hint in ((None, "the cluster wants a token: set RAY_AUTH_TOKEN"), ("wrong", "the token was refused")):
        caller = _caller(cluster, spec, phantom_dataset, tmp_path / "sweep", log, token=token)
        assert caller.wait(timeout=120) == 1
        assert hint in log.read_text()
    assert not (tmp_path / "sweep").exists()  # nothing written, nothing submitted


# ------------------------------------------------------------------------------------ without a cluster
def test_the_token_comes_from_rays_own_sources(tmp_path, monkeypatch):
    from mammoflow.errors import ConfigError
    from mammoflow.sweep.jobs import auth_headers

    assert auth_headers({"RAY_AUTH_TOKEN": " abc\n"}) == {"Authorization": "Bearer abc"}
    (tmp_path / "token").write_text("from-file\n")
    assert auth_headers({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")}) == {"Authorization": "Bearer from-file"}
    with pytest.raises(ConfigError, match="RAY_AUTH_TOKEN_PATH"):
        auth_headers({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("ray-home")
    assert auth_headers({}) == {}  # Ray's own file is sent only when token mode is asked for, as Ray does
    assert auth_headers({"RAY_AUTH_MODE": "token"}) == {"Authorization": "Bearer ray-home"}


def test_the_jobs_entrypoint_is_the_projects_own_cli():
    import shlex

    from mammoflow.commands.sweep import _parse_data, command
    from mammoflow.sweep.jobs import entrypoint, is_jobs_address

    data = {"default": "gs://b/ds/default", "mass": "gs://b/ds/a=b"}
    line = entrypoint("gs://b/sw/spec.yaml", data, "gs://b/sw", resume=True, max_concurrent=3)
    args = shlex.split(line)
    assert args[:2] == ["mammoflow", "sweep"]
    params = command.make_context("sweep", args[2:]).params
    assert (params["spec_ref"], params["out_uri"], params["address"]) == ("gs://b/sw/spec.yaml", "gs://b/sw", "auto")
    assert params["resume"] and params["max_concurrent"] == 3 and _parse_data(params["data"]) == data
    assert not command.make_context("sweep", shlex.split(entrypoint("s", data, "o", resume=False))[2:]).params["resume"]
    assert [is_jobs_address(a) for a in ("http://h:8265", "https://h", "ray://h:10001", "auto", None)] == \
        [True, True, False, False, False]


def test_job_ids_come_from_the_sweep_folder():
    from types import SimpleNamespace

    from mammoflow.sweep.jobs import next_id

    base = submission_id("gs://b/sweeps/x")
    assert base == submission_id("gs://b/sweeps/x/") != submission_id("gs://b/sweeps/y")
    jobs = [SimpleNamespace(submission_id=i) for i in (base, f"{base}-3")]  # -2 was deleted
    assert [next_id(base, jobs[:n]) for n in range(3)] == [base, f"{base}-2", f"{base}-4"]
