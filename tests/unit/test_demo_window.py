"""`make demo`'s summary names the window each run's dbt rebuilt, also for a run without a data
interval (a manual run triggered without a logical date, which the REST API shows as null), and
counts the rows a run's sync brought from the start of the Airbyte job it used."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from dev import demo
from dev.airflow_client import APIError
from dev.demo import window_of

# Task instances as Airflow 3.3's REST API lists them (trimmed to the fields read).
SYNC = {"task_id": "airbyte_energy.sync", "rendered_fields": {"connection_id": "4d2f7268"}}
PRODUCER = {
    "task_id": "dbt.dbt_producer_watcher",
    "rendered_fields": {
        "env": {"DBT_EVENT_TIME_END": "2026-11-23T00:00:00", "DBT_EVENT_TIME_START": "2026-11-22T00:00:00"}
    },
}


def test_the_window_is_the_one_dbt_got() -> None:
    assert window_of([SYNC, PRODUCER]) == "2026-11-22T00:00:00 -> 2026-11-23T00:00:00 (UTC)"


def test_an_empty_window_means_everything() -> None:
    producer = {
        **PRODUCER,
        "rendered_fields": {"env": {"DBT_EVENT_TIME_START": "", "DBT_EVENT_TIME_END": ""}},
    }
    assert window_of([producer]) == "everything (no window)"


def test_a_run_whose_dbt_never_ran_says_so() -> None:
    assert (
        window_of([SYNC, {"task_id": "dbt.stg_x.run", "rendered_fields": None}]) == "none (no dbt task ran)"
    )


# -- rows synced: counted from the start of the Airbyte job the run's sync used ------------------

RUN_STARTED = datetime(2026, 11, 24, 5, 55, 20, tzinfo=UTC)


class FakeClient:
    """AirflowClient.get for the sync task's XCom: a job id, or the API's 404 when there is none."""

    def __init__(self, job_id: int | None) -> None:
        self.job_id = job_id
        self.paths: list[str] = []

    def get(self, path: str) -> dict:
        self.paths.append(path)
        if self.job_id is None:
            raise APIError(f"GET {path} -> HTTP 404: XCom entry not found", 404)
        return {"key": "return_value", "value": self.job_id}


@pytest.mark.parametrize(
    ("job_started", "since"),
    [
        # the run attached to a sync already running (409): its rows were extracted before the run
        (datetime(2026, 11, 24, 5, 54, 41, tzinfo=UTC), datetime(2026, 11, 24, 5, 54, 41, tzinfo=UTC)),
        (datetime(2026, 11, 24, 5, 55, 30, tzinfo=UTC), RUN_STARTED),  # the run started the job
    ],
)
def test_rows_are_counted_from_the_start_of_the_job_the_sync_used(monkeypatch, job_started, since) -> None:
    asked: list[int] = []
    monkeypatch.setattr(demo, "airbyte_job_started", lambda env, job_id: asked.append(job_id) or job_started)
    client = FakeClient(24)
    energy = SimpleNamespace(name="energy")
    got = demo.synced_since(
        client, {}, "energy_meters", "manual__2026-11-24T05:55:20+00:00", energy, RUN_STARTED
    )
    assert got == since
    assert asked == [24]
    assert client.paths == [
        "/api/v2/dags/energy_meters/dagRuns/manual__2026-11-24T05%3A55%3A20%2B00%3A00"
        "/taskInstances/airbyte_energy.sync/xcomEntries/return_value"
    ]


def test_a_run_whose_sync_pushed_no_job_counts_from_its_own_start() -> None:
    energy = SimpleNamespace(name="energy")
    assert demo.synced_since(FakeClient(None), {}, "energy_meters", "r", energy, RUN_STARTED) == RUN_STARTED
