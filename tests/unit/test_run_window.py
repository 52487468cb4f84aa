"""The window a run hands to dbt, including runs without a data interval."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from airflow.sdk import CronDataIntervalTimetable

from elt.dbt import run_window

DAILY = SimpleNamespace(timetable=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"))


def run(start=None, end=None, run_after=None):
    return SimpleNamespace(data_interval_start=start, data_interval_end=end, run_after=run_after)


def test_a_scheduled_or_backfill_run_uses_its_data_interval() -> None:
    window = run_window(DAILY, run(datetime(2023, 2, 1, tzinfo=UTC), datetime(2023, 2, 2, tzinfo=UTC)))
    assert window == ("2023-02-01T00:00:00+00:00", "2023-02-02T00:00:00+00:00")


def test_a_run_without_an_interval_gets_the_latest_complete_one() -> None:
    window = run_window(DAILY, run(run_after=datetime(2026, 11, 21, 11, 54, tzinfo=UTC)))
    assert window == ("2026-11-20T00:00:00+00:00", "2026-11-21T00:00:00+00:00")


def test_a_zero_length_interval_counts_as_none() -> None:
    moment = datetime(2026, 11, 21, 0, 0, tzinfo=UTC)
    window = run_window(DAILY, run(moment, moment, run_after=datetime(2026, 11, 21, 6, tzinfo=UTC)))
    assert window == ("2026-11-20T00:00:00+00:00", "2026-11-21T00:00:00+00:00")


def test_an_unscheduled_pipeline_rebuilds_everything() -> None:
    assert run_window(SimpleNamespace(timetable=None), run(run_after=datetime(2026, 1, 1, tzinfo=UTC))) == (
        "",
        "",
    )
