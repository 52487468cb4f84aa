"""Rows per second of full syncs through the local Airbyte server, measured the way a DAG sees them.

Each run resets the connection (so the sync reads everything again), then submits a sync with the
provider's AirbyteHook and times it from submit to `succeeded`. That wall time includes the worker
process start, PyAirbyte's import and the connector start, so small syncs are dominated by fixed
cost; `rows/s (job)` uses the server's own job duration instead.

Needs a running server and AIRFLOW_CONN_AIRBYTE_DEFAULT (the stack's .local/stack.env has it):

    set -a; . .local/stack.env; set +a
    .venv/bin/python benchmarks/airbyte_sync_throughput.py --connection ecommerce --runs 2

`--no-reset` syncs incrementally from the saved state, so there is (almost) nothing to read: the
wall time is then the fixed start-up of a job (worker process, PyAirbyte, connector start). Compare
the warm worker with cold workers by restarting the server with LOCAL_AIRBYTE_WARM_WORKER=0.

The energy figure is for the range the server was started with: for one month, start the server
with ENERGY_START_DATE=2026-10-01 ENERGY_END_DATE=2026-10-31 (2 meters x 31 days x 96 = 5,952 rows).
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

from airflow.providers.airbyte.hooks.airbyte import AirbyteHook

CONNECTIONS = {
    "ecommerce": "c19e6614-68eb-489d-94b1-58e56dfa934e",
    "energy": "4d2f7268-e2ac-4fa7-a3a6-97286f22d617",
}


def iso_duration_seconds(value: str) -> float:
    match = re.fullmatch(r"PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?", value or "")
    if not match:
        return float("nan")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def run_job(hook: AirbyteHook, connection_id: str, reset: bool = False) -> tuple[object, float]:
    started = time.monotonic()
    job = (hook.submit_reset_connection if reset else hook.submit_sync_connection)(connection_id)
    hook.wait_for_job(job.job_id, wait_seconds=0.5, timeout=3600)
    return hook.get_job_details(job.job_id), time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connection", choices=[*CONNECTIONS, "all"], default="all")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--no-reset", action="store_true", help="sync from the saved state: measures fixed start-up"
    )
    args = parser.parse_args()
    hook = AirbyteHook(airbyte_conn_id="airbyte_default")
    names = list(CONNECTIONS) if args.connection == "all" else [args.connection]

    print(
        f"{'connection':<10} {'run':>3} {'rows':>8} {'MB':>7} {'wall s':>7} {'rows/s':>8} {'rows/s (job)':>13}"
    )
    for name in names:
        rates, walls = [], []
        for run in range(1, args.runs + 1):
            if not args.no_reset:
                run_job(hook, CONNECTIONS[name], reset=True)
            job, wall = run_job(hook, CONNECTIONS[name])
            walls.append(wall)
            job_seconds = iso_duration_seconds(job.duration)
            rate = job.rows_synced / wall
            rates.append(rate)
            print(
                f"{name:<10} {run:>3} {job.rows_synced:>8} {job.bytes_synced / 1e6:>7.2f} {wall:>7.1f} "
                f"{rate:>8.0f} {job.rows_synced / max(job_seconds, 1):>13.0f}"
            )
        if len(rates) > 1:
            print(
                f"{name:<10} median rows/s {statistics.median(rates):.0f}, "
                f"median wall {statistics.median(walls):.1f} s"
            )


if __name__ == "__main__":
    main()
