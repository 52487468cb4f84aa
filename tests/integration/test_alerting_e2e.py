"""On-call alerting end to end: real Airflow runs page real (local) receivers.

The shipped pipelines carry no alert routes to a local receiver and no one-minute deadline, so this
module runs its own stack (like test_stack.py: a separate STACK_HOME on other ports) whose
pipelines are the shipped specs plus alert routes, one retry after 5 s, dbt in the default watcher
mode, and, for ecommerce_sales, a 45-second deadline after the window ends (energy_meters' deadline
is moved past the test). The receivers (dev.receivers) run in this process.

Scenarios, in order (they share the stack and the pipelines' incident state):
1. the local Airbyte fails the energy job -> the run fails, exactly one PagerDuty trigger and one
   Slack message, both with the Airbyte job id and the job's failure reason;
2. Clear on the failed `sync` (with downstream, as the UI does) -> 200, the re-run succeeds, and
   exactly one PagerDuty resolve of that window's incident, and the recovery in Slack;
3. a dbt test fails -> the page names the failing test and its compiled SQL; no retry line blames
   a task that ends up passing; clearing the whole run (failed tasks) after the fix -> 200, success, resolve;
4. a deadline shorter than the run -> a page, naming the window, while the run is still running;
5. a run that failed before its deadline -> no page at the deadline (the deadline is marked missed);
6. the receivers are down -> the run is still failed and the task log says why the alert was not delivered.

ALERTING_E2E_STACK_HOME reuses (and leaves running) a stack started earlier with the same settings.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml

from dev.airflow_client import AirflowClient
from dev.receivers import Receivers
from tests.conftest import read_stack_env

REPO = Path(__file__).resolve().parents[2]
PORTS = {
    "STACK_PG_PORT": "56120",
    "STACK_AIRFLOW_PORT": "18180",
    "STACK_AIRBYTE_PORT": "18101",
    "STACK_METER_PORT": "18111",
    # The stack's own receivers service stays out of the way; this module's receivers get the alerts.
    "STACK_RECEIVERS_HTTP_PORT": "18125",
    "STACK_RECEIVERS_SMTP_PORT": "18126",
}
HTTP_PORT, SMTP_PORT = 18025, 18026
ENERGY, ECOMMERCE = "energy_meters", "ecommerce_sales"
CONNECTION = {
    ENERGY: "4d2f7268-e2ac-4fa7-a3a6-97286f22d617",
    ECOMMERCE: "c19e6614-68eb-489d-94b1-58e56dfa934e",
}
BAD_ROW_ID = "alerting-e2e-bad-row"
DEADLINE_SECONDS = 45
CALLBACK_GRACE = 2  # seconds: see settle
# Seconds from triggering to the deadline of the run that fails first (it fails in about 15).
FAILED_RUN_DEADLINE = 60
FAILURE_CAUSE = "HTTP 401 from meter API (token expired)"

pytestmark = pytest.mark.stack


def pipelines(directory: Path) -> Path:
    routes = {
        "slack": {"conn_id": "slack_alerts", "severity": "critical", "notify_retries": True},
        "pagerduty": {"conn_id": "pagerduty_alerts", "severity": "critical"},
        "email": {"conn_id": "smtp_alerts", "to": ["oncall@example.com"]},
    }
    for name in (ENERGY, ECOMMERCE):
        spec = yaml.safe_load((REPO / "include" / "pipelines" / f"{name}.yaml").read_text())
        spec["alerts"] = routes
        spec["limits"] = {**spec.get("limits", {}), "retries": 1, "retry_delay": "PT5S"}
        spec["dbt"] = {**spec["dbt"], "execution": os.environ.get("ALERTING_E2E_DBT_EXECUTION", "watcher")}
        if name == ECOMMERCE:
            spec["deadline"] = f"PT{DEADLINE_SECONDS}S"
        else:  # the window ends at 00:00 UTC: keep its deadline beyond this test, whenever it runs
            spec["deadline"] = f"PT{datetime.now(UTC).hour + 6}H"
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return directory


@pytest.fixture(scope="module")
def receivers() -> Iterator[Receivers]:
    running = Receivers("127.0.0.1", HTTP_PORT, SMTP_PORT).start()
    yield running
    running.stop()  # idempotent: scenario 5 stops them early


@pytest.fixture(scope="module")
def stack_env(tmp_path_factory: pytest.TempPathFactory, receivers: Receivers) -> Iterator[dict[str, str]]:
    reuse = os.environ.get("ALERTING_E2E_STACK_HOME")
    # Not under pytest's basetemp: any later pytest session of the same user resets that to mode 0700,
    # and the stack's Postgres (an unprivileged user) then loses its data directory mid-module.
    home = Path(reuse) if reuse else Path(tempfile.mkdtemp(prefix="elt-alerting-stack-"))
    for parent in [home, *home.parents]:  # Postgres runs as an unprivileged user
        if parent != Path("/"):
            parent.chmod(parent.stat().st_mode | 0o055)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW__"))}
    env.update(
        PORTS, STACK_HOME=str(home), ELT_PIPELINES_DIR=str(pipelines(tmp_path_factory.mktemp("pipelines")))
    )
    env["AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE"] = "False"  # the scenarios' runs are the only runs
    env.update({f"AIRFLOW_CONN_{k.upper()}": json.dumps(v) for k, v in receivers.connections().items()})
    stack = [sys.executable, "-m", "dev.stack"]
    already_up = subprocess.run([*stack, "status"], cwd=REPO, env=env, capture_output=True).returncode == 0
    if not already_up:
        up = subprocess.run([*stack, "up"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert up.returncode == 0, f"stack did not start:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}"
    yield read_stack_env(home / "stack.env")
    if not already_up:
        subprocess.run([*stack, "down"], cwd=REPO, env=env, capture_output=True, timeout=300)
        if not reuse:
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def client(stack_env: dict[str, str]) -> AirflowClient:
    airflow = AirflowClient.from_env(stack_env)
    airflow.wait_for_dags([ENERGY, ECOMMERCE])
    return airflow


@pytest.fixture(scope="module")
def airbyte(stack_env: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack_env["LOCAL_AIRBYTE_URL"], timeout=30) as api:
        api.delete("/local/faults").raise_for_status()
        yield api
        api.delete("/local/faults").raise_for_status()


@pytest.fixture
def recorded(receivers: Receivers) -> Callable[[], dict[str, list[dict[str, Any]]]]:
    receivers.recorder.clear()
    return lambda: receivers.recorder.snapshot()


def start_run(client: AirflowClient, dag_id: str, logical_date: datetime | None = None) -> str:
    """Trigger a run (unpausing the DAG first). The stack creates no cron-scheduled runs (see
    stack_env): a run the scheduler started as the clock passed a schedule tick would page too."""
    if client.get(f"/api/v2/dags/{dag_id}")["is_paused"]:
        client.unpause(dag_id)
    return client.trigger(dag_id, logical_date=logical_date)


def settle(
    recorded: Callable[[], dict], until: Callable[[dict], bool], *also: Callable[[], bool]
) -> dict[str, list[dict[str, Any]]]:
    """What arrived once the run's callbacks have run: poll until `until(got)` and every `also()` hold.

    Task callbacks run on the worker right after the task reports its state; DAG-run callbacks run
    later, in the dag-processor (`dag_callback_ran`). Once the last callback has started, its
    deliveries to the local receivers take well under a second (the dag-processor log shows
    "Executing ..." to the last "sent via" in 0.3 s): CALLBACK_GRACE covers them, so a message
    nobody expected (a second page) is in what this returns. Gives up after two minutes.
    """
    deadline = time.monotonic() + 120
    got = recorded()
    while not (until(got) and all(check() for check in also)) and time.monotonic() < deadline:
        time.sleep(1)
        got = recorded()
    time.sleep(CALLBACK_GRACE)
    return recorded()


def dag_callbacks(stack_env: dict[str, str], dag_id: str, kind: str) -> int:
    """How many on_<kind> DAG-run callbacks of dag_id the dag-processor has executed so far.

    Airflow exposes no API for them; the dag-processor logs each one to the DAG file's log.
    """
    line = f'"event":"Executing on_{kind} dag callback","dag_id":"{dag_id}"'
    logs = Path(stack_env["AIRFLOW_HOME"]) / "logs" / "dag_processor"
    return sum(path.read_text(errors="replace").count(line) for path in logs.glob(f"*/*/{dag_id}.py.log"))


def dag_callback_ran(stack_env: dict[str, str], dag_id: str, kind: str) -> Callable[[], bool]:
    """A check for `settle`: one more on_<kind> callback of dag_id has run since this was called."""
    before = dag_callbacks(stack_env, dag_id, kind)
    return lambda: dag_callbacks(stack_env, dag_id, kind) > before


def pages(got: dict, action: str) -> list[dict[str, Any]]:
    return [e["body"] for e in got["pagerduty"] if e["body"]["event_action"] == action]


def task_log(client: AirflowClient, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
    path = (
        f"/api/v2/dags/{dag_id}/dagRuns/{urllib.request.quote(run_id, safe='')}/taskInstances/{task_id}"
        f"/logs/{try_number}?full_content=true"
    )
    return json.dumps(client.get(path))


def quoted(run_id: str) -> str:
    return urllib.request.quote(run_id, safe="")


def clear_task_like_the_ui(client: AirflowClient, dag_id: str, run_id: str, task_id: str) -> None:
    """Grid -> failed task -> Clear -> "Downstream" -> Confirm: the request the UI sends."""
    body = {
        "dry_run": False,
        "dag_run_id": run_id,
        "task_ids": [task_id],
        "include_downstream": True,
        "include_upstream": False,
        "include_future": False,
        "include_past": False,
        "only_failed": False,
        "reset_dag_runs": True,
    }
    cleared = client.post(f"/api/v2/dags/{dag_id}/clearTaskInstances", body)  # raises unless 2xx
    assert task_id in {ti["task_id"] for ti in cleared["task_instances"]}, cleared


FAILED_ENERGY_RUN: dict[str, str] = {}


def test_a_failed_airbyte_job_fails_the_run_and_pages_once_with_the_job_id_and_cause(
    client: AirflowClient, airbyte: httpx.Client, stack_env: dict[str, str], recorded: Callable[[], dict]
) -> None:
    run_callback = dag_callback_ran(stack_env, ENERGY, "failure")
    airbyte.post(
        "/local/faults/fail-next-job", json={"connectionId": CONNECTION[ENERGY], "message": FAILURE_CAUSE}
    ).raise_for_status()
    run_id = start_run(client, ENERGY)
    assert client.wait_for_run(ENERGY, run_id, timeout=600)["state"] == "failed"
    FAILED_ENERGY_RUN["run_id"] = run_id
    job_id = client.get(
        f"/api/v2/dags/{ENERGY}/dagRuns/{quoted(run_id)}/taskInstances/airbyte_energy.sync/xcomEntries/return_value"
    )["value"]

    # The task's page on every route, then the run's own failure callback (which must not page again).
    got = settle(recorded, lambda g: bool(pages(g, "trigger") and g["slack"] and g["email"]), run_callback)
    triggers = pages(got, "trigger")
    assert len(triggers) == 1, got["pagerduty"]
    FAILED_ENERGY_RUN["dedup_key"] = triggers[0]["dedup_key"]
    assert triggers[0]["dedup_key"].startswith(f"elt/{ENERGY}/")  # one incident per pipeline and window
    assert triggers[0]["payload"]["custom_details"]["airbyte_job"] == str(job_id)
    assert f"Airbyte job {job_id}" in triggers[0]["payload"]["summary"]
    assert len(got["slack"]) == 1, got["slack"]
    slack = got["slack"][0]["body"]["text"]
    assert str(job_id) in slack and f"jobId={job_id}" in slack and "airbyte_energy.wait" in slack
    assert len(got["email"]) == 1
    # The cause, not only "job N failed" (the wait task's error carries the job's failure reason).
    assert FAILURE_CAUSE in slack and FAILURE_CAUSE in got["email"][0]["text"], slack


def test_clearing_the_failed_sync_reruns_the_window_and_resolves_its_incident(
    client: AirflowClient, stack_env: dict[str, str], recorded: Callable[[], dict]
) -> None:
    run_id = FAILED_ENERGY_RUN["run_id"]
    run_callback = dag_callback_ran(stack_env, ENERGY, "success")
    clear_task_like_the_ui(client, ENERGY, run_id, "airbyte_energy.sync")
    assert client.wait_for_run(ENERGY, run_id, timeout=900)["state"] == "success"

    got = settle(recorded, lambda g: bool(pages(g, "resolve")), run_callback)
    assert pages(got, "trigger") == []
    resolves = pages(got, "resolve")
    assert [r["dedup_key"] for r in resolves] == [FAILED_ENERGY_RUN["dedup_key"]]
    assert [m["body"]["text"] for m in got["slack"] if "recovered" in m["body"]["text"]]


@pytest.fixture
def failing_dbt_test(stack_env: dict[str, str]) -> Iterator[str]:
    """A raw reading without a meter id: stg_energy_meters__muid_1's not_null test on meter_muid fails."""
    with psycopg.connect(stack_env["WAREHOUSE_URL"], autocommit=True) as conn:
        conn.execute(
            """insert into raw_energy.muid_1 (measurement, "timestamp", tags, _airbyte_raw_id,
                   _airbyte_extracted_at, _airbyte_meta, _airbyte_generation_id)
               values ('energy', '1999-01-01T00:15:00.000Z', '{"quality": "measured"}', %s, now(), '{}', 0)""",
            (BAD_ROW_ID,),
        )
    yield "not_null_stg_energy_meters__muid_1_meter_muid"
    with psycopg.connect(stack_env["WAREHOUSE_URL"], autocommit=True) as conn:
        conn.execute("delete from raw_energy.muid_1 where _airbyte_raw_id = %s", (BAD_ROW_ID,))


