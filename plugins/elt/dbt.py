"""dbt through Cosmos: one place for the project, profile, rendering and execution settings.

`python -m elt.dbt` compiles include/dbt/target/manifest.json (`make dbt-manifest`); DAG
parsing only reads that file, it never runs dbt.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from airflow.sdk import CronDataIntervalTimetable
from cosmos import DbtTaskGroup, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
from cosmos.constants import ExecutionMode, InvocationMode, LoadMode, TestBehavior
from cosmos.profiles import PostgresUserPasswordProfileMapping

from elt import paths
from elt.spec import PipelineSpec

PROJECT_NAME = paths.DBT_PROJECT_NAME
TARGET_SCHEMA = "analytics"
WAREHOUSE_CONN_ID = "warehouse"

# The run's window, as dbt vars: windowed models rebuild exactly this window.
WINDOW_VARS = {
    "data_interval_start": "{{ run_window(dag, dag_run)[0] }}",
    "data_interval_end": "{{ run_window(dag, dag_run)[1] }}",
}


def run_window(dag: Any, dag_run: Any) -> tuple[str, str]:
    """The window a run rebuilds, as ISO strings ('' and '' = rebuild everything).

    Scheduled and backfill runs have a real data interval. A run without one (triggered
    with no logical date, or by an asset event) gets the latest complete interval of the
    pipeline's schedule before it, the same window a scheduled run at that time would get.
    A pipeline without a time schedule rebuilds everything.
    """
    start, end = dag_run.data_interval_start, dag_run.data_interval_end
    if start is not None and end is not None and start < end:
        return start.isoformat(), end.isoformat()
    timetable = getattr(dag, "timetable", None)
    run_after = getattr(dag_run, "run_after", None)
    if isinstance(timetable, CronDataIntervalTimetable) and run_after is not None:
        # The SDK's timetable only describes the schedule; the core one does the arithmetic.
        from airflow.timetables.interval import CronDataIntervalTimetable as Schedule

        interval = Schedule(timetable.expression, timetable.timezone).infer_manual_data_interval(
            run_after=run_after
        )
        return interval.start.isoformat(), interval.end.isoformat()
    return "", ""


def profile_config() -> ProfileConfig:
    return ProfileConfig(
        profile_name=PROJECT_NAME,
        target_name="airflow",
        profile_mapping=PostgresUserPasswordProfileMapping(
            conn_id=WAREHOUSE_CONN_ID, profile_args={"schema": TARGET_SCHEMA, "threads": 4}
        ),
    )


def project_config() -> ProjectConfig:
    return ProjectConfig(
        dbt_project_path=paths.DBT_PROJECT_DIR,
        manifest_path=paths.DBT_MANIFEST,
        project_name=PROJECT_NAME,
        install_dbt_deps=False,
    )


def dbt_task_group(spec: PipelineSpec, **kwargs: Any) -> DbtTaskGroup:
    """The pipeline's dbt selection as one task group, one task per model (with its tests).

    `watcher` (default) runs a single `dbt build` of the selection in a producer task while
    each model's task reports that model's result as soon as dbt finishes it; `per_model`
    runs a separate `dbt build` per model. benchmarks/pipeline_timing.py compares them with
    one plain `dbt build`.
    """
    watcher = spec.dbt.execution == "watcher"
    return DbtTaskGroup(
        group_id="dbt",
        project_config=project_config(),
        profile_config=profile_config(),
        render_config=RenderConfig(
            load_method=LoadMode.DBT_MANIFEST,
            selector=spec.dbt.selector,
            select=list(spec.dbt.select),
            exclude=list(spec.dbt.exclude),
            # per_model: BUILD runs each model with its tests in one task (half the tasks of
            # AFTER_EACH; a failing test still stops the models downstream). watcher: the producer
            # runs `dbt build`, and each model's tests report in their own task.
            test_behavior=TestBehavior.AFTER_EACH if watcher else TestBehavior.BUILD,
            emit_datasets=True,
            # A relationships test reads two models: run it once both are built, as its own task.
            should_detach_multiple_parents_tests=not watcher,
        ),
        execution_config=ExecutionConfig(
            execution_mode=ExecutionMode.WATCHER if watcher else ExecutionMode.LOCAL,
            invocation_mode=InvocationMode.DBT_RUNNER,
        ),
        operator_args={
            "vars": WINDOW_VARS,
            "install_deps": False,
            # Runs of one pipeline (a backfill, or a backfill beside the daily run) each rebuild
            # their own window, but re-create the same views and tables: one dbt invocation per
            # task at a time keeps their DDL apart, while their Airbyte and wait tasks overlap.
            "max_active_tis_per_dag": 1,
        },
        **kwargs,
    )


def compile_manifest() -> int:
    """`dbt parse` once, at build time, writing target/manifest.json for Cosmos to render."""
    from dbt.cli.main import dbtRunner

    # Parsing does not connect to the warehouse; the profile only needs to render.
    for name, value in {
        "WAREHOUSE_HOST": "localhost",
        "WAREHOUSE_PORT": "5432",
        "WAREHOUSE_USER": "dbt",
        "WAREHOUSE_PASSWORD": "unused-at-parse-time",
        "WAREHOUSE_DB": "warehouse",
    }.items():
        os.environ.setdefault(name, value)
    project = ["--project-dir", str(paths.DBT_PROJECT_DIR), "--profiles-dir", str(paths.DBT_PROFILES_DIR)]
    # A fresh clone, CI and the image build get the packages here (local ones need no network).
    has_packages = any((paths.DBT_PROJECT_DIR / f).exists() for f in ("packages.yml", "dependencies.yml"))
    if has_packages and not dbtRunner().invoke(["deps", *project]).success:
        print("dbt deps failed (see above)", file=sys.stderr)
        return 1
    result = dbtRunner().invoke(
        [
            "parse",
            *project,
            "--target-path",
            str(paths.DBT_MANIFEST.parent),
            "--quiet",
        ]
    )
    if not result.success:
        print(f"dbt parse failed: {result.exception}", file=sys.stderr)
        return 1
    print(f"wrote {paths.DBT_MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(compile_manifest())


def _cache_cosmos_reflection() -> None:
    """Cosmos inspects BaseOperator's signature again for every task it creates (~4 ms each).

    The signatures never change at runtime, so a cache is safe; with it, rendering a
    300-model project takes about half the time (benchmarks/parse_time.py).
    """
    import functools
    import inspect
    import types

    import cosmos.operators.local as cosmos_local

    if isinstance(cosmos_local.inspect, types.SimpleNamespace):
        return
    cosmos_local.inspect = types.SimpleNamespace(
        **{name: getattr(inspect, name) for name in dir(inspect) if not name.startswith("__")},
    )
    cosmos_local.inspect.signature = functools.cache(inspect.signature)
    cosmos_local.inspect.getfullargspec = functools.cache(inspect.getfullargspec)


_cache_cosmos_reflection()
