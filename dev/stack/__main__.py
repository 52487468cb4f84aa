"""python -m dev.stack up|down|status|env"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from dev.apt import apt_install_commands
from dev.stack import postgres, procs
from dev.stack.config import (
    AIRBYTE_VENV,
    AIRFLOW_HOME,
    CELERY_WORKERS,
    LOCAL,
    REPO,
    STACK_ENV,
    VENV,
    Ports,
    Postgres,
    executor,
    load_secrets,
    postgres_settings,
    stack_env,
    write_stack_env,
)


@dataclass(frozen=True)
class Service:
    name: str
    cmd: list[str]
    health_url: str | None
    port: int | None = None
    port_env: str | None = None
    timeout: float = 90


def services(ports: Ports) -> list[Service]:
    airflow = str(VENV / "bin" / "airflow")
    dev_python = str(AIRBYTE_VENV / "bin" / "python")
    found: list[Service] = []
    # The local stand-ins for outside services come first: Airflow's DAGs talk to them.
    if (REPO / "dev" / "meter_api" / "__main__.py").exists():
        found.append(
            Service(
                "meter-api",
                [dev_python, "-m", "dev.meter_api"],
                f"http://127.0.0.1:{ports.meter}/health",
                ports.meter,
                "STACK_METER_PORT",
            )
        )
    if (REPO / "dev" / "airbyte_server" / "__main__.py").exists():
        found.append(
            Service(
                "airbyte",
                [dev_python, "-m", "dev.airbyte_server"],
                f"http://127.0.0.1:{ports.airbyte}/api/public/v1/health",
                ports.airbyte,
                "STACK_AIRBYTE_PORT",
            )
        )
    if (REPO / "dev" / "receivers" / "__main__.py").exists():
        found.append(
            Service(
                "alert-receivers",
                [str(VENV / "bin" / "python"), "-m", "dev.receivers"],
                f"http://127.0.0.1:{ports.receivers_http}/health",
                ports.receivers_http,
                "STACK_RECEIVERS_HTTP_PORT",
            )
        )
    if executor() == "celery":
        # Debian's redis-server (installed on demand, see ensure_redis); config with the password in LOCAL.
        found.append(
            Service(
                "redis", ["redis-server", str(LOCAL / "redis.conf")], None, ports.redis, "STACK_REDIS_PORT"
            )
        )
    found += [
        Service(
            "airflow-api-server",
            [airflow, "api-server", "--port", str(ports.airflow), "--host", "127.0.0.1"],
            f"http://127.0.0.1:{ports.airflow}/api/v2/monitor/health",
            ports.airflow,
            "STACK_AIRFLOW_PORT",
            timeout=120,
        ),
        # No log servers (they bind every interface): task and trigger logs are local files here.
        Service("airflow-scheduler", [airflow, "scheduler", "--skip-serve-logs"], None),
        Service("airflow-dag-processor", [airflow, "dag-processor"], None),
        Service("airflow-triggerer", [airflow, "triggerer", "--skip-serve-logs"], None),
    ]
    if executor() == "celery":
        found += [
            Service(
                f"airflow-worker-{n}",
                [airflow, "celery", "worker", "--celery-hostname", f"worker{n}@%h", "--skip-serve-logs"],
                None,
            )
            for n in range(1, CELERY_WORKERS + 1)
        ]
    return found


def ensure_redis(ports: Ports, secret: dict[str, str]) -> None:
    """Debian's redis-server for STACK_EXECUTOR=celery, listening on 127.0.0.1 only."""
    if not shutil.which("redis-server"):
        print("  redis: installing Debian's redis-server")
        for command in apt_install_commands(["redis-server"]):
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    (LOCAL / "redis").mkdir(parents=True, exist_ok=True)
    conf = LOCAL / "redis.conf"
    conf.write_text(
        f"bind 127.0.0.1\nport {ports.redis}\nrequirepass {secret['redis_password']}\n"
        f'dir {LOCAL / "redis"}\nsave ""\nappendonly no\ndaemonize no\n'
    )
    conf.chmod(0o600)


def clean_up_after_dead_services(ports: Ports) -> None:
    """Kill what dead services left behind before restarting them, so a restart finds its ports free
    and no task of the old process runs on unseen."""
    live = {pid for s in services(ports) if (pid := procs.running_pid(s.name))}
    if pg_pid := postgres.running():
        live.add(pg_pid)
    left = procs.orphans(live)
    if left:
        procs.kill_stragglers(pids=left)
        print(f"  cleaned up {len(left)} process(es) left behind by stopped services")


