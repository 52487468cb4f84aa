"""dbt through Cosmos: one place for the project, profile, rendering and execution settings.

`python -m elt.dbt` compiles include/dbt/target/manifest.json (`make dbt-manifest`); DAG
parsing only reads that file, it never runs dbt.
"""

from __future__ import annotations

import os
import shutil
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import CronDataIntervalTimetable, Param
from airflow.sdk.exceptions import AirflowException
from cosmos import DbtTaskGroup, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
from cosmos import settings as cosmos_settings
from cosmos.constants import ExecutionMode, InvocationMode, LoadMode, TestBehavior
from cosmos.operators._watcher.base import BaseConsumerSensor
from cosmos.operators.local import DbtSourceLocalOperator
from cosmos.profiles import PostgresUserPasswordProfileMapping

from elt import paths
from elt.spec import PipelineSpec
from elt.watcher import make_clear_aware

PROJECT_NAME = paths.DBT_PROJECT_NAME
TARGET_SCHEMA = "analytics"
WAREHOUSE_CONN_ID = "warehouse"

# Manual "rebuild range": DAG params (trigger form or `airflow dags trigger -c`) naming the first
# and last UTC day to rebuild in one run; unset, a run rebuilds its own data interval.
REBUILD_START, REBUILD_END = "rebuild_start", "rebuild_end"

# The run's window reaches dbt as microbatch's event-time bounds. As environment variables
# (read by `dbt build`/`dbt run`, ignored by `dbt test` and `dbt source freshness`, which have no
# such flags) rather than --vars, so dbt's partial parsing survives from one run to the next.
WINDOW_ENV = {
    "DBT_EVENT_TIME_START": "{{ dbt_event_time(dag, dag_run)[0] }}",
    "DBT_EVENT_TIME_END": "{{ dbt_event_time(dag, dag_run)[1] }}",
}

# dbt also writes a debug-level log file (~1.3 MB a `dbt build`, ~7% of its CPU) into the project
# copy Cosmos runs it in and deletes afterwards; the task log keeps dbt's INFO lines.
NO_DBT_LOG_FILE = {"DBT_LOG_LEVEL_FILE": "none"}


def rebuild_range(conf: dict[str, Any] | None) -> tuple[datetime, datetime] | None:
    """The [first day 00:00, day after the last 00:00) UTC a run was asked to rebuild, if any."""
    conf = conf or {}
    start, end = conf.get(REBUILD_START), conf.get(REBUILD_END)
    if not start and not end:
        return None
    if not (start and end):
        raise ValueError(
            f"set both {REBUILD_START} and {REBUILD_END} (ISO dates, e.g. 2023-02-01), or neither; "
            f"got {REBUILD_START}={start!r}, {REBUILD_END}={end!r}"
        )
    days = []
    for name, value in ((REBUILD_START, start), (REBUILD_END, end)):
        try:
            days.append(date.fromisoformat(str(value)))
        except ValueError:
            raise ValueError(f"{name}={value!r} is not an ISO date (YYYY-MM-DD)") from None
    first, last = days
    if first > last:
        raise ValueError(f"{REBUILD_START} ({first}) is after {REBUILD_END} ({last})")
    midnight = datetime.min.time()
    return (
        datetime.combine(first, midnight, tzinfo=UTC),
        datetime.combine(last + timedelta(days=1), midnight, tzinfo=UTC),
    )


def run_window(dag: Any, dag_run: Any) -> tuple[str, str]:
    """The window a run rebuilds, as UTC ISO strings ('' and '' = rebuild everything).

    A run triggered with `rebuild_start`/`rebuild_end` rebuilds those days. Scheduled and backfill
    runs have a real data interval. A run without one (triggered with no logical date, or by an
    asset event) gets the latest complete interval of the pipeline's schedule before it, the same
    window a scheduled run at that time would get. A pipeline without a time schedule rebuilds
    everything.
    """
    requested = rebuild_range(getattr(dag_run, "conf", None))
    if requested is not None:
        return _iso(requested[0]), _iso(requested[1])
    start, end = dag_run.data_interval_start, dag_run.data_interval_end
    if start is not None and end is not None and start < end:
        return _iso(start), _iso(end)
    timetable = getattr(dag, "timetable", None)
    run_after = getattr(dag_run, "run_after", None)
    if isinstance(timetable, CronDataIntervalTimetable) and run_after is not None:
        # The SDK's timetable only describes the schedule; the core one does the arithmetic.
        from airflow.timetables.interval import CronDataIntervalTimetable as Schedule

        interval = Schedule(timetable.expression, timetable.timezone).infer_manual_data_interval(
            run_after=run_after
        )
        return _iso(interval.start), _iso(interval.end)
    return "", ""


