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

# Modules by measured duration, longest first (`--durations`, make test on 2 cores). make test
# runs pytest-xdist with --no-loadscope-reorder, so workers take modules in this order: a long
# module started last would leave one worker busy alone at the end (xdist's own order is by
# number of tests, which put these last).
LONGEST_MODULES_FIRST = [
    "test_stack.py",
    "test_ui_browser.py",
    "test_alerting_e2e.py",
    "test_stack_kills.py",
    "test_backfill.py",
    "test_pipelines_e2e.py",
    "test_scaffold_in_a_copy.py",
    "test_energy_connector.py",
    "test_local_airbyte.py",
    "test_dbt_project.py",
    "test_airbyte_tasks.py",
    "test_marts_api.py",
    "test_meter_api.py",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a module kept


def read_stack_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            env[key] = shlex.split(value)[0] if value else ""
    return env


def worker_stack_settings(worker: str | None = None) -> dict[str, str]:
    """STACK_HOME and ports of this xdist worker's stack; none for a plain run or the first worker.

    make test runs `pytest -n N --dist loadfile`: a module's tests stay on one worker, in order,
    and each worker that runs a module on the shared stack starts a stack of its own. (Modules
    like test_alerting_e2e start their own stacks on fixed ports, as before.) Not loadgroup:
    pytest 9.2 ignores its groups (pytest-dev/pytest-xdist#1386).

    The first worker (and a run without -n) uses `.local` and the default ports, so a stack
    started by `make up` is reused. The others get `.local-pytest/gwN` (not under `.local`: a
    stack counts the processes working under its home as its own) and ports below Linux's
    ephemeral range (32768-60999), apart from every fixed port the tests use.
    """
    worker = worker or os.environ.get("PYTEST_XDIST_WORKER") or "gw0"
    n = int(worker.removeprefix("gw") or 0)
    if n == 0:
        return {}
    return {
        "STACK_HOME": str(REPO / ".local-pytest" / worker),
        "STACK_PG_PORT": str(25440 + n),
        "STACK_REDIS_PORT": str(26380 + n),
        "STACK_AIRBYTE_PORT": str(28000 + 10 * n),
        "STACK_METER_PORT": str(28001 + 10 * n),
        "STACK_RECEIVERS_HTTP_PORT": str(28002 + 10 * n),
        "STACK_RECEIVERS_SMTP_PORT": str(28003 + 10 * n),
        "STACK_AIRFLOW_PORT": str(28100 + 10 * n),  # and +713..+715 (log servers, health)
    }


# Whatever this worker starts (`dev.stack up`, a restart of one service) finds its own stack.
os.environ.update(worker_stack_settings())


def _stack_home() -> Path:
    home = worker_stack_settings().get("STACK_HOME") or os.environ.get("STACK_HOME", REPO / ".local")
    return Path(home).resolve()


@pytest.fixture(scope="session")
def stack() -> dict[str, str]:
    """The running local stack's environment (`.local/stack.env`), starting the stack if needed.

    A stack this fixture started is stopped at the end of the session (KEEP_STACK=1 keeps it);
    a stack that was already up is left running. Under xdist, each worker has its own stack.
    """
    python = sys.executable
    # No cron-scheduled runs on a stack the tests start: unpausing a catchup=False DAG would
    # start a run of its latest interval (a real sync and dbt build nobody checks) beside the
    # tests' own runs. Manual runs and backfills run as usual.
    run_env = {**os.environ, **worker_stack_settings(), "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"}
    already_up = (
        subprocess.run(
            [python, "-m", "dev.stack", "status"], cwd=REPO, env=run_env, capture_output=True
        ).returncode
        == 0
    )
    if not already_up:
        subprocess.run([python, "-m", "dev.stack", "up"], cwd=REPO, env=run_env, check=True)
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
        subprocess.run([python, "-m", "dev.stack", "down"], cwd=REPO, env=run_env, check=False)


@pytest.fixture(scope="session")
def airflow(stack: dict[str, str]) -> AirflowClient:
    return AirflowClient.from_env(stack)
