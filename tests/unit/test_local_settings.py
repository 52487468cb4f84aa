"""plugins/airflow_local_settings.py: which Airflow processes pre-import the DAG factory before forking."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from airflow_local_settings import forks_dag_code_runners, forks_task_runners

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
        (["airflow", "dag-processor"], "LocalExecutor", True),  # forks a parse per DAG file
        (["airflow", "dag-processor"], "CeleryExecutor", True),
        (["airflow", "triggerer"], "LocalExecutor", False),
        (["airflow", "dags", "list"], "LocalExecutor", False),
        (["airflow", "tasks", "test", "scheduler"], "LocalExecutor", False),
        (["python", "-c"], "LocalExecutor", False),
        ([], "LocalExecutor", False),
    ],
)
def test_only_processes_that_fork_dag_code_runners_pre_import(argv, executor, expected) -> None:
    assert forks_dag_code_runners(argv, executor) is expected


@pytest.mark.parametrize(
    ("argv", "executor", "expected"),
    [
        (["airflow", "scheduler"], "LocalExecutor", True),
        (["airflow", "scheduler"], "CeleryExecutor", False),
        (["airflow", "celery", "worker"], "CeleryExecutor", True),
        (["airflow", "dag-processor"], "LocalExecutor", False),  # parses DAG files, runs no dbt
        (["airflow", "triggerer"], "LocalExecutor", False),
        (["airflow", "dags", "list"], "LocalExecutor", False),
    ],
)
def test_only_processes_that_fork_task_runners_pre_import_dbt(argv, executor, expected) -> None:
    assert forks_task_runners(argv, executor) is expected


def _imported_in(argv: list[str], *modules: str) -> list[str]:
    code = f"import sys; sys.argv = {argv!r}; import airflow_local_settings; " + "; ".join(
        f"print({m!r} in sys.modules)" for m in modules
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PLUGINS
    )
    return out.stdout.split()[-len(modules) :]


MODULES = ("elt.dag_factory", "cosmos.converter", "dbt.cli.main", "dbt.adapters.postgres")


def test_what_each_process_imports_at_start_up() -> None:
    """The scheduler's task runners inherit the DAG code and dbt; the dag-processor's parses the DAG
    code only (they never run dbt); a CLI command nothing."""
    assert _imported_in(["airflow", "scheduler"], *MODULES) == ["True"] * 4
    assert _imported_in(["airflow", "dag-processor"], *MODULES) == ["True", "True", "False", "False"]
    assert _imported_in(["airflow", "dags", "list"], *MODULES) == ["False"] * 4


def test_a_failing_pre_import_warns_and_lets_the_scheduler_start(tmp_path) -> None:
    """A broken `elt` must not keep the scheduler from starting: its runners show the DAG's import error."""
    (tmp_path / "elt").mkdir()
    (tmp_path / "elt" / "__init__.py").write_text("")
    (tmp_path / "elt" / "dag_factory.py").write_text("raise RuntimeError('broken on purpose')\n")
    code = (
        f"import sys; sys.path[:0] = [{str(tmp_path)!r}, {str(PLUGINS)!r}]; sys.argv = ['airflow', 'scheduler']; "
        "import airflow_local_settings; print('started')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1:] == ["started"]
    assert "pre-import of elt.dag_factory failed" in out.stdout + out.stderr
    assert "RuntimeError: broken on purpose" in out.stdout + out.stderr