def dbt_event_time(dag: Any, dag_run: Any) -> tuple[str, str]:
    """run_window in the form dbt's --event-time-start/--event-time-end accept (naive UTC)."""
    return tuple(  # type: ignore[return-value]
        datetime.fromisoformat(value).strftime("%Y-%m-%dT%H:%M:%S") if value else ""
        for value in run_window(dag, dag_run)
    )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


# Functions the DAG's templates call (user_defined_macros).
TEMPLATE_MACROS = {"run_window": run_window, "dbt_event_time": dbt_event_time}


def rebuild_params() -> dict[str, Param]:
    """The trigger form's fields for a manual range rebuild (checked again by rebuild_range)."""
    day = {"type": ["null", "string"], "format": "date", "pattern": r"^\d{4}-\d{2}-\d{2}$"}
    return {
        REBUILD_START: Param(
            None,
            **day,
            title="Rebuild from (UTC day)",
            description="first day to rebuild; empty = the run's interval",
        ),
        REBUILD_END: Param(
            None, **day, title="Rebuild to (UTC day)", description="last day to rebuild, inclusive"
        ),
    }


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
    group = DbtTaskGroup(
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
            # The watcher producer runs `dbt build` as a subprocess: dbt's threads never wait on
            # Cosmos's XCom writes (in-process, its callback pushes several per node on dbt's own
            # threads), and only dbt's INFO lines (one result per node) are parsed and pushed.
            setup_operator_args={"invocation_mode": InvocationMode.SUBPROCESS},
            dbt_executable_path=dbt_executable(),
        ),
        operator_args={
            "env": {**NO_DBT_LOG_FILE, **(WINDOW_ENV if spec.windowed else {})},
            "install_deps": False,
            # Runs of one pipeline (a backfill, or a backfill beside the daily run) each rebuild
            # their own window, but re-create the same views and tables: one dbt invocation per
            # task at a time keeps their DDL apart, while their Airbyte and wait tasks overlap.
            "max_active_tis_per_dag": 1,
        },
        **kwargs,
    )
    if watcher:
        order_multi_parent_tests(group)
        for task in group.iter_tasks():
            make_clear_aware(task)  # a cleared run runs the producer's `dbt build` again
            if isinstance(task, BaseConsumerSensor):
                task.poke_interval = WATCHER_POKE_SECONDS
    return group


# How often a watcher model task's trigger reads its model's result from the producer's XCom, once
# the task has deferred (after watching in its worker for elt.watcher.WATCH_IN_WORKER_SECONDS).
# Not much lower: a trigger that fires within a second or two of its task deferring can meet the
# scheduler's stale "success" of the deferral and fail the task (apache/airflow#67287, #72716).
WATCHER_POKE_SECONDS = 5.0


def dbt_executable() -> str:
    """The `dbt` next to this Python (the project's virtualenv or image), else the one on PATH."""
    beside = Path(sys.executable).with_name("dbt")
    return str(beside) if beside.exists() else (shutil.which("dbt") or "dbt")


def order_multi_parent_tests(group: DbtTaskGroup) -> None:
    """Watcher mode: run each test of several models (e.g. `relationships`) after all of them.

    The producer's one `dbt build` orders such a test after all its parents. But when the producer
    dies (its worker is lost) its retry is skipped, and every model task not yet reported falls back
    to its own `dbt run`/`dbt test --select <model>` in the order of the Airflow graph, where the
    test of `fct_purchases` comes before `dim_customers` (which reads fct_purchases) exists: on a new
    warehouse its `relationships` test to dim_customers fails, on an old one it tests last run's
    table. So each such test belongs to the test task of its parent that comes last (the others'
    `--exclude` it), and that task also waits for the parents that are not upstream of it yet.
    Only the fallback commands change: the producer still runs and reports every test.
    """
    tasks = {uid: _run_and_test_tasks(group.tasks_map.get(uid)) for uid in group.dbt_graph.tests_per_model}
    tests: dict[str, list[str]] = {}  # test unique_id -> the models it tests (with a task each)
    for model_uid, test_uids in group.dbt_graph.tests_per_model.items():
        if tasks[model_uid] is None:
            continue
        for test_uid in test_uids:
            tests.setdefault(test_uid, []).append(model_uid)
    for test_uid, parents in sorted(tests.items()):
        if len(parents) < 2:
            continue
        upstream = {uid: tasks[uid][0].get_flat_relative_ids(upstream=True) for uid in parents}
        # The parent with the most of the others upstream: none of the others is downstream of it.
        owner = max(
            parents,
            key=lambda uid: (sum(tasks[p][0].task_id in upstream[uid] for p in parents), uid),
        )
        name = group.dbt_graph.filtered_nodes[test_uid].resource_name.split(".")[0]
        owner_test = tasks[owner][1]
        for parent in parents:
            if parent == owner:
                continue
            parent_run, parent_test = tasks[parent]
            parent_test.exclude = " ".join(filter(None, [parent_test.exclude, name]))
            if parent_run.task_id not in owner_test.get_flat_relative_ids(upstream=True):
                parent_run >> owner_test


