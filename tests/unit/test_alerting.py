"""On-call alerting against real receivers on 127.0.0.1: the providers' notifiers post to the local
Slack webhook / PagerDuty Events v2 server and send mail to a local SMTP server (dev.receivers).

The callbacks are the ones the DAG factory installs, called with the context Airflow gives them;
only the open-incident store (Airflow Variables, which need a running Airflow) is in memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from airflow.sdk import DAG
from airflow.sdk.exceptions import AirflowFailException
from cosmos.dbt.runner import handle_exception_if_needed
from cosmos.exceptions import CosmosDbtRunError

from dev.receivers import Receivers
from elt import alerting
from elt.dag_factory import dag_from_spec
from elt.spec import PipelineSpec, SpecError

BASE_URL = "http://airflow.test:8080"
PIPELINE = "energy_meters"
RUN_ID = "scheduled__2023-02-01T03:00:00+00:00"
INTERVAL = (datetime(2023, 2, 1, 3, tzinfo=UTC), datetime(2023, 2, 2, 3, tzinfo=UTC))
DEDUP_KEY = f"elt/{PIPELINE}/20230201T030000Z"  # one incident per pipeline and data window


def spec_data(**alerts: Any) -> dict[str, Any]:
    return {
        "name": PIPELINE,
        "description": "Smart-meter readings into raw_energy, then energy marts.",
        "owners": ["energy-analytics"],
        "tags": ["energy", "tier-1"],
        "schedule": "0 3 * * *",
        "start_date": "2023-02-01",
        "airbyte": {
            "connections": [
                {
                    "id": "4d2f7268-e2ac-4fa7-a3a6-97286f22d617",
                    "name": "energy",
                    "destination_schema": "raw_energy",
                    "streams": ["muid_1", "muid_2"],
                }
            ]
        },
        "dbt": {"selector": "energy"},
        "alerts": alerts
        or {
            "slack": {"conn_id": "slack_alerts", "severity": "critical", "notify_retries": True},
            "pagerduty": {"conn_id": "pagerduty_alerts", "severity": "critical"},
            "email": {"conn_id": "smtp_alerts", "to": ["oncall@example.com"]},
        },
        "deadline": "PT2H",
    }


class MemoryIncidents(alerting.Incidents):
    """The open-incident store without an Airflow runtime (Variables need the supervisor)."""

    def __init__(self) -> None:
        self.open: dict[str, dict] = {}
        self.unknown = False

    def opened(self, alert: Any) -> None:
        self.open.setdefault(self.key(alert), {"run_id": alert.run_id})

    def is_open(self, alert: Any) -> bool | None:
        return None if self.unknown else self.key(alert) in self.open

    def closed(self, alert: Any) -> None:
        self.open.pop(self.key(alert), None)


@pytest.fixture(scope="module")
def receivers() -> Iterator[Receivers]:
    with Receivers("127.0.0.1", 0, 0) as running, pytest.MonkeyPatch.context() as mp:
        for conn_id, conn in running.connections().items():
            mp.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
        mp.setenv("AIRFLOW__API__BASE_URL", BASE_URL)
        yield running


@pytest.fixture
def recorded(receivers: Receivers, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """What the receivers got during the test; starts empty, with no open incident and no silence."""
    httpx.delete(f"{receivers.http_url}/recorded").raise_for_status()
    httpx.delete(f"{receivers.http_url}/faults").raise_for_status()
    monkeypatch.setattr(alerting, "incidents", MemoryIncidents())
    monkeypatch.delenv("AIRFLOW_VAR_ELT_ALERTING_SILENCE", raising=False)
    yield lambda: httpx.get(f"{receivers.http_url}/recorded").json()


@pytest.fixture(scope="module")
def dag(receivers: Receivers) -> DAG:
    return dag_from_spec(PipelineSpec.model_validate(spec_data()))


def task_context(dag: DAG, task_id: str, error: BaseException | None, try_number: int = 1) -> dict[str, Any]:
    """The parts of Airflow's task context the callbacks read (what the worker passes them)."""
    task = dag.get_task(task_id)
    ti = SimpleNamespace(
        dag_id=dag.dag_id,
        run_id=RUN_ID,
        task_id=task_id,
        map_index=-1,
        try_number=try_number,
        max_tries=task.retries,
        task=task,
    )
    dag_run = SimpleNamespace(
        dag_id=dag.dag_id, run_id=RUN_ID, data_interval_start=INTERVAL[0], data_interval_end=INTERVAL[1]
    )
    return {"ti": ti, "task_instance": ti, "task": task, "dag": dag, "dag_run": dag_run, "exception": error}