def service_env(ports: Ports, env: dict[str, str], secret: dict[str, str]) -> dict[str, str]:
    """The process environment: the user's, plus the stack's, plus service-only settings."""
    path = os.pathsep.join(
        [str(VENV / "bin"), str(REPO / ".local" / "tools" / "bin"), os.environ.get("PATH", "")]
    )
    return {
        **os.environ,
        **env,
        "PATH": path,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")]),
        "LOCAL_AIRBYTE_HOST": "127.0.0.1",
        "LOCAL_AIRBYTE_PORT": str(ports.airbyte),
        "LOCAL_AIRBYTE_DB_URL": env["WAREHOUSE_URL"].rsplit("/", 1)[0] + "/airbyte",
        "LOCAL_AIRBYTE_CLIENT_ID": secret["airbyte_client_id"],
        "LOCAL_AIRBYTE_CLIENT_SECRET": secret["airbyte_client_secret"],
        "LOCAL_AIRBYTE_STATE_DIR": str(LOCAL / "airbyte"),
        # Connector venvs (source-faker) are a cache of packages, like .venv-airbyte: one per
        # checkout, so each stack (make test runs several) does not install and compile its own.
        "LOCAL_AIRBYTE_CONNECTORS_DIR": str(REPO / ".venv-connectors"),
        "RECEIVERS_HTTP_PORT": str(ports.receivers_http),
        "RECEIVERS_SMTP_PORT": str(ports.receivers_smtp),
        "METER_API_HOST": "127.0.0.1",
        "METER_API_PORT": str(ports.meter),
        "AIRBYTE_OFFLINE_MODE": "1",
    }


def airflow_health(url: str) -> bool:
    """The api-server answers and every Airflow component reports healthy."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            body = json.load(response)
    except (OSError, ValueError):
        return False
    parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
    return all(body.get(part, {}).get("status") == "healthy" for part in parts)


def airflow_db_state(pg: Postgres) -> dict[str, object]:
    """The installed Airflow distributions and the revisions in the metadata database's alembic tables."""
    import psycopg

    distributions = sorted(
        f"{d.metadata['Name']}=={d.version}"
        for d in importlib.metadata.distributions(
            path=[str(p) for p in VENV.glob("lib/python*/site-packages")]
        )
        if (d.metadata["Name"] or "").lower().startswith("apache-airflow")
    )
    revisions = {}
    try:
        with psycopg.connect(pg.url("airflow"), connect_timeout=5) as conn:
            tables = conn.execute("select tablename from pg_tables where tablename like 'alembic_version%'")
            for (table,) in tables.fetchall():
                rows = conn.execute(f'select version_num from "{table}" order by 1').fetchall()
                revisions[table] = [row[0] for row in rows]
    except psycopg.Error:
        revisions = {}
    return {"distributions": distributions, "revisions": revisions}


def watcher(service: Service, pid: int, started_here: bool, proc_env: dict[str, str]) -> Callable[[], None]:
    """A check for the waits of `up`. A service that `up` started and that exits fails `up` at once,
    with its exit code and log, instead of at the health timeout. One that was running already and
    exits (it was stopping: a SIGTERM just before `up`) is started again, once."""
    current = {"pid": pid, "restartable": not started_here}

    def check() -> None:
        if procs.is_alive(current["pid"]):
            return
        if current["restartable"]:
            print(
                f"  {service.name}: pid {current['pid']} exited as up began (it was stopping); starting it again"
            )
            current.update(pid=procs.start(service.name, service.cmd, proc_env, LOCAL), restartable=False)
            return
        code = procs.exit_code(current["pid"])
        status = f" with exit code {code}" if code is not None else ""
        raise procs.StackError(
            f"{service.name} exited{status} while starting{procs.log_tail(procs.log_file(service.name))}"
        )

    return check


def migrate_airflow_db(pg: Postgres, proc_env: dict[str, str]) -> None:
    """`airflow db migrate`, unless this database is at the revisions it had after the last migrate
    by the same Airflow and providers (a restart then skips ~5 CPU-seconds of Airflow start-up)."""
    marker = AIRFLOW_HOME / "db-migrated.json"
    state = airflow_db_state(pg)
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: migrate and record again
        recorded = None
    if state["revisions"] and recorded == state:
        print("  airflow db: at the revision of its last migrate, same Airflow: nothing to migrate")
        return
    marker.unlink(missing_ok=True)
    migrate = subprocess.run(
        [str(VENV / "bin" / "airflow"), "db", "migrate"], env=proc_env, capture_output=True, text=True
    )
    if migrate.returncode != 0:
        raise procs.StackError(
            f"`airflow db migrate` failed:\n{migrate.stdout[-3000:]}{migrate.stderr[-3000:]}"
        )
    marker.write_text(json.dumps(airflow_db_state(pg), indent=1))


