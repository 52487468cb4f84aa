"""CPU an idle compose deployment costs (docker-compose.yaml + docker-compose.local.yaml, 2 workers).

    .venv/bin/python benchmarks/compose_idle_cpu.py [--seconds 120] [--healthchecks airflow-cli]

Builds the images and starts the deployment as `make compose-test` does (its private Docker engine,
its ports), waits until every service is healthy and `--settle` seconds more, then reads the
machine's CPU time (/proc/stat) over `--seconds` with every DAG paused and no run active: what the deployment burns doing
nothing (the scheduler's and the dag-processor's loops, heartbeats, health checks). Tears it down.
`--healthchecks airflow-cli` puts back the checks it used to have (`airflow jobs check --local`,
`celery --app <Airflow's app> inspect ping`, each an Airflow import) to compare. Run it on a quiet
machine: everything else on it counts too.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "deploy")]

import compose_test  # noqa: E402  (tests/deploy/compose_test.py: the engine, build and start-up)

from dev.airflow_client import AirflowClient  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")
DAGS = ["energy_meters", "ecommerce_sales"]
AIRFLOW_CLI_CHECKS = """
services:
  airflow-dag-processor:
    healthcheck:
      test: ["CMD", "airflow", "jobs", "check", "--job-type", "DagProcessorJob", "--local"]
      interval: 30s
  airflow-triggerer:
    healthcheck:
      test: ["CMD", "airflow", "jobs", "check", "--job-type", "TriggererJob", "--local"]
      interval: 30s
  airflow-worker:
    healthcheck:
      test: ["CMD-SHELL", "celery --app airflow.providers.celery.executors.celery_executor.app inspect ping -d \\"celery@$$(cat /tmp/worker-name)\\" --timeout 20"]
      interval: 30s
"""


def machine_cpu() -> float:
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return sum(int(v) for v in fields[:3]) / HZ


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=120, help="how long to measure (default 120)")
    parser.add_argument("--settle", type=float, default=60, help="wait after healthy (default 60)")
    parser.add_argument("--healthchecks", choices=("ours", "airflow-cli"), default="ours")
    args = parser.parse_args(argv)

    engine = compose_test.Engine(compose_test.ensure_tools())
    if args.healthchecks == "airflow-cli":
        override = compose_test.STATE / "healthchecks-airflow-cli.yaml"
        override.parent.mkdir(parents=True, exist_ok=True)
        override.write_text(AIRFLOW_CLI_CHECKS)
        engine.files += ["-f", str(override)]
    engine.start()
    try:
        if engine.env_file.exists():
            engine.compose("down", "--volumes", "--remove-orphans", "--timeout", "5", check=False)
        compose_test.require_free_ports()
        env = compose_test.write_env(compose_test.build(engine))
        up = engine.compose("up", "-d", "--no-build", "--pull", "never", check=False, timeout=1200)
        if up.returncode != 0:
            raise compose_test.Failed(f"docker compose up failed:\n{(up.stdout + up.stderr)[-2000:]}")
        compose_test.wait_healthy(engine)
        # Idle: every DAG paused, and the runs the schedule started meanwhile over.
        client = AirflowClient(
            env["AIRFLOW_BASE_URL"], env["AIRFLOW_ADMIN_USER"], env["AIRFLOW_ADMIN_PASSWORD"]
        )
        client.wait_for_dags(DAGS, timeout=300)
        for dag_id in DAGS:
            client.patch(f"/api/v2/dags/{dag_id}", {"is_paused": True})

        def no_active_runs() -> bool:
            runs = client.get("/api/v2/dags/~/dagRuns?state=queued&state=running&limit=1")
            return runs["total_entries"] == 0

        compose_test.wait_for(no_active_runs, "no queued or running DAG run", 900, every=5)
        compose_test.log(f"every service healthy, no run active; settling {args.settle:.0f}s")
        time.sleep(args.settle)
        before, started = machine_cpu(), time.monotonic()
        time.sleep(args.seconds)
        cpu, wall = machine_cpu() - before, time.monotonic() - started
        print(
            f"idle deployment ({env['AIRFLOW_WORKERS']} workers, health checks: {args.healthchecks}): "
            f"{cpu:.1f} CPU-s in {wall:.0f} s = {cpu / wall * 60:.1f} CPU-s a minute "
            f"({cpu / wall:.2f} of a core)"
        )
        return 0
    except compose_test.Failed as err:
        print(f"FAILED: {err}", file=sys.stderr)
        return 1
    finally:
        if engine.env_file.exists():
            engine.compose("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False)
        engine.stop()


if __name__ == "__main__":
    sys.exit(main())