def run_callbacks(callbacks: Any, context: dict[str, Any]) -> None:
    for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
        callback(context)


def fail_airbyte_wait(dag: DAG) -> dict[str, Any]:
    """The wait sensor after its Airbyte job failed: elt.airbyte set job_url, the job id came from XCom."""
    context = task_context(
        dag, "airbyte_energy.wait", AirflowFailException("Airbyte job 42 failed: injected failure")
    )
    task = context["task"]
    task.airbyte_job_id = 42  # rendered from the sync task's XCom at run time
    task.job_url = "http://127.0.0.1:8000/connections/4d2f7268-e2ac-4fa7-a3a6-97286f22d617/timeline?jobId=42"
    return context


def test_final_failure_of_an_airbyte_task_pages_every_route_once(dag: DAG, recorded: Any) -> None:
    context = fail_airbyte_wait(dag)
    run_callbacks(context["task"].on_failure_callback, context)

    got = recorded()
    assert [len(got[k]) for k in ("slack", "pagerduty", "email")] == [1, 1, 1]
    event = got["pagerduty"][0]["body"]
    assert event["event_action"] == "trigger"
    assert event["dedup_key"] == DEDUP_KEY
    assert event["routing_key"] == "local-routing-key"
    payload = event["payload"]
    assert payload["severity"] == "critical"
    assert "Airbyte job 42" in payload["summary"]
    details = payload["custom_details"]
    assert details["airbyte_job"] == "42"
    assert details["try"] == "1 of 3 (not retryable)"
    assert details["data_interval"] == "2023-02-01T03:00:00+00:00 → 2023-02-02T03:00:00+00:00"
    run_url = f"{BASE_URL}/dags/{PIPELINE}/runs/scheduled__2023-02-01T03%3A00%3A00%2B00%3A00"
    links = {link["text"]: link["href"] for link in event["links"]}
    assert links["Task log"] == f"{run_url}/tasks/airbyte_energy.wait?try_number=1"
    assert links["DAG run"] == run_url
    assert links["Airbyte job 42"].endswith("timeline?jobId=42")

    slack = got["slack"][0]["body"]["text"]
    for expected in (
        "[critical]",
        "airbyte_energy.wait",
        RUN_ID,
        "Airbyte job",
        "42",
        "jobId=42",
        "try_number=1",
    ):
        assert expected in slack
    mail = got["email"][0]
    assert mail["rcpt_tos"] == ["oncall@example.com"]
    assert mail["subject"] == f"[ALERT] {PIPELINE}: task airbyte_energy.wait failed"
    assert "AirflowFailException: Airbyte job 42 failed: injected failure" in mail["html"]
    # the text part too: mail clients without HTML (and pagers) read only that
    for expected in ("airbyte_energy.wait", "Airbyte job 42 failed: injected failure", "jobId=42"):
        assert expected in mail["text"]


def test_a_retry_posts_one_low_severity_slack_line_and_never_pages(dag: DAG, recorded: Any) -> None:
    context = task_context(dag, "airbyte_energy.sync", RuntimeError("Airbyte API answered 503"), try_number=1)
    run_callbacks(context["task"].on_retry_callback, context)

    got = recorded()
    assert (len(got["slack"]), len(got["pagerduty"]), len(got["email"])) == (1, 0, 0)
    line = got["slack"][0]["body"]["text"]
    assert "will retry" in line and "try 1 of 3" in line and "503" in line
    assert "blocks" not in got["slack"][0]["body"]


def failing_dbt_result(test: str = "not_null_fct_energy_daily_meter_muid") -> SimpleNamespace:
    """A dbtRunnerResult of `dbt build` where a test failed (the fields Cosmos reads)."""
    result = SimpleNamespace(
        status="fail",
        node=SimpleNamespace(name=test),
        message="Got 3 results, configured to fail if != 0",
    )
    passed = SimpleNamespace(
        status="success", node=SimpleNamespace(name="fct_energy_daily"), message="SELECT 10"
    )
    return SimpleNamespace(success=False, exception=None, result=SimpleNamespace(results=[passed, result]))