def test_a_failing_dbt_test_is_named_in_the_page_and_clearing_the_run_resolves_it(
    client: AirflowClient, failing_dbt_test: str, stack_env: dict[str, str], recorded: Callable[[], dict]
) -> None:
    run_callback = dag_callback_ran(stack_env, ENERGY, "failure")
    run_id = start_run(client, ENERGY)
    assert client.wait_for_run(ENERGY, run_id, timeout=900)["state"] == "failed"

    # Every failed task's callback has run by the time the run's own failure callback has.
    got = settle(recorded, lambda g: bool(pages(g, "trigger")), run_callback)
    triggers = pages(got, "trigger")
    assert triggers, got["pagerduty"]
    assert {t["dedup_key"] for t in triggers} == {triggers[0]["dedup_key"]}  # one incident
    failing = [t["payload"]["custom_details"].get("failing_dbt_test", "") for t in triggers]
    named = [f for f in failing if f.startswith(failing_dbt_test)]
    assert named, failing
    assert re.search(r"target/(compiled|run)/managed_elt/models/staging/energy_meters", named[0]), named
    # No Slack line may blame a task that ended up passing.
    states = {ti["task_id"]: ti["state"] for ti in client.task_instances(ENERGY, run_id)}
    passed = [t for t, state in states.items() if state == "success"]
    for message in got["slack"]:
        text = message["body"]["text"]
        blamed = [t for t in passed if f"task {t} failed" in text]
        assert not blamed, (blamed, text)
    assert any(failing_dbt_test in m["body"]["text"] for m in got["slack"])

    # Fix the data, then Clear the whole run (only failed tasks), as the runbook says.
    with psycopg.connect(stack_env["WAREHOUSE_URL"], autocommit=True) as conn:
        conn.execute("delete from raw_energy.muid_1 where _airbyte_raw_id = %s", (BAD_ROW_ID,))
    recorded_before = len(pages(recorded(), "resolve"))
    run_callback = dag_callback_ran(stack_env, ENERGY, "success")
    tries = {ti["task_id"]: ti["try_number"] for ti in client.task_instances(ENERGY, run_id)}
    failed = {t for t, state in states.items() if state in ("failed", "upstream_failed")}
    assert failed, states
    client.post(
        f"/api/v2/dags/{ENERGY}/dagRuns/{quoted(run_id)}/clear", {"dry_run": False, "only_failed": True}
    )
    assert client.wait_for_run(ENERGY, run_id, timeout=900)["state"] == "success"
    # Each cleared task succeeded on its first attempt after the clear: none read the producer's
    # results from before it (a model dbt had skipped reads 'failed' there) and failed into a retry.
    after = {ti["task_id"]: (ti["state"], ti["try_number"]) for ti in client.task_instances(ENERGY, run_id)}
    assert {t: after[t] for t in failed} == {t: ("success", tries[t] + 1) for t in failed}
    got = settle(recorded, lambda g: len(pages(g, "resolve")) > recorded_before, run_callback)
    assert triggers[0]["dedup_key"] in [r["dedup_key"] for r in pages(got, "resolve")]


