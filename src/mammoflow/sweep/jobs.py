"""A sweep as a Ray job: ``mammoflow sweep --address http://HEAD:8265`` through the Ray Jobs API.

The caller (a laptop, a KFP step) only submits and follows: the job's entrypoint is this project's own CLI,
``mammoflow sweep --spec OUT/spec.yaml ... --address auto``, run by Ray on the cluster's head, where it drives
Ray Tune exactly as a local sweep does (:func:`mammoflow.sweep.runner.run_sweep`: same folder, same resume rules).
Ray's documentation recommends Ray Jobs over Ray Client (``ray://``) for Tune: the driver lives next to the
cluster, so a flaky laptop or a preempted KFP pod does not kill the sweep.

- **One job per sweep folder.** The submission id is ``mammoflow-sweep-<sha256(OUT)[:16]>``. A caller that
  finds a job of that folder still running attaches to it (a caller that crashed and was started again never
  runs a second copy); if every earlier job has ended, it submits a new one with the next suffix
  (``...-2``, ``...-3``), which resumes the sweep from OUT like ``--resume`` does locally.
- **The spec travels through OUT.** The caller checks OUT (same rules as a local sweep: a different spec is
  refused, existing state needs ``resume``) and writes ``OUT/spec.yaml`` with the base config resolved; the
  entrypoint reads it from there. So OUT (and every ``--data``) must be reachable from the cluster: ``gs://``;
  and the caller's mammoflow should be the image's: a driver that resolves the spec otherwise refuses the folder
  ("different spec") before any trial starts.
- **Logs, status, cancellation.** The job's log is streamed into this process's log (``job | ...``); its end
  maps to our exit: SUCCEEDED returns the summary (0), FAILED or stopped by someone else raise
  :class:`SweepJobFailed` (1), and SIGTERM / SIGINT here stop the job (``stop_job``) before raising
  :class:`SweepCancelled` (143, re-run with ``--resume``) or ``KeyboardInterrupt`` (130).
- **Token authentication** (Ray >= 2.52): the token comes from ``RAY_AUTH_TOKEN``, else the file named by
  ``RAY_AUTH_TOKEN_PATH``, else, when ``RAY_AUTH_MODE=token``, Ray's own ``~/.ray/auth_token``; it is sent as
  ``Authorization: Bearer ...``. The KFP sweep step gets ``RAY_AUTH_TOKEN`` from the Secret mammoflow-ray-token.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mammoflow import storage
from mammoflow.errors import ConfigError, MammoflowError
from mammoflow.sweep.spec import SweepSpec

log = logging.getLogger(__name__)
job_log = logging.getLogger("mammoflow.sweep.job")

JOB_PREFIX = "mammoflow-sweep-"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
POLL_S = 2.0
STOP_WAIT_S = 60.0
OUR_EXIT_CODES = (1, 2, 143)  # a failed job's driver (our CLI) exit codes passed on as ours (README "Exit codes")


class SweepJobFailed(MammoflowError):
    """The sweep's Ray job ended without success (failed, or stopped by someone else). ``exit_code``: the job's
    driver is this project's CLI, so its exit code is one of ours (1 error, 2 usage, 143 stopped on SIGTERM: re-run
    to resume); 1 when the job ended before or without its driver."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class SweepCancelled(MammoflowError):
    """This caller was asked to stop (SIGTERM); the sweep's Ray job was stopped; re-run with --resume."""


def is_jobs_address(address: str | None) -> bool:
    """Whether ``address`` is a Ray dashboard (Jobs API) URL rather than ``auto`` or a Ray Client ``ray://``."""
    return bool(address) and urlparse(address).scheme in ("http", "https")


def submission_id(out_uri: str) -> str:
    """The first submission id of the sweep in ``out_uri``: the same folder always gives the same id."""
    return JOB_PREFIX + hashlib.sha256(out_uri.rstrip("/").encode()).hexdigest()[:16]


def auth_headers(env: dict[str, str] | None = None) -> dict[str, str]:
    """``Authorization: Bearer TOKEN`` from Ray's token sources (module docstring), or {} when none is given."""
    env = dict(os.environ if env is None else env)
    token = env.get("RAY_AUTH_TOKEN", "").strip()
    if not token and env.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(env["RAY_AUTH_TOKEN_PATH"]).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{path}: RAY_AUTH_TOKEN_PATH names a token file that cannot be read "
                              f"({exc.strerror}). Fix: point it at the cluster's token file, or set "
                              "RAY_AUTH_TOKEN") from None
    if not token and env.get("RAY_AUTH_MODE", "").lower() == "token":
        default = Path.home() / ".ray" / "auth_token"
        token = default.read_text().strip() if default.is_file() else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def entrypoint(spec_uri: str, data_uris: dict[str, str], out_uri: str, *, resume: bool,
               max_concurrent: int | None = None) -> str:
    """The job's shell command: this project's CLI, joining the job's own cluster (``--address auto``)."""
    args = ["mammoflow", "sweep", "--spec", spec_uri]
    for name, uri in data_uris.items():
        args += ["--data", f"{name}={uri}"]
    args += ["--out", out_uri, "--address", "auto"]
    if max_concurrent:
        args += ["--max-concurrent", str(max_concurrent)]
    if resume:
        args.append("--resume")
    return shlex.join(args)


