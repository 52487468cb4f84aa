"""Turn a pipeline spec into an Airflow 3 DAG: Airbyte syncs in parallel, then the dbt task group.

Nothing here touches the network, a database, dbt or a subprocess: building a DAG only reads
the spec and the compiled dbt manifest.
"""

from __future__ import annotations

import inspect
from datetime import UTC, datetime
from pathlib import Path

from airflow.sdk import DAG, Asset, CronDataIntervalTimetable, TaskGroup

from elt import alerting, paths, render_cache
from elt.airbyte import WATCH_IN_WORKER_SECONDS, AirbyteJobWaitSensor, AirbyteSyncOperator
from elt.assets import raw_table_asset
from elt.dbt import (
    TEMPLATE_MACROS,
    dbt_executable,
    dbt_task_group,
    rebuild_params,
    source_freshness_task,
)
from elt.lineage import attach_lineage
from elt.spec import PipelineSpec, check_environment, load_spec


def build_pipeline_dag(dag_file: str | None = None, spec_path: Path | None = None) -> DAG:
    """Build the DAG for the spec named like the calling DAG file (dags/NAME.py -> include/pipelines/NAME.yaml)."""
    if spec_path is None:
        caller = dag_file or inspect.stack()[1].filename
        spec_path = paths.PIPELINES_DIR / f"{Path(caller).stem}.yaml"
    return dag_from_spec(load_spec(spec_path))


def _schedule(spec: PipelineSpec) -> CronDataIntervalTimetable | list[Asset] | None:
    # A real data interval per run (cron schedules alone get zero-length intervals in Airflow 3):
    # dbt rebuilds exactly that window, and backfills by date mean something.
    if spec.schedule is not None:
        return CronDataIntervalTimetable(spec.schedule, timezone="UTC")
    if spec.trigger_on_assets:
        return [
            Asset(uri=ref) if "://" in ref else raw_table_asset(*ref.split("."))
            for ref in spec.trigger_on_assets
        ]
    return None


def dag_from_spec(spec: PipelineSpec) -> DAG:
    check_environment(spec)
    limits = spec.limits
    default_args = {
        "owner": ", ".join(spec.owners),
        "retries": limits.retries,
        "retry_delay": limits.retry_delay,
        **alerting.task_callbacks(spec),
    }
    with DAG(
        dag_id=spec.name,
        description=spec.description.strip().split("\n")[0][:200],
        doc_md=doc_md(spec),
        schedule=_schedule(spec),
        start_date=datetime.combine(spec.start_date, datetime.min.time(), tzinfo=UTC),
        catchup=spec.catchup,
        is_paused_upon_creation=spec.paused,
        tags=sorted({*spec.tags, *spec.owners}),
        default_args=default_args,
        dagrun_timeout=limits.dagrun_timeout,
        max_active_runs=limits.max_active_runs,
        max_active_tasks=limits.max_active_tasks,
        user_defined_macros=TEMPLATE_MACROS,
        params=rebuild_params() if spec.windowed else {},
        **alerting.dag_arguments(spec),
    ) as dag:
        syncs = [_airbyte_group(spec, c) for c in spec.airbyte.connections] if spec.airbyte else []
        if spec.dbt is not None:
            dbt = dbt_group(spec)
            upstream = syncs
            if spec.dbt.freshness != "off":
                freshness = source_freshness_task(spec)
                syncs >> freshness
                upstream = [freshness]
            upstream >> dbt
    return dag


def dbt_group(spec: PipelineSpec) -> TaskGroup:
    """Cosmos's task group of the spec's dbt selection with its asset lineage, rendered once per manifest."""

    def render() -> TaskGroup:
        group = dbt_task_group(spec)
        attach_lineage(group)  # stream -> source -> model edges on the Assets page
        return group

    # Everything that render() reads besides the DAG (plain JSON: its key must not depend on the
    # interpreter's hash seed): the spec's dbt part, and the dbt the producer runs, which follows
    # the interpreter and PATH (an image's or another virtualenv's cache must not be loaded here).
    inputs = {
        "dbt": spec.dbt.model_dump(mode="json"),
        "windowed": spec.windowed,
        "dbt_executable": dbt_executable(),
    }
    return render_cache.cached_task_group(render, inputs)


