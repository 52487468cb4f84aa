"""The freshness gate's verdict and message, from dbt's own freshness result objects."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowException
from dbt.artifacts.resources import FreshnessThreshold, Time
from dbt.artifacts.schemas.results import FreshnessStatus

from elt.dbt import SourceFreshnessOperator, describe_staleness

NOW = datetime(2026, 11, 22, 6, 0, tzinfo=UTC)
THRESHOLD = FreshnessThreshold(
    warn_after=Time(count=26, period="hour"), error_after=Time(count=50, period="hour")
)


def result(name: str, status: FreshnessStatus, hours_ago: float, message: str | None = None):
    node = SimpleNamespace(source_name="energy_meters", name=name, freshness=THRESHOLD)
    loaded = datetime.fromtimestamp(NOW.timestamp() - hours_ago * 3600, tz=UTC)
    return SimpleNamespace(
        node=node, status=status, age=hours_ago * 3600, max_loaded_at=loaded, message=message
    )


def operator(fail_on_error: bool = True) -> SourceFreshnessOperator:
    return SourceFreshnessOperator(
        task_id="source_freshness", project_dir="/tmp", profile_config=None, fail_on_error=fail_on_error
    )


def run_result(*items):
    return SimpleNamespace(success=False, result=SimpleNamespace(results=list(items)), exception=None)


def test_a_source_past_error_after_fails_naming_it_and_by_how_much() -> None:
    stale = result("muid_1", FreshnessStatus.Error, 74)
    with pytest.raises(AirflowException) as raised:
        operator().handle_exception_dbt_runner(run_result(stale, result("muid_2", FreshnessStatus.Pass, 1)))
    message = str(raised.value)
    assert "source energy_meters.muid_1 is stale (error)" in message
    assert (
        "last loaded 2026-11-19 04:00 UTC, 3 days, 2:00:00 ago, 1 day, 0:00:00 past error_after (50 hour)"
        in message
    )
    assert "muid_2" not in message


def test_a_warning_never_fails() -> None:
    operator().handle_exception_dbt_runner(run_result(result("muid_1", FreshnessStatus.Warn, 30)))


def test_with_freshness_warn_an_error_only_logs() -> None:
    operator(fail_on_error=False).handle_exception_dbt_runner(
        run_result(result("muid_1", FreshnessStatus.Error, 74))
    )


def test_a_source_that_could_not_be_checked_always_fails() -> None:
    broken = result(
        "muid_1", FreshnessStatus.RuntimeErr, 0, message='relation "raw_energy.muid_1" does not exist'
    )
    with pytest.raises(
        AirflowException, match=re.escape('muid_1: freshness runtime error: relation "raw_energy.muid_1"')
    ):
        operator(fail_on_error=False).handle_exception_dbt_runner(run_result(broken))


def test_the_warn_line_names_the_warn_threshold() -> None:
    assert describe_staleness(result("muid_2", FreshnessStatus.Warn, 27)).endswith(
        "1:00:00 past warn_after (26 hour)"
    )
