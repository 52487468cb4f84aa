"""`make demo`'s summary names the window each run's dbt rebuilt, also for a run without a data
interval (a manual run triggered without a logical date, which the REST API shows as null)."""

from __future__ import annotations

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
