"""Helpers for tests that run pipelines through the live scheduler."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from dev.airflow_client import AirflowClient, RunExists

ENERGY_CONNECTION = "4d2f7268-e2ac-4fa7-a3a6-97286f22d617"
ECOMMERCE_CONNECTION = "c19e6614-68eb-489d-94b1-58e56dfa934e"
METERS = {
    "95ce3367-cbce-4a4d-bbe3-da082831d7bd": ("0100011D00FF", "import"),
    "1db7649e-9342-4e04-97c7-f0ebb88ed1f8": ("0100021D00FF", "export"),
}


def run_dag(
    airflow: AirflowClient,
    dag_id: str,
    logical_date: datetime | None = None,
    timeout: float = 1200,
    conf: dict | None = None,
) -> dict:
    airflow.wait_for_dags([dag_id])
    airflow.unpause(dag_id)
    try:
        run_id = airflow.trigger(dag_id, logical_date=logical_date, conf=conf)
    except RunExists as held:
        # A stack kept from an earlier session already ran this date: run it again. The clear
        # answers once the run is queued again, so wait_for_run cannot see its old end state.
        run_id = held.run["dag_run_id"]
        airflow.post(
            f"/api/v2/dags/{dag_id}/dagRuns/{urllib.request.quote(run_id, safe='')}/clear", {"dry_run": False}
        )
    run = airflow.wait_for_run(dag_id, run_id, timeout=timeout)
    run["task_instances"] = {ti["task_id"]: ti for ti in airflow.task_instances(dag_id, run_id)}
    return run


def local_airbyte(env: dict[str, str], method: str, path: str, body: Any = None) -> Any:
    """The local Airbyte's test endpoints (outside Airbyte's API, no auth)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{env['LOCAL_AIRBYTE_URL']}/local{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        raw = response.read()
    return json.loads(raw) if raw and raw[:1] in b"{[" else raw.decode()


def meter_readings(env: dict[str, str], muid: str, first: date, last: date) -> list[dict]:
    """The meter API's own JSON readings of one meter with timestamps in (first 00:00, last+1 00:00]."""
    # The API's stop is an exclusive date: ask for one day more, then keep the half-open range.
    start, stop = first, last + timedelta(days=2)
    low = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    high = datetime.combine(last + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    readings, offset = [], 0
    while True:
        url = (
            f"{env['METER_API_URL']}/meterdata/measurement?muid={muid}&measurement=energy"
            f"&start={start.isoformat()}&stop={stop.isoformat()}&limit=1000&offset={offset}"
        )
        with urllib.request.urlopen(url, timeout=30) as response:
            page = json.load(response)["data"]
        readings += page
        offset += len(page)
        if len(page) < 1000:
            break
    return [r for r in readings if low < _stamp(r) <= high]


def _stamp(reading: dict) -> datetime:
    return datetime.fromisoformat(reading["timestamp"].replace("Z", "+00:00"))


def _closing_bucket(moment: datetime, size: timedelta, floor: datetime) -> datetime:
    """The bucket (start, start + size] that contains `moment` (right-closed, as readings are)."""
    start = floor
    while start + size < moment:
        start += size
    return start


def meter_energy(env: dict[str, str], first: date, last: date) -> dict[str, dict[tuple, tuple[float, int]]]:
    """Expected marts straight from the meter API: kWh and readings per (bucket, meter, direction).

    A reading at t is the energy of (t - 15 min, t], so day D sums t in (D, D+1] and hour H sums
    t in (H, H+1h]. 'daily' keys are (date, muid, direction), 'hourly' keys (UTC datetime, ...).
    """
    origin = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    daily: dict[tuple, list] = {}
    hourly: dict[tuple, list] = {}
    for muid, (obis, direction) in METERS.items():
        for reading in meter_readings(env, muid, first, last):
            moment, kwh = _stamp(reading), reading[obis]
            day = _closing_bucket(moment, timedelta(days=1), origin)
            hour = _closing_bucket(moment, timedelta(hours=1), day)
            for buckets, key in ((daily, (day.date(), muid, direction)), (hourly, (hour, muid, direction))):
                total = buckets.setdefault(key, [0.0, 0])
                total[0] += kwh
                total[1] += 1
    return {
        "daily": {key: (kwh, n) for key, (kwh, n) in daily.items()},
        "hourly": {key: (kwh, n) for key, (kwh, n) in hourly.items()},
    }


def assert_energy_marts_match(
    warehouse_url: str, expected: dict[str, dict[tuple, tuple[float, int]]], first: date, last: date
) -> None:
    """fct_energy_daily/hourly for first..last equal `expected` (to 1e-6 kWh, exact counts)."""
    import psycopg

    low = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
    high = datetime.combine(last + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    with psycopg.connect(warehouse_url) as conn:
        daily = conn.execute(
            "select reading_date, meter_muid, direction, energy_kwh::float8, reading_count "
            "from analytics_marts.fct_energy_daily where reading_date between %s and %s",
            (first, last),
        ).fetchall()
        hourly = conn.execute(
            "select hour_start_at, meter_muid, direction, energy_kwh::float8, reading_count "
            "from analytics_marts.fct_energy_hourly where hour_start_at >= %s and hour_start_at < %s",
            (low, high),
        ).fetchall()
    for grain, rows in (("daily", daily), ("hourly", hourly)):
        actual = {(bucket, muid, direction): (kwh, n) for bucket, muid, direction, kwh, n in rows}
        want = expected[grain]
        assert set(actual) == set(want), (grain, sorted(set(actual) ^ set(want))[:5])
        for key, (kwh, n) in want.items():
            assert abs(actual[key][0] - kwh) <= 1e-6 and actual[key][1] == n, (
                grain,
                key,
                actual[key],
                (kwh, n),
            )


def why_retried(
    airflow: AirflowClient, dag_id: str, run_id: str, task_id: str, stack_home: str | None
) -> str:
    """What Airflow recorded about a task's tries in a run: each try's state and times, the run's
    event log for the task (e.g. the scheduler's "state mismatch"), the end of each try's log, and
    the scheduler's warnings about it. For assertion messages and warnings."""
    base = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.request.quote(run_id, safe='')}/taskInstances/{task_id}"
    lines = [f"{task_id} in {run_id}:"]
    try:
        tries = sorted(airflow.get(f"{base}/tries")["task_instances"], key=lambda t: t["try_number"])
    except Exception as err:  # a diagnostic must not hide the failure it explains
        return f"{lines[0]} (tries unavailable: {err})"
    for attempt in tries:
        lines.append(
            f"  try {attempt['try_number']}: {attempt['state']} {attempt.get('start_date')} -> "
            f"{attempt.get('end_date')} on {attempt.get('hostname')}"
        )
    try:  # the newest 30 events, oldest first
        query = urllib.parse.urlencode(
            {"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "limit": 30, "order_by": "-id"}
        )
        for event in reversed(airflow.get(f"/api/v2/eventLogs?{query}")["event_logs"]):
            lines.append(
                f"  event {event['when']} {event['event']} try {event.get('try_number')}: {event.get('extra')}"
            )
    except Exception as err:
        lines.append(f"  event log unavailable: {err}")
    for attempt in tries:
        try:
            content = airflow.get(f"{base}/logs/{attempt['try_number']}?full_content=true")["content"]
        except Exception as err:
            lines.append(f"  log of try {attempt['try_number']} unavailable: {err}")
            continue
        for entry in content[-12:]:
            if isinstance(entry, dict):
                entry = f"{entry.get('timestamp', '')} {entry.get('level', '')} {entry.get('event', '')}"
            lines.append(f"  log {attempt['try_number']}: {str(entry)[:300]}")
    scheduler_log = Path(stack_home or "", "logs", "airflow-scheduler.log")
    if stack_home and scheduler_log.exists():
        text = scheduler_log.read_text(errors="replace").splitlines()
        flagged = [
            line
            for line in text
            if task_id in line and run_id in line and ("warn" in line or "error" in line)
        ]
        lines += [f"  scheduler: {line[:400]}" for line in flagged[-20:]]
    return "\n".join(lines)
