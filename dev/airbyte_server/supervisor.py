"""Job lifecycle in the server: pending -> running -> succeeded | failed | cancelled.

As in Airbyte, a job runs in attempts: an attempt interrupted by a server restart or a worker
crash fails, the job becomes `incomplete` and its next attempt starts (after the restart), up to
MAX_ATTEMPTS; only then is the job `failed`. An error the worker reports (connector or
configuration failure) fails the job at once, so failure scenarios stay fast.

Every attempt runs `python -m dev.airbyte_server.worker JOB_ID` in its own process group (so a
cancel kills the connector subprocesses too) and is watched by one thread here. The store is
the source of truth for a job's status; terminal transitions only apply to active jobs, so a
cancel and a worker exiting at the same time cannot both win.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from .faults import Faults
from .settings import REPO_ROOT, Settings
from .store import Job, Store
from .warm_worker import ForkedWorker, WarmWorkerClient

log = logging.getLogger(__name__)

CANCEL_GRACE_SECONDS = 5.0
# Worker environment markers: how a restarted server finds a previous run's stragglers.
ENV_JOB_ID = "LOCAL_AIRBYTE_JOB_ID"
ENV_PARENT_PID = "LOCAL_AIRBYTE_PARENT_PID"
ENV_INJECTED_FAILURE = "LOCAL_AIRBYTE_INJECTED_FAILURE"
RESULT_FILE = "result.json"
# "0" starts a fresh worker process per attempt (pays `import airbyte` every time) instead of
# forking one from the warm worker.
ENV_WARM_WORKER = "LOCAL_AIRBYTE_WARM_WORKER"
MAX_ATTEMPTS = 3


def system_failure(message: str, failure_type: str = "system_error") -> dict[str, object]:
    """One entry of Airbyte's failureSummary.failures for a failure of the platform itself."""
    return {
        "failureOrigin": "replication",
        "failureType": failure_type,
        "externalMessage": message,
        "internalMessage": message,
        "retryable": failure_type == "system_error",
        "timestamp": int(time.time() * 1000),
    }


class JobNotActiveError(Exception):
    def __init__(self, job: Job) -> None:
        super().__init__(f"Job {job.job_id} is already {job.status}")
        self.job = job


