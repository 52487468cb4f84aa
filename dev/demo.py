"""`make demo`: start the stack, run every shipped pipeline once through the scheduler, summarise, stop."""

from __future__ import annotations

import json
import sys
import time
import urllib.parse
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from dev.airbyte_api import AirbyteAPI
from dev.airflow_client import AirflowClient, APIError
from dev.stack import __main__ as stack
from dev.stack.config import STACK_ENV

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))

from elt.spec import load_spec, spec_files  # noqa: E402


def read_env() -> dict[str, str]:
    import shlex

    env = {}
    for line in STACK_ENV.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


def dbt_counts(selector: str, ran_models: int) -> tuple[int, int]:
    """Models and tests of a selector's models, from the compiled manifest."""
    manifest = json.loads((REPO / "include" / "dbt" / "target" / "manifest.json").read_text())
    tagged = {
        uid
        for uid, node in manifest["nodes"].items()
        if node["resource_type"] == "model" and selector in node["tags"]
    }
    tests = [
        uid
        for uid, node in manifest["nodes"].items()
        if node["resource_type"] in ("test", "unit_test") and set(node["depends_on"]["nodes"]) & tagged
    ]
    unit = [
        uid
        for uid, node in manifest.get("unit_tests", {}).items()
        if set(node["depends_on"]["nodes"]) & tagged
    ]
    return len(tagged), len(tests) + len(unit)


def airbyte_job_started(env: dict[str, str], job_id: int) -> datetime:
    """When Airbyte started the job (its public API's startTime)."""
    started = AirbyteAPI.from_connection(env).get(f"/jobs/{job_id}")["startTime"]
    return datetime.fromisoformat(started.replace("Z", "+00:00"))


def synced_since(
    client: AirflowClient, env: dict[str, str], dag_id: str, run_id: str, connection, run_started: datetime
) -> datetime:
    """Rows extracted from then on came with this run's sync: the start of the Airbyte job its sync
    task started or attached to (a sync already running when the run began, started before it),
    else the run's start (no job: e.g. a backfill run whose sync was skipped)."""
    path = (
        f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
        f"/taskInstances/airbyte_{connection.name}.sync/xcomEntries/return_value"
    )
    try:
        job_id = client.get(path)["value"]
    except APIError as err:
        if err.status != 404:  # 404: the task pushed no job id
            raise
        return run_started
    if job_id is None:
        return run_started
    return min(run_started, airbyte_job_started(env, int(job_id)))


def rows_per_stream(
    env: dict[str, str], spec, client: AirflowClient, run_id: str, run_started: datetime
) -> list[str]:
    import psycopg

    lines = []
    with psycopg.connect(env["WAREHOUSE_URL"]) as conn:
        for connection in spec.airbyte.connections:
            since = synced_since(client, env, spec.name, run_id, connection, run_started)
            for stream in connection.streams:
                table = f'{connection.destination_schema}."{stream.name}"'
                total, new = conn.execute(
                    f"select count(*), count(*) filter (where _airbyte_extracted_at >= %s) from {table}",
                    (since,),
                ).fetchone()
                lines.append(
                    f"{connection.destination_schema}.{stream.name}: {new} rows synced ({total} in table)"
                )
    return lines


def window_of(task_instances: list[dict]) -> str:
    """The window the run's dbt rebuilt, as its tasks got it (rendered DBT_EVENT_TIME_START/_END,
    see docs/contracts.md). A run triggered without a logical date has no data interval in the API,
    but its dbt still built the latest complete one."""
    for ti in task_instances:
        env = (ti.get("rendered_fields") or {}).get("env") or {}
        if "DBT_EVENT_TIME_START" in env:
            start, end = env["DBT_EVENT_TIME_START"], env.get("DBT_EVENT_TIME_END", "")
            return f"{start} -> {end} (UTC)" if start else "everything (no window)"
    return "none (no dbt task ran)"


def start_run(client: AirflowClient, dag_id: str) -> str:
    """Unpause the DAG and follow the run the scheduler creates for its latest interval.

    If that interval already ran (the stack was up before), trigger a manual run instead:
    it gets the same window a scheduled run would (see elt.dbt.run_window).
    """
    before = {r["dag_run_id"] for r in client.get(f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]}
    client.unpause(dag_id)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        new = [
            r
            for r in client.get(f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]
            if r["dag_run_id"] not in before
        ]
        if new:
            print(f"  {dag_id}: following the scheduler's run {new[0]['dag_run_id']}")
            return new[0]["dag_run_id"]
        time.sleep(2)
    run_id = client.trigger(dag_id)
    print(f"  {dag_id}: triggered {run_id}")
    return run_id


def main() -> int:
    started = time.monotonic()
    print("== make demo: starting the local stack")
    stack.up()
    env = read_env()
    client = AirflowClient.from_env(env)
    specs = [load_spec(path) for path in spec_files()]
    names = [spec.name for spec in specs]
    ok = True
    try:
        print(f"\n== waiting for the dag-processor to parse {', '.join(names)}")
        client.wait_for_dags(names)
        runs = {}
        for spec in specs:
            runs[spec.name] = (start_run(client, spec.name), datetime.now(UTC))
        print("\n== running (Airbyte sync -> wait (worker, then triggerer) -> dbt models with their tests)")
        finished: dict[str, dict] = {}
        while len(finished) < len(runs):
            line = []
            for name, (run_id, _) in runs.items():
                if name in finished:
                    line.append(f"{name}: {finished[name]['state']}")
                    continue
                run = client.run(name, run_id)
                states = Counter(ti["state"] or "none" for ti in client.task_instances(name, run_id))
                line.append(
                    f"{name}: {run['state']} [{', '.join(f'{k} {v}' for k, v in sorted(states.items()))}]"
                )
                if run["state"] in ("success", "failed"):
                    finished[name] = run
            print("  " + " | ".join(line), flush=True)
            if len(finished) < len(runs):
                time.sleep(10)
        print("\n== summary")
        for spec in specs:
            run_id, since = runs[spec.name]
            run = finished[spec.name]
            tis = client.task_instances(spec.name, run_id)
            dbt_tis = [ti for ti in tis if ti["task_id"].startswith("dbt.")]
            dbt_ok = sum(ti["state"] == "success" for ti in dbt_tis)
            models, tests = dbt_counts(spec.dbt.selector, dbt_ok)
            start, end = (datetime.fromisoformat(run[k]) for k in ("start_date", "end_date"))
            ok &= run["state"] == "success"
            print(f"{spec.name}: {run['state'].upper()} in {(end - start).total_seconds():.0f}s")
            print(f"  window      {window_of(tis)}")
            for line in rows_per_stream(env, spec, client, run_id, since):
                print(f"  {line}")
            print(
                f"  dbt         {dbt_ok}/{len(dbt_tis)} dbt tasks succeeded ({models} models, {tests} tests)"
            )
            failed = [ti["task_id"] for ti in tis if ti["state"] not in ("success", "skipped")]
            if failed:
                print(f"  not successful: {', '.join(failed)}")
    finally:
        print("\n== stopping the stack")
        stack.down()
    print(
        f"\nmake demo finished in {time.monotonic() - started:.0f}s: {'all pipelines succeeded' if ok else 'FAILED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
