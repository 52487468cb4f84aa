"""The window a run hands to dbt, including runs without a data interval."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from airflow.sdk import CronDataIntervalTimetable

from elt.dbt import dbt_event_time, rebuild_range, run_window

DAILY = SimpleNamespace(timetable=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"))


def run(start=None, end=None, run_after=None, conf=None):
    return SimpleNamespace(data_interval_start=start, data_interval_end=end, run_after=run_after, conf=conf)


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


def test_a_rebuild_range_covers_its_days_whole() -> None:
    conf = {"rebuild_start": "2023-02-01", "rebuild_end": "2023-03-02"}
    moment = datetime(2026, 11, 21, tzinfo=UTC)
    window = run_window(
        DAILY, SimpleNamespace(conf=conf, data_interval_start=moment, data_interval_end=moment)
    )
    assert window == ("2023-02-01T00:00:00+00:00", "2023-03-03T00:00:00+00:00")


def test_the_trigger_form_empty_fields_mean_no_range() -> None:
    assert rebuild_range({"rebuild_start": None, "rebuild_end": None}) is None
    assert rebuild_range(None) is None


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"rebuild_start": "2023-02-03", "rebuild_end": "2023-02-01"}, "rebuild_start (2023-02-03) is after"),
        (
            {"rebuild_start": "2023-02-30", "rebuild_end": "2023-03-01"},
            "rebuild_start='2023-02-30' is not an ISO date",
        ),
        ({"rebuild_start": "2023-02-01"}, "set both rebuild_start and rebuild_end"),
        ({"rebuild_start": "2023-02-01", "rebuild_end": "March"}, "rebuild_end='March' is not an ISO date"),
    ],
)
def test_a_bad_rebuild_range_names_the_param(conf, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        rebuild_range(conf)


def test_dbt_gets_the_window_as_naive_utc_event_times() -> None:
    berlin = timezone(timedelta(hours=1))
    interval = run(datetime(2023, 2, 1, 1, tzinfo=berlin), datetime(2023, 2, 2, 1, tzinfo=berlin))
    assert dbt_event_time(DAILY, interval) == ("2023-02-01T00:00:00", "2023-02-02T00:00:00")
    unscheduled = run(run_after=datetime(2026, 1, 1, tzinfo=UTC))
    assert dbt_event_time(SimpleNamespace(timetable=None), unscheduled) == ("", "")
