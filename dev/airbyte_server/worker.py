"""One job, in its own process: `python -m dev.airbyte_server.worker JOB_ID`.

Started by the supervisor with the server's environment. Writes its outcome to
`<job dir>/result.json` ({"rowsSynced", "bytesSynced", "error"?}); the supervisor turns that
and the exit code into the job's final status. Output goes to the job log.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
import time
import traceback

from .settings import Settings
from .store import Store
from .supervisor import ENV_INJECTED_FAILURE, ENV_PARENT_PID, RESULT_FILE
from .sync import SyncRunner
from .workspace import load_workspace

_PR_SET_PDEATHSIG = 1


class InjectedFailureError(RuntimeError):
    """Raised for a job an injected fault told to fail."""


def die_with_parent() -> None:
    """Have the kernel kill this process when its parent (server or warm worker) dies (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    # The server may have died before prctl took effect.
    if os.environ.get(ENV_PARENT_PID) and os.getppid() != int(os.environ[ENV_PARENT_PID]):
        os._exit(1)


def failure_of(exc: BaseException) -> dict[str, object]:
    """The exception as one entry of Airbyte's `failureSummary.failures`.

    PyAirbyte's errors carry the connector's own message (e.g. the source's TRACE error) in
    `get_message()` and the connector's last log lines in `log_text`.
    """
    if isinstance(exc, InjectedFailureError):
        origin = "replication"
    elif getattr(exc, "connector_name", None):
        origin = "source"
    elif (
        type(exc).__module__.split(".")[0] in ("psycopg", "psycopg2", "sqlalchemy")
        or "Cache" in type(exc).__name__
    ):
        origin = "destination"
    else:
        origin = "replication"
    get_message = getattr(exc, "get_message", None)
    external = (get_message() if callable(get_message) else str(exc)).strip() or type(exc).__name__
    internal = str(getattr(exc, "original_exception", None) or "") or external
    log_text = getattr(exc, "log_text", None)
    if isinstance(log_text, list):
        log_text = "\n".join(log_text)
    if log_text:
        internal = f"{internal}\nLast connector log lines:\n" + "\n".join(log_text.splitlines()[-10:])
    return {
        "failureOrigin": origin,
        "failureType": "system_error" if origin == "replication" else "config_error",
        "externalMessage": external.splitlines()[0],
        "internalMessage": internal,
        "stacktrace": "".join(traceback.format_exception(exc))[-4000:],
        "retryable": False,
        "timestamp": int(time.time() * 1000),
    }


def run(job_id: int) -> int:
    settings = Settings.from_env()
    result: dict[str, object] = {"rowsSynced": 0, "bytesSynced": 0}
    store = Store(settings.db_url, pool_size=2)
    try:
        job = store.get_job(job_id)
        if job is None:
            raise LookupError(f"job {job_id} is not in the store")
        logging.info("%s job %d of connection %s", job.job_type, job.job_id, job.connection_id)
        if message := os.environ.get(ENV_INJECTED_FAILURE):
            raise InjectedFailureError(message)
        workspace = load_workspace(settings.workspace_file)
        connection = workspace.connection(job.connection_id)
        if connection is None:
            raise LookupError(f"connection {job.connection_id} is not in {settings.workspace_file}")
        runner = SyncRunner(
            workspace,
            connection,
            store,
            connectors_dir=settings.connectors_dir,
            cache_dir=settings.job_dir(job_id) / "cache",
        )
        stats = runner.reset() if job.job_type == "reset" else runner.sync()
        result.update(rowsSynced=stats.rows_synced, bytesSynced=stats.bytes_synced)
        logging.info("done: %d rows, %d bytes", stats.rows_synced, stats.bytes_synced)
        return 0
    except Exception as exc:
        traceback.print_exc()
        failure = failure_of(exc)
        result["error"] = f"{type(exc).__name__}: {failure['externalMessage']}"
        result["failure"] = failure
        return 1
    finally:
        (settings.job_dir(job_id) / RESULT_FILE).write_text(json.dumps(result))
        store.close()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m dev.airbyte_server.worker JOB_ID", file=sys.stderr)
        return 2
    die_with_parent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [worker] %(levelname)s %(name)s: %(message)s")
    return run(int(argv[1]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