def connect(address: str):
    """A JobSubmissionClient for the dashboard at ``address``, with the token when one is given."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    headers = auth_headers()
    try:
        return JobSubmissionClient(address, headers=headers)
    except AuthenticationError as exc:
        fix = ("the token was refused: give the cluster's token (RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH; on "
               "Kubernetes the Secret mammoflow-ray-token, key auth_token)" if headers else
               "the cluster wants a token: set RAY_AUTH_TOKEN (on Kubernetes: the Secret mammoflow-ray-token, "
               "key auth_token)")
        raise ConfigError(f"--address {address}: {str(exc).splitlines()[0]}. Fix: {fix}") from None
    except ConnectionError as exc:
        raise ConfigError(f"--address {address}: no Ray dashboard answers there ({exc}). Fix: give the head's "
                          "dashboard URL, http://HEAD:8265 (kubectl -n mammoflow port-forward "
                          "svc/mammoflow-head-svc 8265:8265 from a laptop), or ray://HEAD:10001 for Ray Client"
                          ) from None


def _number(job_id: str, base_id: str) -> int | None:
    """1 for ``base_id``, N for ``base_id-N``, None for another folder's job."""
    if job_id == base_id:
        return 1
    tail = job_id[len(base_id) + 1:] if job_id.startswith(base_id + "-") else ""
    return int(tail) if tail.isdigit() else None


def find_jobs(client, base_id: str) -> list:
    """The jobs of one sweep folder (ids ``base_id`` and ``base_id-N``), oldest first."""
    mine = [j for j in client.list_jobs() if j.submission_id and _number(j.submission_id, base_id) is not None]
    return sorted(mine, key=lambda j: _number(j.submission_id, base_id))


def next_id(base_id: str, jobs: list) -> str:
    """The id of a new job after ``jobs`` (all ended): ``base_id``, then ``base_id-2``, ``-3``, ... (one more than
    the highest, so a deleted job's id is never reused while a later one exists)."""
    numbers = [_number(j.submission_id, base_id) or 1 for j in jobs]
    return base_id if not numbers else f"{base_id}-{max(numbers) + 1}"


def submit_sweep(spec: SweepSpec, data_uris: dict[str, str], out_uri: str, address: str, *, resume: bool,
                 max_concurrent: int | None = None, poll_s: float = POLL_S) -> dict[str, Any]:
    """Run the sweep as a Ray job on the cluster at ``address`` (or follow the one already running for
    ``out_uri``); returns the summary the job wrote to ``OUT/summary.json``."""
    from mammoflow.sweep.runner import absolute_uri, check_spec, claim_folder, forwarded_env

    out_uri = absolute_uri(out_uri.rstrip("/"))
    data_uris = {name: absolute_uri(uri) for name, uri in data_uris.items()}
    host = urlparse(address).hostname or ""
    if not storage.is_remote(out_uri) and host not in LOOPBACK:
        log.warning("--address %s with a local --out %s: the job on the cluster cannot write there; use a gs:// "
                    "sweep folder", address, out_uri)
    client = connect(address)
    base_id = submission_id(out_uri)
    jobs = find_jobs(client, base_id)
    running = [j for j in jobs if not j.status.is_terminal()]
    command = entrypoint(storage.join(out_uri, "spec.yaml"), data_uris, out_uri, resume=resume,
                         max_concurrent=max_concurrent)
    if running:
        job = running[-1]
        check_spec(spec, out_uri)
        job_id = job.submission_id
        log.info("sweep %s: Ray job %s of %s is already %s on %s: following it (no second job)", spec.name, job_id,
                 out_uri, job.status.value, address)
        if _without_resume(job.entrypoint) != _without_resume(command):
            log.warning("Ray job %s runs %s (not the options given here)", job_id, job.entrypoint)
    else:
        claim_folder(spec, out_uri, resume)
        job_id = _submit(client, next_id(base_id, jobs), command, forwarded_env(),
                         {"sweep": spec.name, "out": out_uri})
        log.info("sweep %s: submitted Ray job %s to %s: %s", spec.name, job_id, address, command)
    info = follow(client, job_id, poll_s=poll_s)
    return _outcome(info, job_id, address, out_uri)


def _without_resume(command: str) -> list[str]:
    return [arg for arg in shlex.split(command or "") if arg != "--resume"]


