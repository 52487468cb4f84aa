"""A warm worker: imports PyAirbyte once, then forks a ready worker process per job attempt.

`import airbyte` costs ~10-15 s of CPU; a fresh `python -m dev.airbyte_server.worker` per job paid
it every time. The server starts this process once (`python -m dev.airbyte_server.warm_worker`)
and talks JSON lines with it:

    server -> warm worker   {"jobId": 7, "env": {...}, "log": "/.../job.log"}
    warm worker -> server   {"ready": true} once, then {"jobId": 7, "pid": 1234} and later
                            {"jobId": 7, "exit": 0}

The forked child starts its own session (a cancel kills its process group, connectors included),
takes the job's environment, writes to the job log and runs `worker.main`, exactly like a cold
worker. The warm worker stays single-threaded, so forking it is safe.
"""

from __future__ import annotations

import json
import os
import queue
import select
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import Any


def _apply_job_environment(env: dict[str, str]) -> None:
    """PyAirbyte reads a few variables at import time: point those constants at this job's dirs."""
    import airbyte.constants
    import airbyte.logs
    from airbyte._executors import util as executor_util
    from airbyte._util import temp_files

    os.environ.clear()
    os.environ.update(env)
    temp_dir = Path(env["AIRBYTE_TEMP_DIR"]) if env.get("AIRBYTE_TEMP_DIR") else None
    for module in (airbyte.constants, executor_util, temp_files):
        module.TEMP_DIR_OVERRIDE = temp_dir
    if env.get("AIRBYTE_LOGGING_ROOT"):
        airbyte.logs.AIRBYTE_LOGGING_ROOT = Path(env["AIRBYTE_LOGGING_ROOT"])


def _child(request: dict[str, Any]) -> None:
    """In the forked process: become the job's worker; never returns."""
    code = 1
    try:
        os.setsid()
        log_fd = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        null_fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        sys.stdout = sys.__stdout__
        _apply_job_environment(request["env"])
        from . import worker

        code = worker.main(["worker", str(request["jobId"])])
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> int:
    from . import worker

    worker.die_with_parent()
    # Pre-import everything a job needs; only the forked children use it.
    from . import sync  # noqa: F401

    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints must not corrupt the protocol
    children: dict[int, int] = {}

    def send(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message) + "\n")

    send({"ready": True})
    stdin = sys.stdin.buffer
    while True:
        readable, _, _ = select.select([stdin], [], [], 0.2)
        if readable:
            line = stdin.readline()
            if not line:
                return 0  # the server closed the pipe: it is going away
            request = json.loads(line)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(request)
            children[pid] = request["jobId"]
            send({"jobId": request["jobId"], "pid": pid})
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            if pid in children:
                send({"jobId": children.pop(pid), "exit": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    sys.exit(serve())


class ForkedWorker:
    """The server's handle on a forked worker: the subset of `subprocess.Popen` the supervisor uses."""

    def __init__(self, job_id: int, pid: int) -> None:
        self.job_id, self.pid = job_id, pid
        self.returncode: int | None = None
        self._done = threading.Event()

    def exited(self, code: int) -> None:
        self.returncode = code
        self._done.set()

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(f"worker of job {self.job_id}", timeout or 0)
        assert self.returncode is not None
        return self.returncode


class WarmWorkerClient:
    """Starts the warm worker once and forks job workers through it (server side)."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        import subprocess

        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._pids: dict[int, Any] = {}  # job id -> queue of the pid reply
        self._workers: dict[int, ForkedWorker] = {}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dev.airbyte_server.warm_worker"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.alive = True
        threading.Thread(target=self._read, name="warm-worker", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            message = json.loads(raw)
            if message.get("ready"):
                self._ready.set()
            elif "pid" in message:
                # Registered here, before the reader can see this worker's exit message.
                worker = ForkedWorker(message["jobId"], message["pid"])
                with self._lock:
                    self._workers[worker.job_id] = worker
                self._pids.pop(worker.job_id).put(worker)
            elif "exit" in message:
                with self._lock:
                    worker = self._workers.pop(message["jobId"], None)
                if worker:
                    worker.exited(message["exit"])
        # The warm worker died: so did its children (PR_SET_PDEATHSIG). Report them as killed.
        self.alive = False
        self._ready.set()
        with self._lock:
            orphans, self._workers = list(self._workers.values()), {}
        for worker in orphans:
            worker.exited(-9)
        for waiting in list(self._pids.values()):
            waiting.put(None)

    def wait_ready(self, timeout: float = 600) -> bool:
        return self._ready.wait(timeout) and self.alive

    def start(self, job_id: int, env: dict[str, str], log_path: Path) -> ForkedWorker | None:
        """Fork a worker for the job; None when the warm worker is gone (use a cold one)."""
        if not self.wait_ready():
            return None
        reply: queue.Queue[ForkedWorker | None] = queue.Queue()
        self._pids[job_id] = reply
        env = {**env, "LOCAL_AIRBYTE_PARENT_PID": str(self.proc.pid)}
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(
                (json.dumps({"jobId": job_id, "env": env, "log": str(log_path)}) + "\n").encode()
            )
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            self._pids.pop(job_id, None)
            return None
        return reply.get(timeout=60)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=5)
        except Exception:
            self.proc.kill()
