"""Airflow's local-settings hook: every Airflow process imports it once at start-up.

A process that forks a task runner per task (the scheduler with LocalExecutor, a Celery worker)
imports the pipelines' DAG factory here, before it forks, so each runner inherits Cosmos, the
providers and `elt` instead of importing them again to parse its DAG file. Measured with
`benchmarks/pipeline_cpu.py energy_meters --runs 3`: an energy run's task runners cost 16.6-18.2
CPU-seconds with it, 19.8-20.9 without (runs after the first since start-up).

Other processes (api-server, dag-processor, triggerer, CLI commands, the runners) import nothing.
If the import fails, the process starts anyway (with a warning): each runner then imports the DAG
file itself, and the error shows where it belongs, as the DAG's import error.
"""

from __future__ import annotations

import logging
import sys

from airflow.configuration import conf

__all__: list[str] = []  # no cluster policies: Airflow reads policies from the public names here


def forks_task_runners(argv: list[str], executor: str) -> bool:
    """Whether the process started as `argv` forks a task runner per task."""
    args = [arg for arg in argv[1:] if not arg.startswith("-")]
    if args[:2] == ["celery", "worker"]:
        return True
    return args[:1] == ["scheduler"] and "LocalExecutor" in executor


if forks_task_runners(sys.argv, conf.get("core", "executor", fallback="LocalExecutor")):
    try:
        import elt.dag_factory  # noqa: F401
    except Exception as error:  # never keep the scheduler or a worker from starting
        logging.getLogger(__name__).warning(
            "airflow_local_settings: pre-import of elt.dag_factory failed, task runners will import it "
            "themselves: %s: %s",
            type(error).__name__,
            error,
        )