def up() -> None:
    started = time.monotonic()
    ports = Ports.from_env()
    secret = load_secrets(
        airflow_running=any(
            procs.running_pid(s.name) for s in services(ports) if s.name.startswith("airflow-")
        )
    )
    pg = postgres_settings(ports, secret)
    env = stack_env(ports, pg, secret)
    write_stack_env(env)
    proc_env = service_env(ports, env, secret)

    clean_up_after_dead_services(ports)
    # Check every port before starting anything, so a clash leaves nothing half-started.
    if pg.embedded and not postgres.running():
        procs.require_free_port(pg.port, "Postgres", "STACK_PG_PORT")
    for service in services(ports):
        if service.port and not procs.running_pid(service.name):
            procs.require_free_port(service.port, service.name, service.port_env or "")

    if pg.embedded:
        if postgres.initdb(pg):
            print("  postgres: initialised a new cluster in .local/pg/data")
        if not postgres.running():
            # Airflow components that outlived their database are on their way down (or keep dead
            # sessions): restart them with the database rather than leave one to die after `up`.
            stale = [s.name for s in services(ports) if s.name.startswith("airflow-") and procs.stop(s.name)]
            if stale:
                print(f"  postgres was down: restarting {', '.join(stale)}")
        postgres.start(pg, proc_env)
    postgres.ensure_databases(pg)
    print(f"  postgres: ready on {pg.host}:{pg.port}")

    AIRFLOW_HOME.mkdir(parents=True, exist_ok=True)
    passwords = AIRFLOW_HOME / "passwords.json"
    passwords.write_text(json.dumps({env["AIRFLOW_ADMIN_USER"]: env["AIRFLOW_ADMIN_PASSWORD"]}))
    passwords.chmod(0o600)
    migrate_airflow_db(pg, proc_env)

    if executor() == "celery":
        ensure_redis(ports, secret)
    watches = {}
    for service in services(ports):
        pid = procs.running_pid(service.name)
        started_here = pid is None
        if started_here:
            pid = procs.start(service.name, service.cmd, proc_env, LOCAL)
        watches[service.name] = watcher(service, pid, started_here, proc_env)
    for service in services(ports):
        if service.name == "airflow-api-server":
            continue
        log, watch = procs.log_file(service.name), watches[service.name]
        if service.health_url:
            url = service.health_url
            procs.wait_until(lambda url=url: procs.http_ok(url), service.name, service.timeout, log, watch)
            print(f"  {service.name}: healthy at {url.rsplit('/', 1)[0]}")
        elif service.port:
            procs.wait_until(procs.port_open(service.port), service.name, service.timeout, log, watch)
            print(f"  {service.name}: listening on 127.0.0.1:{service.port}")

    def airflow_alive() -> None:
        for name, watch in watches.items():
            if name.startswith("airflow-"):
                watch()

    health = f"{env['AIRFLOW_API_URL']}/api/v2/monitor/health"
    # STACK_HEALTH_TIMEOUT: more patience on a machine busy with other work.
    timeout = float(os.environ.get("STACK_HEALTH_TIMEOUT", "180"))
    api_log = procs.log_file("airflow-api-server")
    procs.wait_until(lambda: airflow_health(health), "Airflow", timeout, api_log, airflow_alive)
    # On the first request to its execution API the api-server builds that API's routes for every
    # version (Cadwyn: ~9 CPU-s) and answers nothing else meanwhile. Ask now, not when the first
    # task starts: then the UI and every REST call stalled ~9 s (30 s and more on a busy machine).
    execution = f"{env['AIRFLOW_API_URL']}/execution/health"
    procs.wait_until(lambda: procs.http_ok(execution), "Airflow's execution API", timeout)
    print("  airflow: api-server, scheduler, dag-processor and triggerer healthy; execution API ready")
    print(
        f"\nStack is up in {time.monotonic() - started:.0f}s.\n"
        f"  Airflow UI   {env['AIRFLOW_API_URL']}   login {env['AIRFLOW_ADMIN_USER']} / "
        f"{env['AIRFLOW_ADMIN_PASSWORD']}\n"
        f"  Airbyte API  {env['LOCAL_AIRBYTE_URL']}/api/public/v1\n"
        f"  Meter API    {env['METER_API_URL']}\n"
        f"  Warehouse    {env['WAREHOUSE_URL'].split('@')[-1]}\n"
        f"  Environment  set -a; . {STACK_ENV}; set +a\n"
        "  Stop with    make down"
    )


def down() -> None:
    ports = Ports.from_env()
    names = [s.name for s in services(ports)]
    # Side by side, in two waves: the Airflow processes that run tasks and triggers (a task in
    # flight is stopped with them), then what those talk to as they shut down (the api-server,
    # Celery's broker, the local Airbyte and meter API, the alert receivers); Postgres last.
    runners = [name for name in names if name.startswith("airflow-") and name != "airflow-api-server"]
    stopped = procs.stop_all(runners) + procs.stop_all([name for name in names if name not in runners])
    if postgres.stop():
        stopped.append("postgres")
    leftovers = procs.kill_stragglers()
    if leftovers:
        stopped.append(f"{len(leftovers)} leftover process(es)")
    print("  stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


def status() -> int:
    ports = Ports.from_env()
    down_count = 0
    pg_pid = postgres.running()
    print(f"  postgres: {f'running (pid {pg_pid})' if pg_pid else 'stopped'}")
    for service in services(ports):
        pid = procs.running_pid(service.name)
        down_count += pid is None
        print(f"  {service.name}: {f'running (pid {pid})' if pid else 'stopped'}")
    return 0 if down_count == 0 and pg_pid else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dev.stack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status"])
    args = parser.parse_args(argv)
    if args.command == "up":
        up()
    elif args.command == "down":
        down()
    else:
        return status()
    return 0


if __name__ == "__main__":
    sys.exit(main())
