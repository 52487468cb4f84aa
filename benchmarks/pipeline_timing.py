"""Handoff and dbt timing of a real pipeline run on the live stack (`make up` first).

    .venv/bin/python benchmarks/pipeline_timing.py energy_meters [--logical-date 2023-02-10]

Triggers one run through the scheduler, then prints:
  (b) seconds from the Airbyte job's success to the first dbt task starting;
  (c) wall time of the Cosmos dbt task group vs one `dbt build` of the same selector and
      window (`--event-time-start/--event-time-end`), run in-process right after (same warehouse);
  (d) where the group's time goes (watcher mode): the producer's start-up before dbt's first
      node, dbt running nodes, the producer's own tail, and the model tasks finishing after dbt,
      with the number of XCom entries the producer wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from datetime import time as time_of_day
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "plugins"), str(REPO)]

from dev.airflow_client import AirflowClient  # noqa: E402
from tests.conftest import read_stack_env  # noqa: E402


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dag_id")
    parser.add_argument("--logical-date", default="2023-02-10")
    args = parser.parse_args()
    env = read_stack_env(Path(os.environ.get("STACK_HOME", REPO / ".local")) / "stack.env")
    os.environ.update(env)
    client = AirflowClient.from_env(env)
    client.unpause(args.dag_id)
    logical = datetime.fromisoformat(args.logical_date).replace(tzinfo=UTC)
    run_id = client.trigger(args.dag_id, logical_date=logical)
    run = client.wait_for_run(args.dag_id, run_id, timeout=1800)
    tis = client.task_instances(args.dag_id, run_id)
    if run["state"] != "success":
        raise SystemExit(f"run {run_id} ended {run['state']}: {[(t['task_id'], t['state']) for t in tis]}")

    from airflow.providers.airbyte.hooks.airbyte import AirbyteHook

    hook = AirbyteHook("airbyte_default", timeout=30)
    xcom = client.get(
        f"/api/v2/dags/{args.dag_id}/dagRuns/{run_id}/taskInstances/"
        f"{next(t['task_id'] for t in tis if t['task_id'].endswith('.sync'))}/xcomEntries/return_value"
    )
    job = hook.get_job_details(
        int(json.loads(xcom["value"]) if isinstance(xcom["value"], str) else xcom["value"])
    )
    job_end = ts(job.last_updated_at)
    dbt = [t for t in tis if t["task_id"].startswith("dbt.")]
    first_dbt = min(ts(t["start_date"]) for t in dbt)
    group_wall = (max(ts(t["end_date"]) for t in dbt) - first_dbt).total_seconds()
    print(
        f"(b) Airbyte job {job.job_id} succeeded -> first dbt task started: {(first_dbt - job_end).total_seconds():.1f} s"
    )

    from elt.spec import load_spec, spec_files

    spec = next(load_spec(p) for p in spec_files() if p.stem == args.dag_id)
    single = plain_dbt_build(spec.dbt.selector, ts(run["data_interval_start"]), ts(run["data_interval_end"]))
    print(
        f"(c) dbt task group ({len(dbt)} tasks): {group_wall:.1f} s; one `dbt build --selector "
        f"{spec.dbt.selector}`: {single:.1f} s; ratio {group_wall / single:.2f}x (target <= 1.5x)"
    )
    breakdown(client, args.dag_id, run_id, dbt)


def breakdown(client: AirflowClient, dag_id: str, run_id: str, dbt: list[dict]) -> None:
    """(d) The watcher group's phases, from task instances and the dbt node events Cosmos stores."""
    producer = next((t for t in dbt if t["task_id"] == "dbt.dbt_producer_watcher"), None)
    if producer is None:
        print("(d) no watcher producer (per_model execution): each model task runs its own dbt")
        return
    base = f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{producer['task_id']}"
    keys = [e["key"] for e in client.get(f"{base}/xcomEntries?limit=1000")["xcom_entries"]]
    p_start, p_end = ts(producer["start_date"]), ts(producer["end_date"])

    def clock(hms: str) -> datetime:  # Cosmos keeps dbt's node times as UTC "HH:MM:SS"
        at = datetime.combine(p_start.date(), time_of_day.fromisoformat(hms), tzinfo=UTC)
        return at + timedelta(days=1) if at < p_start - timedelta(hours=12) else at

    starts, finishes = [], []
    for key in (k for k in keys if k.endswith("_dbt_event")):
        value = client.get(f"{base}/xcomEntries/{key}?deserialize=true")["value"]
        event = json.loads(value) if isinstance(value, str) else value
        starts += [clock(event["start_time"])] if event.get("start_time") else []
        finishes += [clock(event["finish_time"])] if event.get("finish_time") else []
    if not starts or not finishes:
        print(f"(d) the producer left {len(keys)} XCom entries but no dbt node timings")
        return
    group_end = max(ts(t["end_date"]) for t in dbt)
    print(
        f"(d) producer start -> dbt's first node: {(min(starts) - p_start).total_seconds():.1f} s; "
        f"dbt nodes: {(max(finishes) - min(starts)).total_seconds():.1f} s; "
        f"dbt's last node -> producer end: {(p_end - max(finishes)).total_seconds():.1f} s; "
        f"-> last model task end: {(group_end - max(finishes)).total_seconds():.1f} s; "
        f"producer XCom entries: {len(keys)}"
    )


def plain_dbt_build(selector: str, start: datetime, end: datetime) -> float:
    """Seconds for one in-process `dbt build --selector S` of [start, end), the way a user runs it."""
    from dbt.cli.main import dbtRunner

    from elt.dbt import profile_config

    with profile_config().ensure_profile() as (profile_path, profile_env):
        os.environ.update(profile_env)
        started = time.perf_counter()
        result = dbtRunner().invoke(
            [
                "build",
                "--project-dir",
                str(REPO / "include" / "dbt"),
                "--profiles-dir",
                str(Path(profile_path).parent),
                "--profile",
                "managed_elt",
                "--target",
                "airflow",
                "--selector",
                selector,
                "--event-time-start",
                start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "--event-time-end",
                end.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "--target-path",
                "/tmp/benchmark-dbt-target",
                "--quiet",
            ]
        )
        seconds = time.perf_counter() - started
    assert result.success, result.exception
    return seconds


if __name__ == "__main__":
    main()