def test_dbt_failure_names_the_failing_test_and_its_compiled_sql(dag: DAG, recorded: Any) -> None:
    with pytest.raises(CosmosDbtRunError) as raised:
        handle_exception_if_needed(failing_dbt_result())  # Cosmos's own error text
    context = task_context(dag, "dbt.dbt_producer_watcher", raised.value, try_number=3)
    compiled = "target/compiled/managed_elt/models/marts/energy/_energy__models.yml/not_null_fct_energy_daily_meter_muid.sql"
    context[
        "task"
    ].compiled_sql = f"-- target/compiled/managed_elt/models/marts/energy/fct_energy_daily.sql\nselect 1\n\n-- {compiled}\nselect 2"
    run_callbacks(context["task"].on_failure_callback, context)

    got = recorded()
    details = got["pagerduty"][0]["body"]["payload"]["custom_details"]
    assert details["failing_dbt_test"] == (
        f"not_null_fct_energy_daily_meter_muid (compiled SQL: {compiled}) — Got 3 results, configured to fail if != 0"
    )
    assert details["try"] == "3 of 3 (no retries left)"
    assert "dbt not_null_fct_energy_daily_meter_muid" in got["pagerduty"][0]["body"]["payload"]["summary"]
    assert "not_null_fct_energy_daily_meter_muid" in got["slack"][0]["body"]["text"]
    assert "rendered_templates" in got["slack"][0]["body"]["text"]


def test_dbt_failure_without_compiled_sql_points_at_the_manifest_path(dag: DAG, recorded: Any) -> None:
    test = "relationships_fct_energy_daily_meter_muid__meter_muid__ref_dim_meters_"
    with pytest.raises(CosmosDbtRunError) as raised:
        handle_exception_if_needed(failing_dbt_result(test))
    context = task_context(dag, "dbt.dbt_producer_watcher", raised.value, try_number=3)
    context["task"].compiled_sql = ""
    run_callbacks(context["task"].on_failure_callback, context)
    details = recorded()["pagerduty"][0]["body"]["payload"]["custom_details"]
    # dbt names the compiled file of a long test name with a hash; the manifest knows which.
    assert details["failing_dbt_test"] == (
        f"{test} (compiled SQL: target/compiled/managed_elt/models/marts/energy/_energy__models.yml/"
        "relationships_fct_energy_daily_dbd90a9fa704c7dd695c04cb6bea017d.sql) — Got 3 results, configured to fail if != 0"
    )


def watcher_context(dag: DAG, task_id: str, error: BaseException, events: dict[str, dict]) -> dict[str, Any]:
    """A Cosmos watcher task's context whose producer pushed `events` ({node unique_id: dbt event}) to XCom."""
    from cosmos.operators._watcher.state import get_dbt_event_xcom_key

    context = task_context(dag, task_id, error, try_number=3)
    producer = context["task"].producer_task_id
    pushed = {get_dbt_event_xcom_key(uid): event for uid, event in events.items()}
    context["ti"].xcom_pull = lambda task_ids, key: pushed.get(key) if task_ids == producer else None
    return context


def test_a_watcher_test_task_pages_with_the_failing_test_as_dbt_reported_it(dag: DAG, recorded: Any) -> None:
    """The test task relayed the producer's `dbt build` (Cosmos's generic error): dbt's events name the test."""
    failing = "test.managed_elt.not_null_stg_energy_meters__muid_1_meter_muid.fc43acbf1a"
    passing = "test.managed_elt.not_null_stg_energy_meters__muid_1_reading_at.c7cb1871f4"
    generic = RuntimeError(
        "Tests for model 'model.managed_elt.stg_energy_meters__muid_1' finished with status 'fail'"
    )
    context = watcher_context(
        dag,
        "dbt.stg_energy_meters__muid_1.test",
        generic,
        {
            # The last event of a failed test once the build is over: dbt's error summary (RunResultError).
            failing: {"status": "None", "msg": "Got 1 result, configured to fail if != 0"},
            passing: {"status": "pass", "msg": "Finished running node " + passing},
        },
    )
    run_callbacks(context["task"].on_failure_callback, context)

    got = recorded()
    details = got["pagerduty"][0]["body"]["payload"]["custom_details"]
    assert details["failing_dbt_test"] == (
        "not_null_stg_energy_meters__muid_1_meter_muid (compiled SQL: target/compiled/managed_elt/models/staging/"
        "energy_meters/_energy_meters__models.yml/not_null_stg_energy_meters__muid_1_meter_muid.sql)"
        " — Got 1 result, configured to fail if != 0"
    )
    assert "not_null_stg_energy_meters__muid_1_reading_at" not in json.dumps(got)
    assert (
        "dbt not_null_stg_energy_meters__muid_1_meter_muid"
        in got["pagerduty"][0]["body"]["payload"]["summary"]
    )
    assert "not_null_stg_energy_meters__muid_1_meter_muid" in got["slack"][0]["body"]["text"]
    assert "not_null_stg_energy_meters__muid_1_meter_muid" in got["email"][0]["text"]


