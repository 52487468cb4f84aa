"""plugins/airflow_local_settings.py: which Airflow processes pre-import the DAG factory before forking."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from airflow_local_settings import forks_task_runners

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


@pytest.mark.parametrize(
    ("argv", "executor", "expected"),
    [
        (["airflow", "scheduler"], "LocalExecutor", True),
        (["/venv/bin/airflow", "scheduler", "--num-runs", "5"], "LocalExecutor", True),
        (["airflow", "scheduler"], "CeleryExecutor", False),  # Celery workers run the tasks
        (["airflow", "celery", "worker", "--concurrency", "4"], "CeleryExecutor", True),
        (["airflow", "celery", "flower"], "CeleryExecutor", False),
        (["airflow", "api-server"], "LocalExecutor", False),
        (["airflow", "dag-processor"], "LocalExecutor", False),
        (["airflow", "triggerer"], "LocalExecutor", False),
        (["airflow", "dags", "list"], "LocalExecutor", False),
        (["airflow", "tasks", "test", "scheduler"], "LocalExecutor", False),
        (["python", "-c"], "LocalExecutor", False),
        ([], "LocalExecutor", False),
    ],
)
def test_only_processes_that_fork_task_runners_pre_import(argv, executor, expected) -> None:
    assert forks_task_runners(argv, executor) is expected


def test_importing_it_in_a_cli_process_imports_no_dag_code() -> None:
    """A CLI command imports no DAG code at start-up; the scheduler does (what its runners inherit)."""

    code = (
        "import sys; sys.argv = ['airflow', 'dags', 'list']; import airflow_local_settings; "
        "print('elt.dag_factory' in sys.modules, 'cosmos.converter' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PLUGINS
    )
    assert out.stdout.split()[-2:] == ["False", "False"]
    code = code.replace("'dags', 'list'", "'scheduler'")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PLUGINS
    )
    assert out.stdout.split()[-2:] == ["True", "True"]
