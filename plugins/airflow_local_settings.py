"""Airflow's local-settings hook: every Airflow process imports it once at start-up.

A process that forks a task runner per task (the scheduler with LocalExecutor, a Celery worker)
imports the pipelines' DAG factory here, before it forks. Each runner then inherits Cosmos, the
providers and `elt` instead of importing them again to parse its DAG file: about 0.5 s of CPU per
task, and a pipeline run starts 30 to 40 tasks (watcher model tasks run twice: defer, resume).
`benchmarks/pipeline_cpu.py` prints where a run's CPU goes.

Other processes (api-server, dag-processor, triggerer, CLI commands, the runners) import nothing.
"""

from __future__ import annotations

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
    import elt.dag_factory  # noqa: F401