def _airbyte_group(spec: PipelineSpec, connection) -> TaskGroup:
    airbyte = spec.airbyte
    with TaskGroup(
        group_id=f"airbyte_{connection.name}",
        tooltip=f"Airbyte connection {connection.id} -> {connection.destination_schema}",
    ) as group:
        sync = AirbyteSyncOperator(
            task_id="sync",
            connection_id=str(connection.id),
            airbyte_conn_id=airbyte.conn_id,
            request_timeout=airbyte.request_timeout.total_seconds(),
            transient_error_budget=airbyte.transient_error_budget.total_seconds(),
            backfill_sync=spec.backfill.sync,
            coverage=[
                (f"{connection.destination_schema}.{stream.name}", stream.cursor_field)
                for stream in connection.streams
                if stream.cursor_field
            ],
            execution_timeout=airbyte.request_timeout * 10 + airbyte.transient_error_budget,
            doc_md=f"Starts a sync of Airbyte connection `{connection.id}` (or attaches to the running one).",
        )
        wait = AirbyteJobWaitSensor(
            task_id="wait",
            airbyte_job_id=sync.output,
            airbyte_conn_id=airbyte.conn_id,
            connection_id=str(connection.id),
            poll_interval=airbyte.poll_interval.total_seconds(),
            request_timeout=airbyte.request_timeout.total_seconds(),
            transient_error_budget=airbyte.transient_error_budget.total_seconds(),
            timeout=airbyte.sync_timeout.total_seconds(),
            execution_timeout=airbyte.sync_timeout,
            outlets=[raw_table_asset(connection.destination_schema, s.name) for s in connection.streams],
            doc_md=f"Waits for the Airbyte job (its first {WATCH_IN_WORKER_SECONDS:g} s in the worker, "
            "then in the triggerer); publishes one asset per stream.",
            **alerting.sync_volume_callbacks(spec, connection),
        )
        sync >> wait
    return group


def doc_md(spec: PipelineSpec) -> str:
    connections = "\n".join(
        f"- `{c.name}` — Airbyte connection `{c.id}` → schema `{c.destination_schema}`, streams "
        + ", ".join(f"`{s.name}`" for s in c.streams)
        for c in (spec.airbyte.connections if spec.airbyte else [])
    )
    if spec.windowed:
        window = (
            f"Runs on `{spec.schedule}` (UTC) with a real data interval; dbt's windowed models rebuild exactly "
            "`data_interval_start` … `data_interval_end`, so re-running a run or a date range is idempotent."
        )
    elif spec.trigger_on_assets:
        window = "Runs when all of these assets are updated: " + ", ".join(
            f"`{a}`" for a in spec.trigger_on_assets
        )
    else:
        window = "Runs only when triggered."
    backfill = {
        "if_behind": "a backfill run syncs only when the raw tables do not reach the end of its window, so "
        "one sync serves a whole backfill (later runs attach to it or find the data already there)",
        "always": "every backfill run starts (or attaches to) a sync",
        "never": "backfill runs never sync; they rebuild marts from the raw data already loaded",
    }[spec.backfill.sync]
    routes = [name for name in ("slack", "pagerduty", "email") if getattr(spec.alerts, name)]
    return f"""### {spec.name}

{spec.description.strip()}

**Owners:** {", ".join(spec.owners)} · **Spec:** `include/pipelines/{spec.name}.yaml` ·
**dbt selection:** `{(spec.dbt.selector or " ".join(spec.dbt.select)) if spec.dbt else "none"}` · **Alerts:** {", ".join(routes) or "none"}

**Airbyte connections** (synced in parallel; a wait longer than {WATCH_IN_WORKER_SECONDS:g} s runs in the triggerer):
{connections or "none (dbt only)"}

**Schedule and windows.** {window}

**Re-run.** Clear the failed task (and downstream) in the grid. A cleared `sync` task attaches to a
sync that is still running instead of starting another; a dbt task re-runs only its model and tests.

**Backfill.** UI: *Trigger → Backfill*, or
`airflow backfill create --dag-id {spec.name} --from-date 2023-02-01 --to-date 2023-02-07`
(add `--reprocess-behavior completed` to redo finished dates). Policy `{spec.backfill.sync}`: {backfill}.

{_dbt_doc(spec)}

{spec.doc or ""}
"""


def _dbt_doc(spec: PipelineSpec) -> str:
    if spec.dbt is None:
        return ""
    rebuild = (
        "**Rebuild a date range in one run** (one dbt build): trigger with the params `rebuild_start` / "
        "`rebuild_end` (UTC days, inclusive), e.g. "
        f"""`airflow dags trigger {spec.name} -c '{{"rebuild_start": "2023-02-01", "rebuild_end": "2023-03-02"}}'`.\n\n"""
        if spec.windowed
        else ""
    )
    return (
        f"{rebuild}**Source freshness** (`dbt.freshness: {spec.dbt.freshness}`): `source_freshness` checks the "
        "raw tables after the syncs; its error names each stale source and how far past its threshold it is."
    )
