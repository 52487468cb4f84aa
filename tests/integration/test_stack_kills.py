"""A pipeline run in flight survives SIGKILL of the scheduler, the triggerer or a task runner
(the `sync` task's; the dbt producer's on request, see its test).

Each scenario kills one process while an energy_meters run is at a known point, lets
`python -m dev.stack up` restart what died, and checks the run succeeds with one Airbyte sync
job for its window, no duplicate rows in the raw tables or marts, and no orphan processes.
Its own stack (STACK_HOME in a temporary directory, ports 56520/18480-18484), so it can run
beside test_stack.py; the connector syncs only the days the runs need (ENERGY_START/END_DATE).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest

from dev.airbyte_api import AirbyteAPI
from dev.airflow_client import AirflowClient
from tests.conftest import read_stack_env
from tests.integration import test_stack
from tests.integration.pipeline_runs import (
    ENERGY_CONNECTION,
    assert_energy_marts_match,
    local_airbyte,
    meter_energy,
)
from tests.integration.test_stack import orphan_pids, service_pids

pytestmark = pytest.mark.stack

PORTS = {
    "STACK_PG_PORT": "56520",
    "STACK_AIRFLOW_PORT": "18480",
    "STACK_AIRBYTE_PORT": "18481",
    "STACK_METER_PORT": "18482",
    "STACK_RECEIVERS_HTTP_PORT": "18483",
    "STACK_RECEIVERS_SMTP_PORT": "18484",
}
KILL_DAYS = {
    "scheduler": date(2023, 2, 12),
    "triggerer": date(2023, 2, 13),
    "task-runner": date(2023, 2, 14),
    "dbt-producer": date(2023, 2, 15),
}
# Day D's marts need the reading at D+1 00:00 (a reading covers the 15 minutes before it).
WINDOW = {
    "ENERGY_START_DATE": str(min(KILL_DAYS.values())),
    "ENERGY_END_DATE": str(max(KILL_DAYS.values()) + timedelta(days=1)),
}
SYNC, WAIT, PRODUCER = "airbyte_energy.sync", "airbyte_energy.wait", "dbt.dbt_producer_watcher"
T = TypeVar("T")


def stack(home: Path, command: str) -> subprocess.CompletedProcess[str]:
    result = test_stack.runner(home, command, **PORTS, **WINDOW)
    assert result.returncode == 0, f"{command}:\n{result.stdout}{result.stderr}"
    return result


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="elt-stack-kills-"))
    path.chmod(0o755)  # Postgres runs as an unprivileged user
    yield path
    test_stack.runner(home=path, command="down", **PORTS)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def kill_stack(home: Path) -> dict[str, str]:
    stack(home, "up")
    env = {**read_stack_env(home / "stack.env"), **WINDOW}
    client = AirflowClient.from_env(env)
    client.wait_for_dags(["energy_meters"], timeout=300)
    # test_stack.runner turns the job schedule off: unpausing starts no run of the latest interval,
    # and passing midnight starts none either, so every sync job on this stack is a scenario's.
    _poll("unpaused", lambda: client.unpause("energy_meters") or True)
    return env


def energy_sync_jobs(env: dict[str, str], after: int = 0) -> list[dict]:
    """The energy connection's sync jobs with ids above `after` (job ids only grow), oldest first."""
    path = f"/jobs?connectionId={ENERGY_CONNECTION}&jobType=sync&limit=100&orderBy=createdAt|DESC"
    jobs = AirbyteAPI.from_connection(env).get(path)["data"]
    return sorted((j for j in jobs if j["jobId"] > after), key=lambda j: j["jobId"])


def _poll(what: str, check: Callable[[], T], timeout: float = 300, every: float = 0.5) -> T:
    """check() until it returns something true. The box may be busy: an API call that times out or
    answers 5xx is asked again, not a failure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if found := check():
                return found
        except (OSError, RuntimeError) as err:
            if isinstance(err, RuntimeError) and "HTTP 5" not in str(err):
                raise
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s")


def _finished_run(client: AirflowClient, run_id: str) -> dict:
    def finished() -> dict | None:
        run = client.run("energy_meters", run_id)
        return run if run["state"] in ("success", "failed") else None

    return _poll(f"run {run_id} finished", finished, timeout=900, every=3)


def _ti(client: AirflowClient, run_id: str, task_id: str) -> dict:
    return next(
        (t for t in client.task_instances("energy_meters", run_id) if t["task_id"] == task_id),
        {"state": None},
    )


def task_process(ti_id: str) -> int | None:
    """The process running a task instance: the task runner titles itself `airflow worker -- <ti id>`."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if title.strip() == f"airflow worker -- {ti_id}":
                return int(entry.name)
    return None


def _in_flight_sync(env: dict[str, str], client: AirflowClient, run_id: str, before: int) -> dict:
    """Wait until the run's sync task has created its Airbyte job and is still waiting for the reply."""

    def ready() -> dict | None:
        ti = _ti(client, run_id, SYNC)
        return ti if ti["state"] == "running" and energy_sync_jobs(env, before) else None

    return _poll("the sync task running with its job created", ready, timeout=300)


def _start_run(env: dict[str, str], client: AirflowClient, scenario: str) -> tuple[str, int]:
    local_airbyte(env, "DELETE", "/faults")
    jobs = energy_sync_jobs(env)
    before = jobs[-1]["jobId"] if jobs else 0
    day = KILL_DAYS[scenario]
    logical = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    run_id = f"kill-{scenario}-{int(time.time())}"

    def triggered() -> str:
        try:
            client.post(
                "/api/v2/dags/energy_meters/dagRuns",
                {"dag_run_id": run_id, "logical_date": logical.isoformat()},
            )
        except RuntimeError as err:
            if "409" not in str(err):  # a retry after a lost reply finds the run created
                raise
        return run_id

    return _poll("run triggered", triggered), before