def test_a_watcher_model_task_pages_with_the_models_dbt_error(dag: DAG, recorded: Any) -> None:
    context = watcher_context(
        dag,
        "dbt.dim_meters.run",
        RuntimeError("dbt model 'model.managed_elt.dim_meters' failed. Review the producer task logs"),
        {
            "model.managed_elt.dim_meters": {
                "status": "error",
                "msg": 'Database Error in model dim_meters\n  relation "x" does not exist',
            }
        },
    )
    run_callbacks(context["task"].on_failure_callback, context)
    details = recorded()["pagerduty"][0]["body"]["payload"]["custom_details"]
    assert details["failing_dbt_model"].startswith(
        "dim_meters (compiled SQL: target/compiled/managed_elt/models/marts/energy/dim_meters.sql) — Database Error"
    )


def test_a_watcher_task_names_no_node_when_dbt_reported_none_failed(
    dag: DAG, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The producer failed before its nodes ran (no events): the page says what Cosmos said, no guess."""
    from elt import alert_content

    monkeypatch.setattr(alert_content, "WATCHER_XCOM_PAUSE", 0)
    context = watcher_context(
        dag, "dbt.dim_meters.test", RuntimeError("producer failed before reporting"), {}
    )
    failures = alert_content.dbt_failures(context["task"], context["exception"], context["ti"])
    assert failures == ()


def test_error_summary_masks_secrets_and_is_not_rendered_as_a_template(dag: DAG, recorded: Any) -> None:
    from airflow.sdk.log import mask_secret

    mask_secret("s3cr3t-known-to-airflow")
    error = RuntimeError(
        "login failed for postgresql://elt:hunter2@127.0.0.1:5432/warehouse with s3cr3t-known-to-airflow "
        "token=abc123 {{ conn.warehouse.password }}"
    )
    context = task_context(dag, "airbyte_energy.sync", error, try_number=3)
    run_callbacks(context["task"].on_failure_callback, context)

    got = json.dumps(recorded())
    for secret in ("hunter2", "s3cr3t-known-to-airflow", "abc123"):
        assert secret not in got
    assert "{{ conn.warehouse.password }}" in got  # shown as text, never evaluated


def test_a_run_failed_by_a_task_does_not_page_again_but_a_timed_out_run_does(dag: DAG, recorded: Any) -> None:
    run = {"dag": dag, "run_id": RUN_ID, "dag_run": task_context(dag, "airbyte_energy.sync", None)["dag_run"]}
    run_callbacks(dag.on_failure_callback, {**run, "reason": "task_failure"})
    assert recorded() == {"slack": [], "pagerduty": [], "email": []}

    run_callbacks(dag.on_failure_callback, {**run, "reason": "timed_out"})
    got = recorded()
    assert (len(got["slack"]), len(got["pagerduty"]), len(got["email"])) == (1, 1, 1)
    assert "dagrun_timeout" in got["pagerduty"][0]["body"]["payload"]["summary"]
    assert got["pagerduty"][0]["body"]["dedup_key"] == DEDUP_KEY


def test_the_next_success_of_the_window_resolves_its_incident_once_and_posts_the_recovery(
    dag: DAG, recorded: Any
) -> None:
    failing = fail_airbyte_wait(dag)
    run_callbacks(failing["task"].on_failure_callback, failing)
    run_callbacks(failing["task"].on_failure_callback, failing)  # a second failing task: same incident
    other_window = SimpleNamespace(
        dag_id=PIPELINE,
        run_id="backfill__2023-01-01T03:00:00+00:00",
        data_interval_start=datetime(2023, 1, 1, 3, tzinfo=UTC),
        data_interval_end=datetime(2023, 1, 2, 3, tzinfo=UTC),
    )
    run_callbacks(dag.on_success_callback, {"dag": dag, "dag_run": other_window, "reason": "success"})
    assert [e["body"]["event_action"] for e in recorded()["pagerduty"]] == ["trigger"] * 2  # not its window

    success = {"dag": dag, "dag_run": failing["dag_run"], "reason": "success"}  # the cleared run, re-run
    run_callbacks(dag.on_success_callback, success)
    run_callbacks(dag.on_success_callback, success)  # nothing open any more: quiet

    got = recorded()
    actions = [(e["body"]["event_action"], e["body"]["dedup_key"]) for e in got["pagerduty"]]
    assert actions == [("trigger", DEDUP_KEY)] * 2 + [("resolve", DEDUP_KEY)]
    assert len(got["slack"]) == 3
    assert "recovered" in got["slack"][-1]["body"]["text"]
    assert got["email"][-1]["subject"] == f"[RECOVERED] {PIPELINE}: recovered"


def test_unknown_incident_state_still_resolves_pagerduty_but_posts_nothing(dag: DAG, recorded: Any) -> None:
    alerting.incidents.unknown = True
    run_callbacks(dag.on_success_callback, {"dag": dag, "run_id": "manual__x", "reason": "success"})
    got = recorded()
    assert [e["body"]["event_action"] for e in got["pagerduty"]] == ["resolve"]
    assert got["slack"] == [] and got["email"] == []


def deadline_context(
    state: str, run_type: str = "scheduled", run_after: str | None = "2023-02-02T00:00:00Z"
) -> dict[str, Any]:
    return {  # what Deadline.handle_miss gives the callback (the run as the REST API's JSON)
        "dag_run": {
            "dag_id": PIPELINE,
            "dag_run_id": RUN_ID,
            "run_type": run_type,
            "state": state,
            "data_interval_start": INTERVAL[0].isoformat(),
            "data_interval_end": INTERVAL[1].isoformat(),
            "run_after": run_after,
        },
        "deadline": {"id": "0199", "deadline_time": datetime(2023, 2, 2, 5, tzinfo=UTC)},
    }


def test_the_deadline_is_the_window_end_plus_the_allowance_not_the_queue_time(dag: DAG) -> None:
    (deadline,) = dag.deadline
    # Not DAGRUN_QUEUED_AT: clearing a run with such a deadline answers 500 (apache/airflow#70368).
    assert type(deadline.reference).__name__ == "DagRunLogicalDateDeadline"
    # logical date = interval start; "0 3 * * *" has one-day windows; the spec allows PT2H after the end
    assert INTERVAL[0] + deadline.interval == INTERVAL[1] + timedelta(hours=2)


def test_missed_deadline_pages_from_the_triggerer_callback_naming_the_window(dag: DAG, recorded: Any) -> None:
    (deadline,) = dag.deadline
    context = deadline_context("running")
    results = asyncio.run(alerting.deadline_missed(**deadline.callback.kwargs, context=context))

    assert (
        results == "slack: sent; pagerduty: sent; email: sent"
    )  # a text: Airflow stores it in a text column
    got = recorded()
    event = got["pagerduty"][0]["body"]
    assert (event["event_action"], event["dedup_key"], event["payload"]["class"]) == (
        "trigger",
        DEDUP_KEY,
        "deadline_missed",
    )
    assert "run is running" in event["payload"]["summary"]
    assert f"{INTERVAL[0].isoformat()} → {INTERVAL[1].isoformat()}" in event["payload"]["summary"]
    assert "missed its deadline" in got["slack"][0]["body"]["text"]


@pytest.mark.parametrize(("state", "run_type"), [("failed", "scheduled"), ("running", "backfill")])
def test_a_failed_run_or_a_backfill_does_not_page_at_its_deadline(
    dag: DAG, recorded: Any, state: str, run_type: str
) -> None:
    (deadline,) = dag.deadline
    context = deadline_context(state, run_type)
    results = asyncio.run(alerting.deadline_missed(**deadline.callback.kwargs, context=context))
    assert results.startswith("not sent")
    assert recorded() == {"slack": [], "pagerduty": [], "email": []}


@pytest.mark.parametrize(
    ("run_type", "run_after", "pages"),
    [
        ("manual", "2023-03-15T09:00:00Z", False),  # an old window re-run from the trigger form
        ("manual", "2023-02-02T05:00:00Z", False),  # triggered at the deadline itself
        ("manual", "2023-02-02T01:00:00Z", True),  # triggered before its deadline: it could meet it
        ("scheduled", "2023-02-02T09:00:00Z", True),  # a late scheduled run (after an outage) pages
        ("manual", None, True),  # no trigger time: page rather than stay silent
        ("manual", "not a time", True),
    ],
)
def test_a_manual_run_triggered_after_its_deadline_does_not_page_at_it(
    dag: DAG, recorded: Any, run_type: str, run_after: str | None, pages: bool
) -> None:
    (deadline,) = dag.deadline  # 2023-02-02T05:00:00Z in deadline_context
    context = deadline_context("running", run_type, run_after)
    results = asyncio.run(alerting.deadline_missed(**deadline.callback.kwargs, context=context))
    assert results.startswith("not sent") is not pages, results
    assert len(recorded()["pagerduty"]) == int(pages)


def test_a_deadline_time_given_as_text_is_read_as_a_time(dag: DAG, recorded: Any) -> None:
    (deadline,) = dag.deadline
    context = deadline_context("running", "manual", "2023-03-15T09:00:00Z")
    context["deadline"]["deadline_time"] = "2023-02-02T05:00:00+00:00"
    results = asyncio.run(alerting.deadline_missed(**deadline.callback.kwargs, context=context))
    assert results == "not sent: manual run triggered after its deadline"
    assert recorded()["pagerduty"] == []


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_undeliverable_alert_is_logged_and_never_raises(
    dag: DAG,
    recorded: Any,
    receivers: Receivers,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    down = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv(
        "AIRFLOW_CONN_PAGERDUTY_ALERTS",
        json.dumps({"conn_type": "pagerduty_events", "host": down, "password": "k"}),
    )
    smtp = receivers.connections()["smtp_alerts"]
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_ALERTS", json.dumps({**smtp, "port": closed_port()}))
    httpx.post(f"{receivers.http_url}/faults", json={"slack": 503, "count": 1}).raise_for_status()
    context = fail_airbyte_wait(dag)

    with caplog.at_level(logging.ERROR, logger="elt.alerting"):
        run_callbacks(context["task"].on_failure_callback, context)  # must not raise

    failures = {r.getMessage().split(" via ")[1].split(" ")[0]: r.getMessage() for r in caplog.records}
    assert set(failures) == {"slack", "pagerduty", "email"}
    assert "NOT delivered" in failures["pagerduty"] and "onnect" in failures["pagerduty"]
    assert "503" in failures["slack"]
    assert recorded() == {"slack": [], "pagerduty": [], "email": []}


def test_a_connection_of_the_wrong_type_is_refused_at_alert_time(
    dag: DAG, recorded: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_SLACK_ALERTS", json.dumps({"conn_type": "http", "host": "http://x", "password": "t"})
    )
    context = fail_airbyte_wait(dag)
    with caplog.at_level(logging.ERROR, logger="elt.alerting"):
        run_callbacks(context["task"].on_failure_callback, context)
    assert "connection 'slack_alerts' has type 'http'; a slack route needs 'slackwebhook'" in caplog.text
    got = recorded()
    assert (len(got["slack"]), len(got["pagerduty"])) == (0, 1)  # the other routes still page


def test_a_route_naming_a_connection_of_the_wrong_type_is_a_spec_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_PAGERDUTY_ALERTS", "smtp://mail.example.com:25")
    with pytest.raises(SpecError) as raised:
        dag_from_spec(PipelineSpec.model_validate(spec_data()))
    message = str(raised.value)
    assert "field 'alerts.pagerduty.conn_id'" in message
    assert "has type 'smtp'; a pagerduty route needs a connection of type 'pagerduty_events'" in message


def test_a_silenced_pipeline_does_not_alert_until_the_silence_ends(
    dag: DAG, recorded: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    until = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    monkeypatch.setenv("AIRFLOW_VAR_ELT_ALERTING_SILENCE", json.dumps({PIPELINE: until}))
    context = fail_airbyte_wait(dag)
    run_callbacks(context["task"].on_failure_callback, context)
    assert recorded() == {"slack": [], "pagerduty": [], "email": []}

    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    monkeypatch.setenv("AIRFLOW_VAR_ELT_ALERTING_SILENCE", json.dumps({PIPELINE: past}))
    run_callbacks(context["task"].on_failure_callback, context)
    assert len(recorded()["pagerduty"]) == 1


def test_a_pipeline_without_routes_gets_no_callbacks() -> None:
    data = spec_data()
    data.pop("deadline")
    data["alerts"] = {}
    spec = PipelineSpec.model_validate(data)
    assert alerting.task_callbacks(spec) == {} and alerting.dag_arguments(spec) == {}


def test_pagerduty_connection_without_host_targets_pagerduty_itself() -> None:
    notifier = alerting.PagerdutyEventsNotifier(summary="s", severity="error", pagerduty_events_conn_id="pd")
    assert notifier.hook_async.base_url == "https://events.pagerduty.com"
    assert os.environ.get("AIRFLOW_CONN_PD") is None


@pytest.mark.parametrize("rows", [0, 1234])
def test_a_sync_that_loaded_no_rows_warns_slack_and_email_but_never_pages(
    dag: DAG, recorded: Any, rows: int
) -> None:
    context = task_context(dag, "airbyte_energy.wait", None)
    returned = {"job_id": 77, "rows_synced": rows}  # what the wait task returns (its XCom)
    context["ti"].xcom_pull = lambda task_ids: returned if task_ids == "airbyte_energy.wait" else None
    run_callbacks(context["task"].on_success_callback, context)

    got = recorded()
    if rows:
        assert got == {"slack": [], "pagerduty": [], "email": []}
        return
    assert (len(got["slack"]), len(got["pagerduty"]), len(got["email"])) == (1, 0, 1)
    slack = got["slack"][0]["body"]["text"]
    for expected in (
        "[warning]",
        "0 rows",
        "Airbyte job 77",
        "energy",
        "4d2f7268-e2ac-4fa7-a3a6-97286f22d617",
    ):
        assert expected in slack, expected
    assert "0 rows" in got["email"][0]["subject"] and "Airbyte job 77" in got["email"][0]["text"]


def test_expect_rows_false_installs_no_volume_check(receivers: Receivers) -> None:
    data = spec_data()
    data["airbyte"]["connections"][0]["expect_rows"] = False
    quiet = dag_from_spec(PipelineSpec.model_validate({**data, "name": "energy_meters_quiet"}))
    assert not quiet.get_task("airbyte_energy.wait").on_success_callback


@pytest.mark.parametrize("task_id", ["dbt.dbt_producer_watcher", "dbt.dim_meters.test", "dbt.dim_meters.run"])
def test_dbt_watcher_tasks_post_no_retry_line(dag: DAG, recorded: Any, task_id: str) -> None:
    # Their first try only relays `dbt build`'s results; the retry re-runs the node and may pass.
    context = task_context(dag, task_id, RuntimeError("dbt.dim_meters.test: status 'fail'"), try_number=1)
    run_callbacks(context["task"].on_retry_callback, context)
    assert recorded() == {"slack": [], "pagerduty": [], "email": []}


def test_retry_lines_go_only_to_the_routes_that_ask_for_them(receivers: Receivers, recorded: Any) -> None:
    routes = {
        "slack": {"conn_id": "slack_alerts", "notify_retries": True},
        "pagerduty": {"conn_id": "pagerduty_alerts"},
        "email": {"conn_id": "smtp_alerts", "to": ["oncall@example.com"]},
    }
    dag = dag_from_spec(PipelineSpec.model_validate(spec_data(**routes)))
    context = task_context(dag, "airbyte_energy.sync", RuntimeError("Airbyte API answered 503"), try_number=1)
    run_callbacks(context["task"].on_retry_callback, context)
    got = recorded()
    assert (len(got["slack"]), len(got["pagerduty"]), len(got["email"])) == (1, 0, 0)
    assert "task airbyte_energy.sync failed, will retry" in got["slack"][0]["body"]["text"]

    quiet = dag_from_spec(
        PipelineSpec.model_validate(spec_data(**{**routes, "slack": {"conn_id": "slack_alerts"}}))
    )
    retry_callbacks = [c for task in quiet.tasks for c in task.on_retry_callback or []]
    assert not [c for c in retry_callbacks if isinstance(c, alerting.TaskRetry)]  # Cosmos adds its own


def test_a_long_error_keeps_its_head_and_its_tail() -> None:
    from elt.alert_content import ERROR_LIMIT, error_summary

    text = "Airbyte job 7 failed: " + "x" * 5000 + " HTTP 401 from meter API (token expired)"
    summary = error_summary(text, mask=False)
    assert len(summary) <= ERROR_LIMIT
    assert summary.startswith("Airbyte job 7 failed") and summary.endswith(
        "HTTP 401 from meter API (token expired)"
    )