def _submit(client, job_id: str, command: str, env: dict[str, str], metadata: dict[str, str]) -> str:
    kwargs: dict[str, Any] = {"entrypoint": command, "submission_id": job_id, "metadata": metadata}
    if env:
        kwargs["runtime_env"] = {"env_vars": env}
    try:
        return client.submit_job(**kwargs)
    except RuntimeError as exc:
        if "already exists" not in str(exc):
            raise
        # Another caller submitted the same folder's job a moment ago: follow that one.
        log.info("Ray job %s was submitted by another caller just now: following it", job_id)
        return job_id


def _outcome(info, job_id: str, address: str, out_uri: str) -> dict[str, Any]:
    from ray.job_submission import JobStatus

    if info.status == JobStatus.SUCCEEDED:
        return json.loads(storage.get_bytes(storage.join(out_uri, "summary.json")))
    # A failed entrypoint's message is Ray's header plus the tail of the log: its last line is our CLI's error.
    lines = [line.strip() for line in (info.message or "").splitlines() if line.strip()]
    reason = (lines[-1] if lines else "no message")[:300]
    what = "was stopped (not by this caller)" if info.status == JobStatus.STOPPED else "failed"
    code = info.driver_exit_code if info.driver_exit_code in OUR_EXIT_CODES else 1
    raise SweepJobFailed(f"{out_uri}: the sweep's Ray job {job_id} {what}: {reason}. Fix: read its log "
                         f"(ray job logs {job_id} --address {address}), fix the cause, and run the same command "
                         "with --resume: ended trials are kept, interrupted ones continue", code)


@contextmanager
def _sigterm_raises():
    """SIGTERM raises :class:`SweepCancelled` in the main thread while following a job (pods are stopped so)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SweepCancelled("SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def follow(client, job_id: str, *, poll_s: float = POLL_S):
    """Stream the job's log into ours until it ends; stop the job if this caller is cancelled. Returns its info."""
    tail = _LogTail(client, job_id)
    try:
        with _sigterm_raises():
            tail.start()
            while True:
                info = client.get_job_info(job_id)
                if info.status.is_terminal():
                    break
                tail.restart_if_dead()
                time.sleep(poll_s)
    except (KeyboardInterrupt, SweepCancelled) as exc:
        log.warning("%s: stopping Ray job %s", "SIGTERM" if isinstance(exc, SweepCancelled) else "interrupted",
                    job_id)
        _stop(client, job_id)
        if isinstance(exc, SweepCancelled):
            raise SweepCancelled(f"stopped by SIGTERM: Ray job {job_id} was stopped; run the same command with "
                                 "--resume to continue the sweep") from None
        raise
    tail.finish()
    return info


def _stop(client, job_id: str) -> None:
    """Stop the job and wait (bounded) until Ray says it has ended, so that no trial outlives the caller."""
    try:
        client.stop_job(job_id)
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline:
            status = client.get_job_status(job_id)
            if status.is_terminal():
                log.info("Ray job %s: %s", job_id, status.value)
                return
            time.sleep(0.5)
        log.warning("Ray job %s did not end within %.0f s of stop_job", job_id, STOP_WAIT_S)
    except Exception as exc:  # noqa: BLE001 - stopping is best effort; the cancellation itself must go on
        log.warning("could not stop Ray job %s: %s", job_id, exc)


class _LogTail:
    """Follows a job's log over the dashboard's websocket in a daemon thread, one logged line per line; started
    again (skipping the lines already logged) if the connection drops before the job ends."""

    def __init__(self, client, job_id: str) -> None:
        self.client, self.job_id = client, job_id
        self.lines_logged = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"tail-{self.job_id}", daemon=True)
        self._thread.start()

    def restart_if_dead(self) -> None:
        if self._thread is not None and not self._thread.is_alive():
            self.start()

    def finish(self, timeout: float = 30.0) -> None:
        """Wait for the last lines (the websocket closes when the job has ended); fetch them if it did not."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self._thread is None or self._thread.is_alive():
            self._emit_from(self.client.get_job_logs(self.job_id).splitlines())

    def _emit_from(self, lines: list[str]) -> None:
        for line in lines[self.lines_logged:]:
            job_log.info("job | %s", line)
        self.lines_logged = max(self.lines_logged, len(lines))

    def _run(self) -> None:
        import asyncio

        async def tail() -> None:
            seen, pending = 0, ""
            async for chunk in self.client.tail_job_logs(self.job_id):
                pending += chunk
                *lines, pending = pending.split("\n")
                for line in lines:
                    seen += 1
                    if seen > self.lines_logged:
                        job_log.info("job | %s", line)
                        self.lines_logged = seen
            if pending:
                job_log.info("job | %s", pending)
                self.lines_logged = seen + 1

        try:
            asyncio.run(tail())
        except Exception as exc:  # noqa: BLE001 - a dropped connection: the poller starts another tail
            log.debug("log stream of Ray job %s ended: %s", self.job_id, exc)