def _drop_submit_reply(env: dict[str, str]) -> None:
    # Airbyte creates the job, the reply never comes: the sync task is in flight with a job to reuse.
    local_airbyte(
        env, "POST", "/faults/drop-reply", {"seconds": 120, "method": "POST", "pathPrefix": "/jobs"}
    )


def assert_survived(
    home: Path, env: dict[str, str], client: AirflowClient, run_id: str, before: int, day: date
) -> dict:
    run = _finished_run(client, run_id)
    tis = {
        t["task_id"]: t
        for t in _poll("task instances", lambda: client.task_instances("energy_meters", run_id))
    }
    states = {task: (ti["state"], ti["try_number"]) for task, ti in tis.items()}
    assert run["state"] == "success", states
    jobs = energy_sync_jobs(env, before)
    assert [j["status"] for j in jobs] == ["succeeded"], f"one sync for the window, got {jobs}"
    with psycopg.connect(env["WAREHOUSE_URL"]) as conn:
        for table in ("muid_1", "muid_2"):
            dup = conn.execute(
                f'select count(*) - count(distinct "timestamp") from raw_energy.{table}'
            ).fetchone()[0]
            assert dup == 0, f"raw_energy.{table}: {dup} duplicate rows"
        for mart, key in (
            ("fct_energy_daily", "reading_date, meter_muid, direction"),
            ("fct_energy_hourly", "hour_start_at, meter_muid, direction"),
        ):
            dup = conn.execute(
                f"select count(*) from (select {key} from analytics_marts.{mart} group by {key} having count(*) > 1) d"
            ).fetchone()[0]
            assert dup == 0, f"analytics_marts.{mart}: {dup} duplicated keys"
    assert_energy_marts_match(env["WAREHOUSE_URL"], meter_energy(env, day, day), day, day)
    deadline = time.monotonic() + 15  # a task's processes may still be exiting after the run ended
    while (orphans := orphan_pids(home)) and time.monotonic() < deadline:
        time.sleep(1)
    assert orphans == [], f"orphans {orphans}"
    return states


def test_run_survives_sigkill_of_the_scheduler(home: Path, kill_stack: dict[str, str]) -> None:
    env, client = kill_stack, AirflowClient.from_env(kill_stack)
    run_id, before = _start_run(env, client, "scheduler")
    _drop_submit_reply(env)
    _in_flight_sync(env, client, run_id, before)
    os.kill(service_pids(home)["airflow-scheduler"], signal.SIGKILL)
    stack(home, "up")
    states = assert_survived(home, env, client, run_id, before, KILL_DAYS["scheduler"])
    assert states[SYNC][1] >= 2, states  # the killed try was retried and reused the job


def test_run_survives_sigkill_of_the_triggerer(home: Path, kill_stack: dict[str, str]) -> None:
    env, client = kill_stack, AirflowClient.from_env(kill_stack)
    run_id, before = _start_run(env, client, "triggerer")
    local_airbyte(env, "POST", "/faults/hold-jobs", {"connectionId": ENERGY_CONNECTION})
    try:
        _poll("the wait deferred", lambda: _ti(client, run_id, WAIT)["state"] == "deferred", timeout=300)
        os.kill(service_pids(home)["airflow-triggerer"], signal.SIGKILL)
        stack(home, "up")
    finally:
        local_airbyte(env, "DELETE", f"/faults/hold-jobs/{ENERGY_CONNECTION}")
    assert_survived(home, env, client, run_id, before, KILL_DAYS["triggerer"])


def test_run_survives_sigkill_of_a_task_runner(home: Path, kill_stack: dict[str, str]) -> None:
    env, client = kill_stack, AirflowClient.from_env(kill_stack)
    run_id, before = _start_run(env, client, "task-runner")
    _drop_submit_reply(env)
    ti = _in_flight_sync(env, client, run_id, before)
    pid = _poll("the sync task's process", lambda: task_process(ti["id"]), timeout=30)
    os.kill(pid, signal.SIGKILL)
    stack(home, "up")
    states = assert_survived(home, env, client, run_id, before, KILL_DAYS["task-runner"])
    assert states[SYNC][1] >= 2, states  # the killed try was retried and reused the job


# The producer's retry skips and every model's task runs dbt itself: 99 s on the faster 2-core machine
# (~10 min on the slower one), past the suite's budget for these tests, so only on request.
@pytest.mark.skipif(
    os.environ.get("ELT_KILL_DBT_PRODUCER") != "1", reason="slow (2-10 min): set ELT_KILL_DBT_PRODUCER=1"
)
def test_run_survives_sigkill_of_the_dbt_producer(home: Path, kill_stack: dict[str, str]) -> None:
    env, client = kill_stack, AirflowClient.from_env(kill_stack)
    run_id, before = _start_run(env, client, "dbt-producer")

    def producer_process() -> int | None:
        ti = _ti(client, run_id, PRODUCER)
        return task_process(ti["id"]) if ti["state"] == "running" else None

    pid = _poll("the dbt producer running", producer_process, timeout=600)
    os.kill(pid, signal.SIGKILL)
    stack(home, "up")
    states = assert_survived(home, env, client, run_id, before, KILL_DAYS["dbt-producer"])
    assert states[PRODUCER][0] == "skipped", states  # its retry hands each model to its own task
