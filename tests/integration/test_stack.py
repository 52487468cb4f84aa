"""The stack runner on its own: a second stack in a temporary STACK_HOME on other ports."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from dev.airflow_client import AirflowClient
from tests.conftest import read_stack_env

REPO = Path(__file__).resolve().parents[2]
PORTS = {
    "STACK_PG_PORT": "56432",
    "STACK_AIRFLOW_PORT": "18080",
    "STACK_AIRBYTE_PORT": "18001",
    "STACK_METER_PORT": "18011",
    "STACK_RECEIVERS_HTTP_PORT": "18027",
    "STACK_RECEIVERS_SMTP_PORT": "18028",
}
# The later tests restart the stack with Celery workers (and down it as one).
CELERY = {"STACK_EXECUTOR": "celery", "STACK_REDIS_PORT": "18379"}
REQUIRED_KEYS = {
    "AIRFLOW_HOME",
    "AIRFLOW__CORE__DAGS_FOLDER",
    "AIRFLOW_CONN_WAREHOUSE",
    "AIRFLOW_CONN_AIRBYTE_DEFAULT",
    "WAREHOUSE_URL",
    "AIRFLOW_API_URL",
    "METER_API_URL",
    "AIRFLOW_ADMIN_USER",
    "AIRFLOW_ADMIN_PASSWORD",
}

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    # Postgres runs as an unprivileged user: the directory must be reachable by everyone. Not under
    # pytest's basetemp: another pytest session of the same user resets that to mode 0700.
    path = Path(tempfile.mkdtemp(prefix="elt-stack-test-"))
    path.chmod(0o755)
    yield path
    runner(path, "down", **CELERY)  # whichever test ran last, nothing of this stack outlives the module
    shutil.rmtree(path, ignore_errors=True)


def runner(home: Path, command: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW__"))}
    # No cron-scheduled runs (as on the shared test stacks): a run the scheduler starts when the
    # clock passes a schedule tick would sync beside the runs these tests count.
    env.update(PORTS, STACK_HOME=str(home), STACK_HEALTH_TIMEOUT="600")
    env.update({"AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False", **extra})
    return subprocess.run(
        [sys.executable, "-m", "dev.stack", command],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def our_processes(home: Path) -> list[int]:
    marker = f"ELT_STACK_HOME={home.resolve()}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def ours(home: Path) -> list[int]:
    """Our processes by the marker, or by working directory (Airflow and Postgres rewrite environ)."""
    found = set(our_processes(home))
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if cwd == str(home.resolve()) or cwd.startswith(f"{home.resolve()}/"):
                found.add(int(entry.name))
    return sorted(found)


def service_pids(home: Path) -> dict[str, int]:
    pids = {f.stem: int(f.read_text().split()[0]) for f in (home / "run").glob("*.pid")}
    postmaster = home / "pg" / "data" / "postmaster.pid"
    if postmaster.exists():
        pids["postgres"] = int(postmaster.read_text().split()[0])
    return pids


def ancestors(pid: int) -> set[int]:
    chain = set()
    while pid > 1:
        chain.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return chain


def orphan_pids(home: Path) -> list[int]:
    """Our running processes that descend from no live service. A process that exits while this
    looks (a task's supervisor finishing) is not one: its ancestry reads as cut short."""
    live = set(service_pids(home).values())
    return [p for p in ours(home) if not ancestors(p) & live and is_running(p)]


def listeners(pids: list[int]) -> set[tuple[str, int]]:
    """(address, port) of the TCP sockets these processes listen on, from /proc/net/tcp{,6}."""
    inodes = {}
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                address, port = fields[1].split(":")
                found.add((address, int(port, 16)))
    return found


LOOPBACK = {"0100007F", "00000000000000000000000001000000"}


def test_port_taken_is_a_clear_error_and_starts_nothing(home: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", int(PORTS["STACK_AIRFLOW_PORT"])))
        blocker.listen()
        result = runner(home, "up")
    assert result.returncode != 0
    assert "port 18080 for airflow-api-server is already taken by another program" in result.stderr
    assert "STACK_AIRFLOW_PORT" in result.stderr
    assert our_processes(home) == []


def test_up_writes_a_usable_environment(home: Path) -> None:
    result = runner(home, "up")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "login admin /" in result.stdout
    env = read_stack_env(home / "stack.env")
    assert set(env) >= REQUIRED_KEYS
    with psycopg.connect(env["WAREHOUSE_URL"], connect_timeout=5) as conn:
        assert conn.execute("select inet_server_port()").fetchone() == (int(PORTS["STACK_PG_PORT"]),)
        conn.execute("create table if not exists keep_me (id int)")
        conn.execute("insert into keep_me values (42)")
    with urllib.request.urlopen(f"{env['AIRFLOW_API_URL']}/api/v2/monitor/health", timeout=10) as response:
        body = response.read().decode()
    assert body.count('"healthy"') >= 4, body
    listed = subprocess.run(
        [str(REPO / ".venv" / "bin" / "airflow"), "dags", "list", "-o", "plain"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    # Running `up` again while up is harmless, and does not migrate a database already migrated.
    again = runner(home, "up")
    assert again.returncode == 0, again.stderr
    assert "airflow db: at the revision of its last migrate" in again.stdout


SERVICES = (
    "airflow-scheduler",
    "airflow-triggerer",
    "airflow-api-server",
    "airflow-dag-processor",
    "airbyte",
    "meter-api",
    "alert-receivers",
    "postgres",
)


# Services killed together in one round: none needs another of its round to start, so each restarts
# as if it alone had died. `up` restarts the Airflow components that outlived a killed Postgres
# (the scheduler and triggerer here) with it: the round that kills Postgres also kills the other
# Airflow components, whose restart it includes anyway (one restart of the api-server, not two).
KILL_ROUNDS = (
    ("airflow-scheduler", "airflow-triggerer", "airbyte", "meter-api"),
    ("postgres", "airflow-dag-processor", "airflow-api-server", "alert-receivers"),
)


def owners(home: Path) -> dict[int, str]:
    """Each of our processes -> the service it descends from (the service's process itself included)."""
    services = {pid: name for name, pid in service_pids(home).items()}
    found = {}
    for pid in ours(home):
        owner = next((services[p] for p in ancestors(pid) if p in services), None)
        if owner:
            found[pid] = owner
    return found


def port_owners(home: Path) -> dict[tuple[str, int], str]:
    """(address, port) listened on -> the service whose process (or child) listens there."""
    return {listener: service for pid, service in owners(home).items() for listener in listeners([pid])}


def test_up_after_sigkill_of_any_service_leaves_no_orphans(home: Path) -> None:
    if runner(home, "status").returncode != 0:  # run alone: test_up_writes_a_usable_environment left it up
        assert runner(home, "up").returncode == 0
    assert {s for r in KILL_ROUNDS for s in r} == set(SERVICES)
    # Services spawn children after they report healthy (api-server workers): the baseline is what
    # listens once every service's port does and the set has not changed for three polls.
    expected = {int(port) for port in PORTS.values()}
    seen = [listeners(ours(home))]
    deadline = time.monotonic() + 60
    while not ({p for _, p in seen[-1]} >= expected and seen[-3:] == [seen[-1]] * 3):
        assert time.monotonic() < deadline, f"listening {sorted(seen[-1])}, expected ports {sorted(expected)}"
        time.sleep(2)
        seen.append(listeners(ours(home)))
    baseline, baseline_owners = seen[-1], port_owners(home)
    assert baseline and {address for address, _ in baseline} <= LOOPBACK, baseline
    for services in KILL_ROUNDS:
        pids = service_pids(home)
        before = owners(home)  # to name the service an orphan was left behind by
        killed = [pids[s] for s in services if s in pids]
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(is_running(p) for p in killed) and time.monotonic() < deadline:
            time.sleep(0.2)
        up = runner(home, "up")
        assert up.returncode == 0, f"up after killing {services}:\n{up.stdout}{up.stderr}"
        # A service that lost its database (postgres killed) restarts on its own; give each
        # listener up to a minute to come back before comparing.
        deadline = time.monotonic() + 60
        while True:
            orphans = {p: before.get(p, "?") for p in orphan_pids(home)}
            ports = listeners(ours(home))
            if (not orphans and ports == baseline) or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert orphans == {}, f"after killing {services}: orphans (pid: left by) {orphans}"
        assert {address for address, _ in ports} <= LOOPBACK, (services, ports)
        assert ports == baseline, (
            f"after killing {services}: missing "
            f"{sorted((p, baseline_owners.get(p, '?')) for p in baseline - ports)}, new {sorted(ports - baseline)}"
        )


def is_running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def test_down_leaves_nothing_and_up_again_keeps_data(home: Path) -> None:
    """Down, then up again, this time with STACK_EXECUTOR=celery (one restart serves both tests)."""
    down = runner(home, "down")
    assert down.returncode == 0, down.stderr
    assert our_processes(home) == []
    status = runner(home, "status")
    assert status.returncode == 1 and "stopped" in status.stdout
    # As after an upgrade of Airflow: the last migrate was by another version, so `up` migrates.
    marker = home / "airflow" / "db-migrated.json"
    migrated = json.loads(marker.read_text())
    assert [d for d in migrated["distributions"] if d.startswith("apache-airflow==")], migrated
    marker.write_text(json.dumps({**migrated, "distributions": ["apache-airflow==3.0.0"]}))
    up = runner(home, "up", **CELERY, ENERGY_END_DATE="2023-02-28")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "airflow db: at the revision" not in up.stdout
    assert json.loads(marker.read_text()) == migrated
    env = read_stack_env(home / "stack.env")
    with psycopg.connect(env["WAREHOUSE_URL"], connect_timeout=5) as conn:
        assert conn.execute("select id from keep_me").fetchall() == [(42,)]


def _celery_stack(home: Path) -> dict[str, str]:
    """The stack with STACK_EXECUTOR=celery (left up by test_down_leaves_nothing_and_up_again_keeps_data)."""
    if runner(home, "status", **CELERY).returncode != 0:  # run alone
        assert runner(home, "down").returncode == 0
        up = runner(home, "up", **CELERY, ENERGY_END_DATE="2023-02-28")
        assert up.returncode == 0, up.stdout + up.stderr
    return read_stack_env(home / "stack.env")


HEALTHCHECK = REPO / "dev" / "compose" / "healthcheck.py"


def test_the_compose_healthchecks_agree_with_airflow(home: Path) -> None:
    """dev/compose/healthcheck.py (the compose services' checks, without an Airflow import) says what
    `airflow jobs check --local` says of this stack's triggerer and dag-processor, and that its
    Celery workers answer a ping."""
    env = {**os.environ, **_celery_stack(home)}

    def ours(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(HEALTHCHECK), *args]
        return subprocess.run(command, env={**env, **extra}, capture_output=True, text=True, timeout=60)

    def airflows(job_type: str, *args: str) -> int:
        command = [str(REPO / ".venv" / "bin" / "airflow"), "jobs", "check", "--job-type", job_type, *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300).returncode

    for job_type in ("TriggererJob", "DagProcessorJob"):
        result = ours("job", job_type)
        assert (result.returncode, result.stdout, airflows(job_type, "--local")) == (0, "healthy\n", 0), (
            job_type,
            result.stdout + result.stderr,
        )
    # A host that runs no triggerer (`getpass.getuser` as the hostname callable names it "root" or so).
    elsewhere = ours("job", "TriggererJob", AIRFLOW__CORE__HOSTNAME_CALLABLE="getpass.getuser")
    assert elsewhere.returncode == 1 and "no running TriggererJob of host" in elsewhere.stdout, elsewhere
    assert airflows("TriggererJob", "--hostname", elsewhere.stdout.split()[-1]) == 1
    # A heartbeat older than the threshold is unhealthy.
    stale = ours("job", "TriggererJob", AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD="0.001")
    assert stale.returncode == 1 and "last heartbeat" in stale.stdout, stale

    logs = "".join((home / "logs" / f"airflow-worker-{n}.log").read_text() for n in (1, 2))
    nodes = sorted(set(re.findall(r"(worker\d@\S+) ready\.", logs)))
    assert len(nodes) == 2, logs[-2000:]
    for node in nodes:
        result = ours("celery", node)
        assert (result.returncode, result.stdout) == (0, "healthy\n"), (node, result.stdout + result.stderr)
    sys.path.insert(0, str(HEALTHCHECK.parent))
    try:
        from healthcheck import check_celery
    finally:
        sys.path.remove(str(HEALTHCHECK.parent))
    assert (
        check_celery("celery@no-such-worker", env, timeout=2)
        == "no reply from celery@no-such-worker to a Celery ping"
    )


def test_celery_executor_runs_a_pipeline_on_worker_processes(home: Path) -> None:
    """STACK_EXECUTOR=celery: Redis and two Celery worker processes instead of LocalExecutor (started
    so by test_down_leaves_nothing_and_up_again_keeps_data)."""
    env = _celery_stack(home)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    client = AirflowClient.from_env(env)
    client.wait_for_dags(["energy_meters"], timeout=300)
    run_id = client.trigger("energy_meters", logical_date=datetime(2023, 2, 12, tzinfo=UTC))
    client.unpause("energy_meters")
    run = client.wait_for_run("energy_meters", run_id, timeout=1200)
    assert run["state"] == "success", [
        (t["task_id"], t["state"]) for t in client.task_instances("energy_meters", run_id)
    ]
    worker_logs = "".join((home / "logs" / f"airflow-worker-{n}.log").read_text() for n in (1, 2))
    assert worker_logs.count("succeeded in") >= 2, worker_logs[-2000:]
    assert runner(home, "down", **CELERY).returncode == 0
    assert our_processes(home) == []


def test_stale_pid_file_is_reported_and_replaced(home: Path) -> None:
    runner(home, "down")
    pid_file = home / "run" / "airflow-triggerer.pid"
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text("999999 0")
    status = runner(home, "status")
    assert "airflow-triggerer: stale pid file" in status.stdout
    assert "pid 999999 is not running" in status.stdout
    assert not pid_file.exists()


def test_teardown(home: Path) -> None:
    runner(home, "down", **CELERY)
    assert our_processes(home) == []