def _append_log(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(f"{datetime.now(UTC).isoformat(timespec='seconds')} [server] {line}\n")


def _processes_of_job(job_id: int, state_dir: Path) -> list[int]:
    """Pids of processes started for `job_id` by a server using `state_dir` (any generation)."""
    wanted = {f"{ENV_JOB_ID}={job_id}".encode(), f"LOCAL_AIRBYTE_STATE_DIR={state_dir}".encode()}
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = set((entry / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if wanted <= environ:
            pids.append(int(entry.name))
    return pids


class JobSupervisor:
    def __init__(self, settings: Settings, store: Store, faults: Faults) -> None:
        self.settings, self.store, self.faults = settings, store, faults
        self._lock = threading.Lock()  # orders "start worker" against "cancel"
        self._procs: dict[int, subprocess.Popen[bytes] | ForkedWorker] = {}
        self._threads: dict[int, threading.Thread] = {}
        self._stopping = threading.Event()  # set at shutdown: jobs stay active for the next server
        self._warm: WarmWorkerClient | None = None
        if os.environ.get(ENV_WARM_WORKER, "1") != "0":
            # Started now, so PyAirbyte is imported by the time the first job comes.
            self._warm = WarmWorkerClient(
                {**os.environ, ENV_PARENT_PID: str(os.getpid()), "PYTHONUNBUFFERED": "1"}, REPO_ROOT
            )

    # -- startup --------------------------------------------------------------------------------

    def recover(self) -> None:
        """Resume jobs a previous server left active: kill their leftovers, start the next attempt."""
        for job in self.store.active_jobs():
            for pid in _processes_of_job(job.job_id, self.settings.state_dir):
                log.warning("killing leftover process %d of job %d", pid, job.job_id)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            log_path = self.settings.job_log(job.job_id)
            attempts = self.store.attempts(job.job_id)
            if (
                attempts
                and attempts[-1].ended_at is None
                and not self._attempt_interrupted(
                    job, log_path, "the Airbyte server restarted while the attempt was running"
                )
            ):
                continue
            _append_log(log_path, "server restarted: resuming the job")
            self._start_thread(job)

    # -- submit / cancel --------------------------------------------------------------------------

    def submit(self, connection_id: str, job_type: str) -> Job:
        """Create a pending job (ConnectionBusyError if one is active) and start watching it."""
        job = self.store.create_job(connection_id, job_type)
        _append_log(
            self.settings.job_log(job.job_id), f"{job_type} job {job.job_id} created for {connection_id}"
        )
        self._start_thread(job)
        return job

    def _start_thread(self, job: Job) -> None:
        thread = threading.Thread(target=self._run, args=(job,), name=f"job-{job.job_id}", daemon=True)
        self._threads[job.job_id] = thread
        thread.start()

    def cancel(self, job_id: int) -> Job | None:
        """Cancel an active job and wait until its processes are gone; None if unknown."""
        job = self.store.get_job(job_id)
        if job is None:
            return None
        with self._lock:
            if not self.store.finish_job(job_id, "cancelled", message="cancelled by request"):
                raise JobNotActiveError(self.store.get_job(job_id) or job)
            proc = self._procs.get(job_id)
        _append_log(self.settings.job_log(job_id), "cancel requested")
        if proc is not None:
            self._kill_group(proc)
        return self.store.get_job(job_id)

    def shutdown(self) -> None:
        """Stop watching; workers die with the server (PR_SET_PDEATHSIG); a restart resumes their jobs."""
        self._stopping.set()
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            self._kill_group(proc, grace=1.0)
        if self._warm is not None:
            self._warm.close()

    def pid_of(self, job_id: int) -> int | None:
        proc = self._procs.get(job_id)
        return proc.pid if proc else None

    # -- one job --------------------------------------------------------------------------------

    def _wait_while_held(self, job: Job) -> None:
        while (hold := self.faults.hold_for(job.connection_id)) is not None:
            _append_log(self.settings.job_log(job.job_id), "held in pending by an injected fault")
            timeout = None if hold.until is None else max(0.0, hold.until - time.monotonic())
            hold.released.wait(timeout)

    def _run(self, job: Job) -> None:
        log_path = self.settings.job_log(job.job_id)
        try:
            self._wait_while_held(job)
            while not self._stopping.is_set():
                proc = self._start_worker(job, log_path)
                if proc is None:
                    return  # cancelled before this attempt started
                returncode = proc.wait()
                with self._lock:
                    self._procs.pop(job.job_id, None)
                if self._stopping.is_set() or not self._record_result(job, returncode, log_path):
                    return
        except Exception as exc:  # the watcher must never leave a job active
            log.exception("job %d: supervisor error", job.job_id)
            self.store.end_attempt(job.job_id, "failed", failure=system_failure(f"supervisor error: {exc}"))
            self.store.finish_job(job.job_id, "failed", message=f"supervisor error: {exc}")
        finally:
            self._threads.pop(job.job_id, None)

    def _start_worker(self, job: Job, log_path: Path) -> subprocess.Popen[bytes] | ForkedWorker | None:
        env = self._worker_env(job)
        job_dir = self.settings.job_dir(job.job_id)
        (job_dir / RESULT_FILE).unlink(missing_ok=True)  # an earlier attempt's outcome
        warm = self._warm if self._warm is not None and self._warm.wait_ready() else None
        with self._lock:
            offset = log_path.stat().st_size if log_path.exists() else 0
            attempt = self.store.start_attempt(job.job_id, offset)
            if attempt is None:
                return None
            _append_log(log_path, f"attempt {attempt + 1} of at most {MAX_ATTEMPTS} starting")
            proc = warm.start(job.job_id, env, log_path) if warm is not None else None
            if proc is None:
                proc = self._cold_worker(job, env, log_path)
            self._procs[job.job_id] = proc
        self.store.set_pid(job.job_id, proc.pid)
        _append_log(
            log_path, f"worker started ({'forked warm' if warm else 'cold'}), pid {proc.pid}, dir {job_dir}"
        )
        return proc

    @staticmethod
    def _cold_worker(job: Job, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log_file:
            return subprocess.Popen(
                [sys.executable, "-m", "dev.airbyte_server.worker", str(job.job_id)],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: cancel kills connectors too
            )

    def _worker_env(self, job: Job) -> dict[str, str]:
        job_dir = self.settings.job_dir(job.job_id)
        (job_dir / "tmp").mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            ENV_JOB_ID: str(job.job_id),
            ENV_PARENT_PID: str(os.getpid()),
            "LOCAL_AIRBYTE_STATE_DIR": str(self.settings.state_dir),
            "DO_NOT_TRACK": "1",
            "AIRBYTE_OFFLINE_MODE": "1",
            "NO_LIVE_PROGRESS": "1",
            "AIRBYTE_LOGGING_ROOT": str(job_dir),
            "AIRBYTE_TEMP_DIR": str(job_dir / "tmp"),
            "PYTHONUNBUFFERED": "1",
            # A connector's venv is installed once and its modules imported by every job.
            "UV_COMPILE_BYTECODE": "1",
            # ...from the interpreter the local Airbyte runs on (`uv venv` would take the first
            # python3.11 on PATH, which may be a slower build: the Makefile's PY_INTERPRETER).
            "UV_PYTHON": os.environ.get("UV_PYTHON") or sys.executable,
        }
        if shutil.which("uv", path=env.get("PATH")) is None:
            env["AIRBYTE_NO_UV"] = "1"
        if message := self.faults.take_job_failure(job.connection_id):
            env[ENV_INJECTED_FAILURE] = message
        return env

    def _record_result(self, job: Job, returncode: int, log_path: Path) -> bool:
        """Record how the attempt ended; True when the job's next attempt should start."""
        result_path = self.settings.job_dir(job.job_id) / RESULT_FILE
        result = json.loads(result_path.read_text()) if result_path.exists() else None
        rows, bytes_ = (result or {}).get("rowsSynced", 0), (result or {}).get("bytesSynced", 0)
        current = self.store.get_job(job.job_id)
        if current is None or not current.is_active:  # cancelled while the attempt ran
            self.store.end_attempt(
                job.job_id,
                "failed",
                rows_synced=rows,
                bytes_synced=bytes_,
                failure=system_failure("The sync was cancelled.", "manual_cancellation"),
            )
            return False
        if returncode == 0 and result is not None and not result.get("error"):
            self.store.end_attempt(job.job_id, "succeeded", rows_synced=rows, bytes_synced=bytes_)
            if self.store.finish_job(job.job_id, "succeeded", rows_synced=rows, bytes_synced=bytes_):
                _append_log(log_path, f"job succeeded: {rows} rows, {bytes_} bytes")
            return False
        if result is None:  # the worker died without a word (crash, OOM, kill): retry the attempt
            return self._attempt_interrupted(job, log_path, f"the sync worker died (exit code {returncode})")
        message = result.get("error") or f"worker exited with code {returncode}"
        failure = result.get("failure") or system_failure(message)
        self.store.end_attempt(job.job_id, "failed", rows_synced=rows, bytes_synced=bytes_, failure=failure)
        if self.store.finish_job(
            job.job_id, "failed", rows_synced=rows, bytes_synced=bytes_, message=message
        ):
            _append_log(log_path, f"job failed: {message}")
        return False

    def _attempt_interrupted(self, job: Job, log_path: Path, why: str) -> bool:
        """Fail the open attempt; the job becomes `incomplete` (True) or, out of attempts, `failed`."""
        self.store.end_attempt(job.job_id, "failed", failure=system_failure(f"Attempt interrupted: {why}"))
        _append_log(log_path, f"attempt failed: {why}")
        if len(self.store.attempts(job.job_id)) >= MAX_ATTEMPTS:
            message = f"{why}; no attempts left ({MAX_ATTEMPTS} tried)"
            if self.store.finish_job(job.job_id, "failed", message=message):
                _append_log(log_path, f"job failed: {message}")
            return False
        return self.store.mark_incomplete(job.job_id)

    @staticmethod
    def _kill_group(
        proc: subprocess.Popen[bytes] | ForkedWorker, grace: float = CANCEL_GRACE_SECONDS
    ) -> None:
        """SIGTERM the worker's process group, SIGKILL whatever is left after `grace` seconds."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; finish off children that ignored SIGTERM.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return