def test_a_run_past_its_deadline_pages_while_it_is_still_running(
    client: AirflowClient, airbyte: httpx.Client, recorded: Callable[[], dict]
) -> None:
    airbyte.post(
        "/local/faults/hold-jobs", json={"connectionId": CONNECTION[ECOMMERCE], "seconds": 240}
    ).raise_for_status()
    # Its window's deadline (logical date + 1 day + DEADLINE_SECONDS) passes ~20 s after the trigger,
    # while the sync is held. (A manual run triggered after its deadline, a re-run of an old window,
    # does not page at it: tests/unit/test_alerting.py.)
    logical_date = (datetime.now(UTC) - timedelta(days=1, seconds=DEADLINE_SECONDS - 20)).replace(
        microsecond=0
    )
    run_id = start_run(client, ECOMMERCE, logical_date)
    try:
        paged = []
        deadline = time.monotonic() + 180
        while not paged and time.monotonic() < deadline:
            time.sleep(3)
            paged = [
                e for e in pages(recorded(), "trigger") if e["payload"].get("class") == "deadline_missed"
            ]
        assert paged, "no deadline page within 180 s"
        run = client.run(ECOMMERCE, run_id)
        assert run["state"] == "running"
        assert paged[0]["dedup_key"].startswith(f"elt/{ECOMMERCE}/")
        assert run_id in json.dumps(paged[0])
        assert f"{run['data_interval_start'][:19]}" in paged[0]["payload"]["summary"]  # names the window
    finally:
        client.patch(
            f"/api/v2/dags/{ECOMMERCE}/dagRuns/{urllib.request.quote(run_id, safe='')}", {"state": "failed"}
        )
        airbyte.delete("/local/faults").raise_for_status()
        # Let the released job end, so the next run starts a sync of its own instead of attaching to it.
        job_id = client.get(
            f"/api/v2/dags/{ECOMMERCE}/dagRuns/{quoted(run_id)}/taskInstances/airbyte_ecommerce.sync/xcomEntries/return_value"
        )["value"]
        for _ in range(100):
            if airbyte.get(f"/local/jobs/{job_id}").json()["status"] not in (
                "pending",
                "running",
                "incomplete",
            ):
                break
            time.sleep(3)


