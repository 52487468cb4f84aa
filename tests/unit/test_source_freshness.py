"""The freshness gate's verdict and message, from dbt's own freshness result objects."""

from __future__ import annotations

import os
import re
import shutil
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowException
from cosmos import settings as cosmos_settings
from dbt.artifacts.resources import FreshnessThreshold, Time
from dbt.artifacts.schemas.results import FreshnessStatus

from elt import paths
from elt.dbt import SourceFreshnessOperator, describe_staleness, source_freshness_task
from elt.spec import load_spec, spec_files

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


def test_the_next_run_restores_the_partial_parse_this_run_saved(tmp_path, monkeypatch) -> None:
    """Each run's task is a new parse of the DAG: what one run saves in Cosmos's cache, the next
    restores into its copy of the project, so dbt parses only what changed (a full parse: ~3 s CPU)."""
    monkeypatch.setattr(cosmos_settings, "cache_dir", tmp_path / "cosmos-cache")
    spec = load_spec(next(p for p in spec_files() if p.stem == "energy_meters"))
    this_run, next_run = tmp_path / "run-1", tmp_path / "run-2"
    (this_run / "target").mkdir(parents=True)
    project_file = paths.DBT_PROJECT_DIR / "target" / "partial_parse.msgpack"
    assert project_file.exists(), "make dbt-manifest writes it"
    shutil.copy(project_file, this_run / "target" / "partial_parse.msgpack")
    shutil.copy(paths.DBT_MANIFEST, this_run / "target" / "manifest.json")
    source_freshness_task(spec)._update_partial_parse_cache(this_run)
    saved = list((tmp_path / "cosmos-cache").rglob("partial_parse.msgpack"))
    assert len(saved) == 1, "nothing saved where the next run looks"
    newer = project_file.stat().st_mtime + 60
    os.utime(saved[0], (newer, newer))  # this run's parse is newer than the project's compile

    next_run.mkdir()
    source_freshness_task(spec)._handle_partial_parse(next_run)
    restored = next_run / "target" / "partial_parse.msgpack"
    assert restored.exists(), "the next run starts without a partial parse: dbt parses everything"
