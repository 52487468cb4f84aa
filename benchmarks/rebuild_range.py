"""Rebuilding a date range: one run vs one plain `dbt build` vs one backfill run per day.

    .venv/bin/python benchmarks/rebuild_range.py [--start 2023-02-01 --end 2023-03-02] [--backfill-days 3]

On the live stack (`make up`, with raw data through END + 1 day, e.g. ENERGY_END_DATE=2023-03-05):
  (a) triggers energy_meters with the params rebuild_start/rebuild_end (one run, one dbt build,
      one microbatch batch per day) and times its dbt task group and the whole run;
  (b) times one in-process `dbt build --selector energy` of the same range;
  (c) times a backfill (`POST /api/v2/backfills`, reprocess completed) of the first
      --backfill-days days and extrapolates to the range (say so when reporting);
  and checks that the backfilled days' mart rows equal those the one-run rebuild wrote.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "plugins"), str(REPO), str(REPO / "benchmarks")]

from pipeline_timing import plain_dbt_build, ts  # noqa: E402

from dev.airflow_client import AirflowClient  # noqa: E402
from tests.conftest import read_stack_env  # noqa: E402

DAG_ID = "energy_meters"


def marts(first: date, last: date) -> list[tuple]:
    import psycopg

    with psycopg.connect(os.environ["WAREHOUSE_URL"]) as conn:
        return conn.execute(
            "select 'daily', reading_date::text, meter_muid, direction, energy_kwh, reading_count "
            "from analytics_marts.fct_energy_daily where reading_date between %(first)s and %(last)s "
            "union all select 'hourly', hour_start_at::text, meter_muid, direction, energy_kwh, reading_count "
            "from analytics_marts.fct_energy_hourly "
            "where hour_start_at >= %(first)s::date and hour_start_at < %(last)s::date + 1 order by 1, 2, 3, 4",
            {"first": first, "last": last},
        ).fetchall()


def dbt_group_seconds(client: AirflowClient, run_id: str) -> float:
    dbt = [
        t for t in client.task_instances(DAG_ID, run_id) if t["task_id"].startswith("dbt.") and t["end_date"]
    ]
    return (max(ts(t["end_date"]) for t in dbt) - min(ts(t["start_date"]) for t in dbt)).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--start", type=date.fromisoformat, default=date(2023, 2, 1))
    parser.add_argument("--end", type=date.fromisoformat, default=date(2023, 3, 2))
    parser.add_argument("--backfill-days", type=int, default=3)
    args = parser.parse_args()
    days = (args.end - args.start).days + 1
    env = read_stack_env(Path(os.environ.get("STACK_HOME", REPO / ".local")) / "stack.env")
    os.environ.update(env)
    client = AirflowClient.from_env(env)
    client.wait_for_dags([DAG_ID])
    client.unpause(DAG_ID)

    conf = {"rebuild_start": args.start.isoformat(), "rebuild_end": args.end.isoformat()}
    started = time.monotonic()
    run_id = client.trigger(DAG_ID, conf=conf)
    run = client.wait_for_run(DAG_ID, run_id, timeout=3600)
    run_wall = time.monotonic() - started
    if run["state"] != "success":
        raise SystemExit(f"rebuild run {run_id} ended {run['state']}")
    group = dbt_group_seconds(client, run_id)
    rebuilt = marts(args.start, args.end)
    print(
        f"(a) one run rebuilding {days} days ({args.start}..{args.end}): dbt group {group:.1f} s, run {run_wall:.1f} s"
    )

    end = datetime.combine(args.end + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    single = plain_dbt_build(
        "energy", datetime.combine(args.start, datetime.min.time(), tzinfo=UTC), end, in_process=False
    )
    print(
        f"(b) one plain `dbt build --selector energy` of the range: {single:.1f} s; (a) dbt group / (b) = "
        f"{group / single:.2f}x (goal <= 2x)"
    )
    assert marts(args.start, args.end) == rebuilt, "the plain dbt build wrote different rows"

    last = args.start + timedelta(days=args.backfill_days - 1)
    started = time.monotonic()
    backfill = client.post(
        "/api/v2/backfills",
        {
            "dag_id": DAG_ID,
            # backfill dates are data interval starts: one run per day start..last
            "from_date": f"{args.start.isoformat()}T00:00:00Z",
            "to_date": f"{last.isoformat()}T00:00:00Z",
            "reprocess_behavior": "completed",
            "max_active_runs": 1,
        },
    )
    while not client.get(f"/api/v2/backfills/{backfill['id']}").get("completed_at"):
        time.sleep(5)
    per_run = (time.monotonic() - started) / args.backfill_days
    print(
        f"(c) backfill of {args.backfill_days} days: {per_run:.1f} s per run -> {days} runs ~ "
        f"{per_run * days:.0f} s (extrapolated), {per_run * days / run_wall:.1f}x the one-run rebuild"
    )
    same = marts(args.start, last) == [row for row in rebuilt if row[1][:10] <= last.isoformat()]
    print(f"    backfilled days row-for-row equal to the one-run rebuild: {same}")


if __name__ == "__main__":
    main()
