"""Container health checks that cost 0.07-0.4 CPU-seconds, not an Airflow import (~3.3).

    python bin/healthcheck.py job TriggererJob       # what `airflow jobs check --job-type TriggererJob --local` checks
    python bin/healthcheck.py job DagProcessorJob
    python bin/healthcheck.py celery [NODE]          # what `celery --app <Airflow's app> inspect ping -d NODE` checks

`airflow jobs check` and `celery --app airflow...` import Airflow: ~3.3 CPU-seconds a check. Every
30 s for the triggerer, the dag-processor and each worker, an idle deployment of two workers cost
0.63 of a core; with these, 0.21 (benchmarks/compose_idle_cpu.py). They read the same things from
the same places:
- job: this container's newest running job of that type (its host named by `[core]
  hostname_callable`, as Airflow names it) has a heartbeat within Airflow's threshold for the type
  (`[triggerer] triggerer_health_check_threshold`, `[dag_processor] health_check_threshold`,
  set through the environment like every setting here; Airflow's default 30 s);
- celery: the worker answers a ping through the broker (`[celery] broker_url`); NODE defaults to
  celery@<the name dev/compose/airflow-worker.sh wrote to /tmp/worker-name>.
Exit 0 when healthy; otherwise 1 and one line saying why.
"""

from __future__ import annotations

import importlib
import os
import socket
import sys
from pathlib import Path

THRESHOLDS = {  # job type -> (the setting's environment variable, Airflow's default)
    "TriggererJob": ("AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD", 30.0),
    "DagProcessorJob": ("AIRFLOW__DAG_PROCESSOR__HEALTH_CHECK_THRESHOLD", 30.0),
}
WORKER_NAME_FILE = Path("/tmp/worker-name")


def libpq_dsn(sqlalchemy_url: str) -> str:
    """postgresql+psycopg2://... (Airflow's sql_alchemy_conn) -> postgresql://... for psycopg2."""
    scheme, sep, rest = sqlalchemy_url.partition("://")
    if not sep or not scheme.startswith("postgresql"):
        raise SystemExit(f"healthcheck: AIRFLOW__DATABASE__SQL_ALCHEMY_CONN is not Postgres ({scheme}://…)")
    return f"postgresql://{rest}"


def hostname(env: dict[str, str]) -> str:
    """What Airflow's get_hostname() gives: the `[core] hostname_callable` (module.attribute)."""
    module, _, attribute = (env.get("AIRFLOW__CORE__HOSTNAME_CALLABLE") or "").rpartition(".")
    if module:
        return getattr(importlib.import_module(module), attribute)()
    # Airflow's default, airflow.utils.net.getfqdn: the canonical name of gethostname(), if any.
    name = socket.gethostname()
    try:
        found = socket.getaddrinfo(name, None, 0, socket.SOCK_DGRAM, 0, socket.AI_CANONNAME)
    except OSError:
        return name
    return next((address[3] for address in found if address[3]), name)


def check_job(job_type: str, env: dict[str, str]) -> str:
    """'' when healthy, else why not."""
    import psycopg2

    if job_type not in THRESHOLDS:
        raise SystemExit(f"healthcheck: job type must be one of {sorted(THRESHOLDS)}, not {job_type!r}")
    variable, default = THRESHOLDS[job_type]
    threshold = float(env.get(variable) or default)
    host = hostname(env)
    conn = psycopg2.connect(libpq_dsn(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]), connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "select extract(epoch from now() - latest_heartbeat) from job"
                " where state = 'running' and job_type = %s and hostname = %s"
                " order by latest_heartbeat desc limit 1",
                (job_type, host),
            )
            row = cur.fetchone()
    finally:
        conn.close()
    if row is None:
        return f"no running {job_type} of host {host}"
    if row[0] is None or float(row[0]) >= threshold:
        return f"{job_type} of host {host}: last heartbeat {row[0]} s ago (threshold {threshold:g} s)"
    return ""


def check_celery(name: str | None, env: dict[str, str], timeout: float = 20) -> str:
    from celery import Celery

    name = name or f"celery@{WORKER_NAME_FILE.read_text().strip()}"
    app = Celery(broker=env["AIRFLOW__CELERY__BROKER_URL"])
    replies = app.control.ping(destination=[name], timeout=timeout)
    return "" if any(name in reply for reply in replies) else f"no reply from {name} to a Celery ping"


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["job"] and len(argv) == 2:
            problem = check_job(argv[1], dict(os.environ))
        elif argv[:1] == ["celery"] and len(argv) <= 2:
            problem = check_celery(argv[1] if len(argv) == 2 else None, dict(os.environ))
        else:
            print(__doc__.split("\n\n")[1], file=sys.stderr)
            return 2
    except Exception as err:  # the database or broker unreachable, a setting missing: unhealthy, and why
        problem = f"{type(err).__name__}: {err}"
    if problem:
        print(f"unhealthy: {problem}")
        return 1
    print("healthy")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
