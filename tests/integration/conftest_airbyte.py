"""Fixtures for the local Airbyte server tests (imported by test_local_airbyte.py).

Two modes:
- the running stack: when AIRFLOW_CONN_AIRBYTE_DEFAULT and WAREHOUSE_URL are set (the stack
  runner sources .local/stack.env), the tests use that server and warehouse;
- standalone: otherwise `_standalone_server` starts a throwaway Postgres and its own server
  (own port, own state dir, own databases), and tears both down afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

REPO = Path(__file__).resolve().parents[2]
AIRBYTE_PYTHON = REPO / ".venv-airbyte" / "bin" / "python"
ECOMMERCE = "c19e6614-68eb-489d-94b1-58e56dfa934e"
ENERGY = "4d2f7268-e2ac-4fa7-a3a6-97286f22d617"

# Standalone mode only: a throwaway Postgres (see /tmp/devpg.sh) and small faker volumes.
DEVPG_SCRIPT = Path("/tmp/devpg.sh")
DEVPG_PG_CTL = Path("/tmp/try/.venv/lib/python3.11/site-packages/pgserver/pginstall/bin/pg_ctl")
DEVPG_PORT, DEVPG_DATA = 56010, Path("/tmp/abpg")
STANDALONE_FAKER_COUNT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    """A local Airbyte server this test session started (so tests may kill and restart it)."""

    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.env['LOCAL_AIRBYTE_PORT']}"

    def start(self, timeout: float = 90) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(AIRBYTE_PYTHON), "-m", "dev.airbyte_server"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"local Airbyte server exited; see {self.log_path}")
            try:
                if httpx.get(f"{self.base_url}/api/public/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"local Airbyte server not healthy after {timeout}s; see {self.log_path}")

    def kill(self) -> None:
        """SIGKILL, like a crash: no shutdown hooks run."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class LocalAirbyte:
    base_url: str  # http://host:port (no API prefix)
    warehouse_url: str
    server: ServerProcess | None = None  # None when using the running stack
    _http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    def local(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call the server's /local endpoints (faults, job details); raises on HTTP errors."""
        response = self._http.request(method, f"{self.base_url}/local{path}", json=body)
        response.raise_for_status()
        return response.json() if "json" in response.headers.get("content-type", "") else response.text

    def warehouse(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.warehouse_url, autocommit=True)


def _airbyte_conn(base_url: str, client_id: str, client_secret: str) -> str:
    return json.dumps(
        {
            "conn_type": "airbyte",
            "host": f"{base_url}/api/public/v1/",
            "login": client_id,
            "password": client_secret,
            "schema": "/api/public/v1/applications/token",
            "extra": {"timeout": 30},
        }
    )


@pytest.fixture(scope="session")
def _standalone_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalAirbyte]:
    if not DEVPG_SCRIPT.exists() or not AIRBYTE_PYTHON.exists():
        pytest.skip(f"standalone mode needs {DEVPG_SCRIPT} and {AIRBYTE_PYTHON}")
    started_pg = not (DEVPG_DATA / "postmaster.pid").exists()
    if started_pg:
        subprocess.run(["bash", str(DEVPG_SCRIPT), str(DEVPG_PORT), str(DEVPG_DATA)], check=True)
    admin = f"postgresql://postgres:postgres@127.0.0.1:{DEVPG_PORT}/postgres"
    suffix = f"{os.getpid()}"
    warehouse_db, state_db = f"ab_warehouse_{suffix}", f"ab_state_{suffix}"
    with psycopg.connect(admin, autocommit=True) as conn:
        for db in (warehouse_db, state_db):
            conn.execute(f"DROP DATABASE IF EXISTS {db}")
            conn.execute(f"CREATE DATABASE {db}")

    tmp = tmp_path_factory.mktemp("local-airbyte")
    port = free_port()
    env = {
        **os.environ,
        "LOCAL_AIRBYTE_HOST": "127.0.0.1",
        "LOCAL_AIRBYTE_PORT": str(port),
        "LOCAL_AIRBYTE_DB_URL": f"postgresql://postgres:postgres@127.0.0.1:{DEVPG_PORT}/{state_db}",
        "LOCAL_AIRBYTE_CLIENT_ID": "test-client",
        "LOCAL_AIRBYTE_CLIENT_SECRET": "test-secret",
        # Connector venvs are shared across runs to save the install; job state is per run.
        "LOCAL_AIRBYTE_STATE_DIR": str(REPO / ".local" / "airbyte-tests"),
        "WAREHOUSE_HOST": "127.0.0.1",
        "WAREHOUSE_PORT": str(DEVPG_PORT),
        "WAREHOUSE_USER": "postgres",
        "WAREHOUSE_PASSWORD": "postgres",
        "WAREHOUSE_DB": warehouse_db,
        "METER_API_URL": os.environ.get("METER_API_URL", "http://127.0.0.1:8010"),
        "FAKER_COUNT": str(STANDALONE_FAKER_COUNT),
        "DO_NOT_TRACK": "1",
        "AIRBYTE_OFFLINE_MODE": "1",
    }
    server = ServerProcess(env=env, log_path=tmp / "server.log")
    server.start()
    saved = os.environ.get("AIRFLOW_CONN_AIRBYTE_DEFAULT")
    os.environ["AIRFLOW_CONN_AIRBYTE_DEFAULT"] = _airbyte_conn(server.base_url, "test-client", "test-secret")
    try:
        yield LocalAirbyte(
            base_url=server.base_url,
            warehouse_url=f"postgresql://postgres:postgres@127.0.0.1:{DEVPG_PORT}/{warehouse_db}",
            server=server,
        )
    finally:
        server.stop()
        if saved is None:
            os.environ.pop("AIRFLOW_CONN_AIRBYTE_DEFAULT", None)
        else:
            os.environ["AIRFLOW_CONN_AIRBYTE_DEFAULT"] = saved
        if started_pg:
            subprocess.run(
                ["runuser", "-u", "nobody", "--", str(DEVPG_PG_CTL), "-D", str(DEVPG_DATA), "stop"],
                check=False,
            )


@pytest.fixture(scope="session")
def local_airbyte(request: pytest.FixtureRequest) -> LocalAirbyte:
    conn = os.environ.get("AIRFLOW_CONN_AIRBYTE_DEFAULT")
    warehouse_url = os.environ.get("WAREHOUSE_URL")
    if conn and warehouse_url:
        host = json.loads(conn)["host"]
        # SQLAlchemy-style URLs (postgresql+psycopg2://) are fine for psycopg without the driver.
        plain_url = "postgresql://" + warehouse_url.split("://", 1)[1]
        return LocalAirbyte(base_url=host.split("/api/public/v1")[0], warehouse_url=plain_url)
    return request.getfixturevalue("_standalone_server")


@pytest.fixture(autouse=True)
def _no_leftover_faults(local_airbyte: LocalAirbyte) -> Iterator[None]:
    local_airbyte.local("DELETE", "/faults")
    yield
    local_airbyte.local("DELETE", "/faults")
