"""Fixtures for the local Airbyte server tests (imported by test_local_airbyte.py).

They use the live local stack (the session fixture `stack` starts it when needed); the
crash test kills the stack's Airbyte server and lets the stack runner start it again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from airflow.providers.airbyte.hooks.airbyte import AirbyteHook

from dev.stack.procs import is_alive
from elt.airbyte import list_jobs

REPO = Path(__file__).resolve().parents[2]
ECOMMERCE = "c19e6614-68eb-489d-94b1-58e56dfa934e"
ENERGY = "4d2f7268-e2ac-4fa7-a3a6-97286f22d617"


@dataclass
class StackServer:
    """The stack's Airbyte server process, for the crash test."""

    stack_home: Path

    def kill(self) -> None:
        """SIGKILL, like a crash: no shutdown hooks run."""
        pid = int((self.stack_home / "run" / "airbyte.pid").read_text().split()[0])
        os.killpg(pid, signal.SIGKILL)

    def start(self) -> None:
        subprocess.run([sys.executable, "-m", "dev.stack", "up"], cwd=REPO, check=True, capture_output=True)

    def terminate(self, timeout: float = 30) -> str:
        """SIGTERM, as `dev.stack down` stops it, then SIGKILL after `timeout`; return what it logged."""
        log = self.stack_home / "logs" / "airbyte.log"
        seen = log.stat().st_size
        pid = int((self.stack_home / "run" / "airbyte.pid").read_text().split()[0])
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while is_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if is_alive(pid):  # as `dev.stack down` does after its wait
            os.killpg(pid, signal.SIGKILL)
        with log.open("rb") as handle:
            handle.seek(seen)
            return handle.read().decode(errors="replace")


@dataclass
class LocalAirbyte:
    base_url: str  # http://host:port (no API prefix)
    warehouse_url: str
    server: StackServer
    _http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    def local(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Call the server's /local endpoints (faults, job details); raises on HTTP errors."""
        response = self._http.request(method, f"{self.base_url}/local{path}", json=body)
        response.raise_for_status()
        return response.json() if "json" in response.headers.get("content-type", "") else response.text

    def warehouse(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.warehouse_url, autocommit=True)


@pytest.fixture(scope="session")
def local_airbyte(stack: dict[str, str]) -> LocalAirbyte:
    host = json.loads(stack["AIRFLOW_CONN_AIRBYTE_DEFAULT"])["host"]
    return LocalAirbyte(
        base_url=host.split("/api/public/v1")[0],
        warehouse_url=stack["WAREHOUSE_URL"],
        server=StackServer(Path(stack["STACK_HOME"])),
    )


def cancel_unfinished_jobs(hook: AirbyteHook) -> list[int]:
    """Cancel the pending and running syncs of the stack's connections; return their ids."""
    cancelled = []
    for connection_id in (ECOMMERCE, ENERGY):
        for job in list_jobs(hook, connection_id, limit=20):
            if job.status.value in ("pending", "running"):
                hook.cancel_job(job.job_id)
                cancelled.append(job.job_id)
    return cancelled


@pytest.fixture
def no_job_left_running(local_airbyte: LocalAirbyte) -> Iterator[None]:
    """After the test, cancel the syncs it left pending or running. A test that fails mid-sync
    would otherwise leave its connection busy, and the next tests' submits would get HTTP 409."""
    yield
    if cancelled := cancel_unfinished_jobs(AirbyteHook("airbyte_default", timeout=30)):
        print(f"cancelled jobs left pending or running: {cancelled}")


@pytest.fixture(autouse=True)
def _no_leftover_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests on the shared stack start and end with no fault armed in its local Airbyte.

    `pytest_plugins` registers this module for the whole session, so this runs for every test:
    only those that use the shared stack (`stack`) touch it. Asking for `local_airbyte` here made
    every test start its worker's shared stack, even unit tests and modules that run their own
    (test_stack, test_alerting_e2e): an idle stack beside them all along.
    """
    if "stack" not in request.fixturenames:
        yield
        return
    local_airbyte: LocalAirbyte = request.getfixturevalue("local_airbyte")
    local_airbyte.local("DELETE", "/faults")
    yield
    local_airbyte.local("DELETE", "/faults")
