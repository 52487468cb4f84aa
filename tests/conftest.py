"""Session-wide fixtures: the live local stack (started on demand) and an Airflow REST client."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins")]

# Parsing DAGs in tests must not need a database or the network.
os.environ.setdefault("AIRFLOW__COSMOS__ENABLE_TELEMETRY", "False")
os.environ.setdefault("AIRFLOW__COSMOS__ENABLE_CACHE_DBT_YAML_SELECTORS", "False")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
# Stacks started by the tests sync February 2023 only (the dates the tests check), not every
# day up to yesterday: the energy connector's end_date (include/airbyte/workspace.yaml).
os.environ.setdefault("ENERGY_END_DATE", "2023-02-28")
# Airflow's own files for in-process use (DagBag, hooks) stay out of the user's home.
os.environ.setdefault("AIRFLOW_HOME", str(REPO / ".local" / "pytest-airflow-home"))

from dev.airflow_client import AirflowClient  # noqa: E402


def read_stack_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


def _stack_home() -> Path:
    return Path(os.environ.get("STACK_HOME", REPO / ".local")).resolve()


@pytest.fixture(scope="session")
def stack() -> dict[str, str]:
    """The running local stack's environment (`.local/stack.env`), starting the stack if needed.

    A stack this fixture started is stopped at the end of the session (KEEP_STACK=1 keeps it);
    a stack that was already up is left running.
    """
    python = sys.executable
    already_up = (
        subprocess.run([python, "-m", "dev.stack", "status"], cwd=REPO, capture_output=True).returncode == 0
    )
    if not already_up:
        subprocess.run([python, "-m", "dev.stack", "up"], cwd=REPO, check=True)
    env = read_stack_env(_stack_home() / "stack.env")
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if not already_up and os.environ.get("KEEP_STACK") != "1":
        subprocess.run([python, "-m", "dev.stack", "down"], cwd=REPO, check=False)


@pytest.fixture(scope="session")
def airflow(stack: dict[str, str]) -> AirflowClient:
    return AirflowClient.from_env(stack)