def deadline_callback(stack_env: dict[str, str], dag_id: str, run_id: str) -> tuple[str | None, str | None]:
    """(state, output) of the callback of a run's deadline, from the metadata database.

    The API lists deadlines (and whether the scheduler marked them missed) but not their
    callbacks; the triggerer records there whether the callback has run and what it returned.
    """
    url = stack_env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].replace("+psycopg2", "")
    with psycopg.connect(url, connect_timeout=10) as conn:
        row = conn.execute(
            """select c.state, c.output from deadline d join dag_run r on r.id = d.dagrun_id
               join callback c on c.id = d.callback_id where r.dag_id = %s and r.run_id = %s""",
            (dag_id, run_id),
        ).fetchone()
    return (row[0], row[1]) if row else (None, None)


def test_a_run_that_failed_does_not_page_again_at_its_deadline(
    client: AirflowClient, airbyte: httpx.Client, stack_env: dict[str, str], recorded: Callable[[], dict]
) -> None:
    # A logical date whose window's deadline (logical date + 1 day + 45 s) is FAILED_RUN_DEADLINE s
    # from now: the run fails well before it (about 15 s on a quiet machine; asserted below).
    logical_date = (
        datetime.now(UTC) + timedelta(seconds=FAILED_RUN_DEADLINE - DEADLINE_SECONDS) - timedelta(days=1)
    ).replace(microsecond=0)
    airbyte.post(
        "/local/faults/fail-next-job", json={"connectionId": CONNECTION[ECOMMERCE], "message": FAILURE_CAUSE}
    ).raise_for_status()
    run_id = client.trigger(ECOMMERCE, logical_date=logical_date)
    run = client.wait_for_run(ECOMMERCE, run_id, timeout=600)
    assert run["state"] == "failed"
    path = f"/ui/dags/{ECOMMERCE}/dagRuns/{quoted(run_id)}/deadlines"
    (deadline,) = client.get(path)["deadlines"]
    deadline_time = datetime.fromisoformat(deadline["deadline_time"])
    assert datetime.fromisoformat(run["end_date"]) < deadline_time, "the run must fail before its deadline"

    # The scheduler marks the deadline missed and queues its callback; the triggerer runs it (and
    # any page it sends) and records it done: only then is "no page" an answer.
    give_up = deadline_time + timedelta(seconds=120)
    while deadline_callback(stack_env, ECOMMERCE, run_id)[0] not in ("success", "failed"):
        assert datetime.now(UTC) < give_up, ("deadline callback not run", client.get(path))
        time.sleep(max(1.0, min(5.0, (deadline_time - datetime.now(UTC)).total_seconds())))
    assert client.get(path)["deadlines"][0]["missed"], "the scheduler did not handle the deadline"
    state, output = deadline_callback(stack_env, ECOMMERCE, run_id)
    assert state == "success", output
    got = recorded()
    deadline_pages = [e for e in pages(got, "trigger") if e["payload"].get("class") == "deadline_missed"]
    assert deadline_pages == [], (deadline_pages, output)
    assert len(pages(got, "trigger")) == 1  # the failure's own page


def test_with_the_receivers_down_the_failure_stands_and_the_log_says_why(
    client: AirflowClient, airbyte: httpx.Client, receivers: Receivers
) -> None:
    receivers.stop()
    airbyte.post(
        "/local/faults/fail-next-job",
        json={"connectionId": CONNECTION[ENERGY], "message": "injected by alerting e2e"},
    ).raise_for_status()
    run_id = start_run(client, ENERGY)
    assert client.wait_for_run(ENERGY, run_id, timeout=900)["state"] == "failed"
    states = {ti["task_id"]: ti["state"] for ti in client.task_instances(ENERGY, run_id)}
    assert states["airbyte_energy.wait"] == "failed"

    log = task_log(client, ENERGY, run_id, "airbyte_energy.wait", 1)
    assert "NOT delivered via pagerduty" in log and "NOT delivered via slack" in log, log[-3000:]
