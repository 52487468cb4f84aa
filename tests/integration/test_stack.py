"""The stack runner on its own: a second stack in a temporary STACK_HOME on other ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import psycopg
import pytest

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
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Postgres runs as an unprivileged user: the directory must be reachable by everyone.
    path = tmp_path_factory.mktemp("stack")
    for parent in [path, *path.parents]:
        if parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o055)
    return path


def runner(home: Path, command: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **PORTS, "STACK_HOME": str(home), **extra}
    for key in list(env):
        if key.startswith(("AIRFLOW_CONN_", "AIRFLOW__")):
            env.pop(key)
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
    # Running `up` again while up is harmless.
    again = runner(home, "up")
    assert again.returncode == 0, again.stderr


def test_down_leaves_nothing_and_up_again_keeps_data(home: Path) -> None:
    down = runner(home, "down")
    assert down.returncode == 0, down.stderr
    assert our_processes(home) == []
    status = runner(home, "status")
    assert status.returncode == 1 and "stopped" in status.stdout
    up = runner(home, "up")
    assert up.returncode == 0, up.stderr
    env = read_stack_env(home / "stack.env")
    with psycopg.connect(env["WAREHOUSE_URL"], connect_timeout=5) as conn:
        assert conn.execute("select id from keep_me").fetchall() == [(42,)]


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
    runner(home, "down")
    assert our_processes(home) == []
