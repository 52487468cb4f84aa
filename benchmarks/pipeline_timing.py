"""Handoff and dbt timing of a real pipeline run on the live stack (`make up` first).

    .venv/bin/python benchmarks/pipeline_timing.py energy_meters [--logical-date YYYY-MM-DD]

Triggers one run through the scheduler, then prints:
  (b) seconds from the Airbyte job's success to the first dbt task starting;
  (c) wall time of the Cosmos dbt task group vs one `dbt build` of the same selector and
      window (`--event-time-start/--event-time-end`) run right after on the same warehouse: as a
      user runs it (the `dbt` command; the ratio), and in-process with dbt already imported;
  (d) where the group's time goes (watcher mode), from the producer's log: its start until
      dbt is running, dbt's start-up and parse, dbt running nodes, dbt's exit and the producer's
      tail, and the model tasks finishing after the producer, with its XCom entry count.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "plugins"), str(REPO)]

from dev.airflow_client import AirflowClient, RunExists, logical_day  # noqa: E402
from tests.conftest import read_stack_env  # noqa: E402

# The default run: a day of the tests' data (ENERGY_END_DATE=2023-02-28), which make up's data covers.
DEFAULT_DAY = datetime(2023, 2, 10, tzinfo=UTC)


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dag_id")
    parser.add_argument(
        "--logical-date",
        type=logical_day,
        metavar="YYYY-MM-DD",
        help="the run's logical date (default: 2023-02-10, or the first day after it this stack has no run at)",
    )
    args = parser.parse_args()
    env = read_stack_env(Path(os.environ.get("STACK_HOME", REPO / ".local")) / "stack.env")
    os.environ.update(env)
    client = AirflowClient.from_env(env)
    client.unpause(args.dag_id)
    if args.logical_date:
        logical = args.logical_date
    else:
        (logical,) = client.days_without_runs(args.dag_id, DEFAULT_DAY, 1)
    try:
        run_id = client.trigger(args.dag_id, logical_date=logical)
    except RunExists as held:
        sys.exit(f"{held} Leave out --logical-date for the first day without one.")
    print(f"{args.dag_id} run {run_id} (logical date {logical:%Y-%m-%d})")
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
    window = ts(run["data_interval_start"]), ts(run["data_interval_end"])
    cli = plain_dbt_build(spec.dbt.selector, *window, in_process=False)
    in_process = plain_dbt_build(spec.dbt.selector, *window, in_process=True)
    print(
        f"(c) dbt task group ({len(dbt)} tasks): {group_wall:.1f} s; one `dbt build --selector "
        f"{spec.dbt.selector}`: {cli:.1f} s; ratio {group_wall / cli:.2f}x (target <= 1.5x); "
        f"in-process dbtRunner with dbt imported: {in_process:.1f} s ({group_wall / in_process:.2f}x)"
    )
    breakdown(client, args.dag_id, run_id, dbt)


def breakdown(client: AirflowClient, dag_id: str, run_id: str, dbt: list[dict]) -> None:
    """(d) The watcher group's phases, from the producer's task instance and its log."""
    producer = next((t for t in dbt if t["task_id"] == "dbt.dbt_producer_watcher"), None)
    if producer is None:
        print("(d) no watcher producer (per_model execution): each model task runs its own dbt")
        return
    base = f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{producer['task_id']}"
    keys = [e["key"] for e in client.get(f"{base}/xcomEntries?limit=1000")["xcom_entries"]]
    log = client.get(f"{base}/logs/{producer['try_number']}?full_content=true")["content"]
    p_start, p_end = ts(producer["start_date"]), ts(producer["end_date"])

    def first(text: str) -> datetime | None:
        return next(
            (ts(e["timestamp"]) for e in log if "timestamp" in e and text in str(e.get("event"))), None
        )

    marks = {  # Cosmos's and dbt's own log lines, in order
        "launch": first("Running command:") or first("Trying to run dbtRunner"),
        "dbt up": first("Running with dbt="),
        "parsed": first("Concurrency:"),
        "done": first("Done. PASS="),
    }
    if None in marks.values():
        print(
            f"(d) producer log lacks {[k for k, v in marks.items() if v is None]}; XCom entries: {len(keys)}"
        )
        return
    group_end = max(ts(t["end_date"]) for t in dbt)
    sec = lambda a, b: (b - a).total_seconds()  # noqa: E731
    print(
        f"(d) producer start -> dbt launched: {sec(p_start, marks['launch']):.1f} s; "
        f"dbt start-up: {sec(marks['launch'], marks['dbt up']):.1f} s; "
        f"parse: {sec(marks['dbt up'], marks['parsed']):.1f} s; "
        f"nodes: {sec(marks['parsed'], marks['done']):.1f} s; "
        f"dbt exit + producer tail: {sec(marks['done'], p_end):.1f} s; "
        f"-> last model task end: {sec(p_end, group_end):.1f} s; producer XCom entries: {len(keys)}"
    )


def plain_dbt_build(selector: str, start: datetime, end: datetime, *, in_process: bool) -> float:
    """Seconds for one `dbt build --selector S` of [start, end): the `dbt` command, or dbtRunner."""
    from elt.dbt import dbt_executable, profile_config

    args = [
        "build",
        "--project-dir",
        str(REPO / "include" / "dbt"),
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
    with profile_config().ensure_profile() as (profile_path, profile_env):
        args += ["--profiles-dir", str(Path(profile_path).parent)]
        if not in_process:
            started = time.perf_counter()
            subprocess.run([dbt_executable(), *args], env={**os.environ, **profile_env}, check=True)
            return time.perf_counter() - started
        from dbt.cli.main import dbtRunner

        os.environ.update(profile_env)
        started = time.perf_counter()
        result = dbtRunner().invoke(args)
        seconds = time.perf_counter() - started
    assert result.success, result.exception
    return seconds


if __name__ == "__main__":
    main()
