"""CPU seconds one pipeline run costs on the live stack (`make up` first), by component.

    .venv/bin/python benchmarks/pipeline_cpu.py energy_meters [--logical-date YYYY-MM-DD] [--runs 2]
    .venv/bin/python benchmarks/pipeline_cpu.py energy_meters --clear   # and the run cleared, rerun
    .venv/bin/python benchmarks/pipeline_cpu.py --idle 120   # what the stack costs doing nothing

On 2 cores the integration tests are CPU-bound (their wall time is about the stack's CPU time
divided by two), so this is the number that sets how long a pipeline scenario takes there.
Triggers runs through the scheduler one after another; for each prints the machine's CPU time
(/proc/stat) and the stack's processes' CPU, grouped by the service they belong to (a process's
reaped children count for it: task runners under the executor, dbt under its task).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "plugins"), str(REPO)]

from dev.airflow_client import AirflowClient, RunExists, logical_day  # noqa: E402
from dev.stack import procs  # noqa: E402 (the stack's own test of "started by this stack")
from tests.conftest import read_stack_env  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")
DEFAULT_FIRST_DAY = datetime(2023, 3, 6, tzinfo=UTC)
COMPONENTS = (
    ("airflow worker -- ", "executor + task runners"),
    ("airflow scheduler", "scheduler"),
    ("airflow dag-processor", "dag-processor"),
    ("airflow triggerer", "triggerer"),
    ("api_server", "api-server"),
    ("airflow api-server", "api-server"),
    ("dev.airbyte_server", "local Airbyte"),
    ("dev.meter_api", "meter API"),
    ("dev.receivers", "alert receivers"),
    ("postgres", "postgres"),
)


def machine_cpu() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system = (int(v) for v in fields[:3])
    return (user + nice + system) / HZ


def stack_processes() -> dict[int, tuple[str, int, float]]:
    """pid -> (component, parent pid, own + reaped children's CPU seconds) of the stack's processes."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not procs.is_ours(int(entry.name)):
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        cpu = sum(int(v) for v in fields[11:15]) / HZ
        component = next((name for key, name in COMPONENTS if key in cmd), None)
        found[int(entry.name)] = (component or "", int(fields[1]), cpu)
    return found


def by_component(procs: dict[int, tuple[str, int, float]]) -> dict[str, float]:
    """CPU per component; a process without one of its own counts for its nearest parent's."""
    totals: dict[str, float] = {}
    for component, parent, cpu in procs.values():
        while not component and parent in procs:
            component, parent = procs[parent][0], procs[parent][1]
        totals[component or "other"] = totals.get(component or "other", 0.0) + cpu
    return totals


def report(title: str, machine: float, procs_before: dict, procs_after: dict) -> None:
    # Only processes alive at the end are compared; the CPU of those that ended is in their
    # parents' reaped-children time. (A process started and still running counts in full.)
    delta = {
        pid: (comp, parent, cpu - procs_before.get(pid, ("", 0, 0.0))[2])
        for pid, (comp, parent, cpu) in procs_after.items()
    }
    totals = by_component(delta)
    print(f"{title}; machine CPU {machine:.1f} s, stack {sum(totals.values()):.1f} s:")
    for name, cpu in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"  {cpu:7.1f} s  {name}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dag_id", nargs="?", help="the pipeline to run (not with --idle)")
    parser.add_argument(
        "--logical-date",
        type=logical_day,
        metavar="YYYY-MM-DD",
        help="the first run's logical date, one day apart after it (default: the first days from "
        "2023-03-06 this stack has no run at)",
    )
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--clear", action="store_true", help="then clear each run and measure it again")
    parser.add_argument("--idle", type=float, metavar="SECONDS", help="measure the stack idle instead")
    args = parser.parse_args()
    if args.idle and args.dag_id:
        parser.error("--idle measures the stack doing nothing: leave out the DAG id")
    if args.idle:
        before, procs_before = machine_cpu(), stack_processes()
        time.sleep(args.idle)
        report(f"idle for {args.idle:.0f} s", machine_cpu() - before, procs_before, stack_processes())
        return
    if not args.dag_id:
        parser.error("name a pipeline's DAG id, or --idle SECONDS")
    env = read_stack_env(procs.LOCAL / "stack.env")
    client = AirflowClient.from_env(env)
    client.unpause(args.dag_id)
    if args.logical_date:
        first = args.logical_date
        dates = [first + timedelta(days=n) for n in range(args.runs)]
    else:
        dates = client.days_without_runs(args.dag_id, DEFAULT_FIRST_DAY, args.runs)
    for logical_date in dates:
        time.sleep(10)  # let the previous run's tail (callbacks, trigger cleanup) pass
        before, procs_before, started = machine_cpu(), stack_processes(), time.monotonic()
        try:
            run_id = client.trigger(args.dag_id, logical_date=logical_date)
        except RunExists as held:
            sys.exit(f"{held} Leave out --logical-date for the first days without one.")
        run = client.wait_for_run(args.dag_id, run_id, timeout=1800)
        wall = time.monotonic() - started
        title = f"{args.dag_id} {run_id}: {run['state']} in {wall:.1f} s wall"
        report(title, machine_cpu() - before, procs_before, stack_processes())
        if args.clear:  # the whole run again, as the grid's "Clear run" (every task) does it
            time.sleep(10)
            before, procs_before, started = machine_cpu(), stack_processes(), time.monotonic()
            body = {"dag_run_id": run_id, "dry_run": False, "only_failed": False, "reset_dag_runs": True}
            client.post(f"/api/v2/dags/{args.dag_id}/clearTaskInstances", body)
            run = client.wait_for_run(args.dag_id, run_id, timeout=1800)
            title = f"  cleared: {run['state']} in {time.monotonic() - started:.1f} s wall"
            report(title, machine_cpu() - before, procs_before, stack_processes())


if __name__ == "__main__":
    main()