def _run_and_test_tasks(node_group: Any) -> tuple[Any, Any] | None:
    """The `run` and `test` tasks of one model's group in the DbtTaskGroup (None for other nodes)."""
    children = getattr(node_group, "children", None) or {}
    by_suffix = {task_id.rsplit(".", 1)[-1]: task for task_id, task in children.items()}
    if "run" in by_suffix and "test" in by_suffix:
        return by_suffix["run"], by_suffix["test"]
    return None


def freshness_cache_dir(dag_id: str) -> Path | None:
    """The freshness task's own directory in Cosmos's cache (beside `<dag_id>__dbt`, the group's)."""
    return (
        Path(cosmos_settings.cache_dir) / f"{dag_id}__source_freshness"
        if cosmos_settings.enable_cache
        else None
    )


def source_freshness_task(spec: PipelineSpec) -> SourceFreshnessOperator:
    """The gate between the syncs and the models: `dbt source freshness` of the selection's sources."""
    return SourceFreshnessOperator(
        task_id="source_freshness",
        project_dir=paths.DBT_PROJECT_DIR,
        profile_config=profile_config(),
        selector=spec.dbt.selector,
        select=" ".join(spec.dbt.select) or None,
        exclude=" ".join(spec.dbt.exclude) or None,
        invocation_mode=InvocationMode.DBT_RUNNER,
        install_deps=False,
        env=NO_DBT_LOG_FILE,
        # dbt's partial parse kept between runs, as Cosmos keeps it for a DbtTaskGroup's tasks; a
        # standalone operator gets no cache dir from Cosmos and fully re-parsed the project every run.
        cache_dir=freshness_cache_dir(spec.name),
        fail_on_error=spec.dbt.freshness == "error",
        doc_md="`dbt source freshness` of the pipeline's sources (thresholds in include/dbt sources YAML).",
    )


class SourceFreshnessOperator(DbtSourceLocalOperator):
    """Cosmos's `dbt source freshness`, failing with what is stale and by how much.

    Cosmos fails any non-zero dbt run with a generic message, and on-call's alert quotes the
    task's exception: this names each source past its `error_after` (or, with
    fail_on_error=False, only logs them). Backfill runs rebuild old dates from raw data already
    loaded, so they do not check how recent that data is.
    """

    def __init__(self, *, fail_on_error: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail_on_error = fail_on_error

    def execute(self, context: Any, **kwargs: Any) -> None:
        run_type = getattr(context.get("dag_run"), "run_type", None)
        if getattr(run_type, "value", run_type) == "backfill":
            self.log.info("backfill run: source freshness not checked")
            return
        super().execute(context, **kwargs)

    def handle_exception_dbt_runner(self, result: Any) -> None:
        results = getattr(getattr(result, "result", None), "results", None)
        if not results:  # dbt failed before checking anything: Cosmos's error says why
            return super().handle_exception_dbt_runner(result)
        problems = [(item, describe_staleness(item)) for item in results if _status(item) != "pass"]
        for _, line in problems:
            self.log.warning("%s", line)
        errors = [line for item, line in problems if _status(item) == "error"]
        broken = [line for item, line in problems if _status(item) not in ("warn", "error")]
        if broken or (errors and self.fail_on_error):
            raise AirflowException("; ".join(broken + errors))


PERIOD_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


def _status(item: Any) -> str:
    return str(getattr(item.status, "value", item.status))


def describe_staleness(item: Any) -> str:
    """One line per source for the log and the alert: which, since when, how far past which threshold."""
    node = item.node
    name = f"source {node.source_name}.{node.name}"
    status = _status(item)
    if status not in ("warn", "error"):
        return f"{name}: freshness {status}: {getattr(item, 'message', None) or 'not checked'}"
    level = "error_after" if status == "error" else "warn_after"
    threshold = getattr(node.freshness, level)
    period = str(getattr(threshold.period, "value", threshold.period))
    limit = timedelta(seconds=threshold.count * PERIOD_SECONDS[period])
    age = timedelta(seconds=round(item.age))
    loaded = item.max_loaded_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{name} is stale ({status}): last loaded {loaded}, {age} ago, "
        f"{age - limit} past {level} ({threshold.count} {period})"
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
