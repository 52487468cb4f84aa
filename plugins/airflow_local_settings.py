"""Airflow's local-settings hook: every Airflow process imports it once at start-up.

A process that forks a child per task or per DAG file parse (the scheduler with LocalExecutor, a
Celery worker, the dag-processor) imports the pipelines' DAG factory here, before it forks, so each
child inherits Cosmos, the providers and `elt` instead of importing them again to parse its DAG
file. Measured with `benchmarks/pipeline_cpu.py energy_meters --runs 3`: an energy run's task
runners cost 16.6-18.2 CPU-seconds with it, 19.8-20.9 without (runs after the first since
start-up); `benchmarks/pipeline_cpu.py --idle 120`: the dag-processor's re-parses 1.7 CPU-seconds
per 2 minutes with it, 2.4 without.

The processes that fork a child per task (not the dag-processor) also import dbt: the tasks that
run dbt in-process (`source_freshness`) then skip ~2 CPU-seconds of imports each.

So, as with Airflow plugins, a change to `plugins/elt` takes effect once these processes restart
(`make down up`); a change to a spec, a DAG file or the dbt project does not need one.

Other processes (api-server, triggerer, CLI commands, the children) import nothing. If the import
fails, the process starts anyway (with a warning): each child then imports the DAG file itself,
and the error shows where it belongs, as the DAG's import error.
"""

from __future__ import annotations

import importlib
import logging
import sys

from airflow.configuration import conf

__all__: list[str] = []  # no cluster policies: Airflow reads policies from the public names here


def forks_dag_code_runners(argv: list[str], executor: str) -> bool:
    """Whether the process started as `argv` forks a child per task or per DAG file parse."""
    args = [arg for arg in argv[1:] if not arg.startswith("-")]
    if args[:2] == ["celery", "worker"] or args[:1] == ["dag-processor"]:
        return True
    return args[:1] == ["scheduler"] and "LocalExecutor" in executor


def forks_task_runners(argv: list[str], executor: str) -> bool:
    """Whether the process started as `argv` forks a child per task (not only per DAG file parse)."""
    args = [arg for arg in argv[1:] if not arg.startswith("-")]
    return forks_dag_code_runners(argv, executor) and args[:1] != ["dag-processor"]


def _pre_import(module: str) -> None:
    try:
        importlib.import_module(module)
    except Exception as error:  # never keep the scheduler or a worker from starting
        logging.getLogger(__name__).warning(
            "airflow_local_settings: pre-import of %s failed, task runners will import it themselves: %s: %s",
            module,
            type(error).__name__,
            error,
        )


_EXECUTOR = conf.get("core", "executor", fallback="LocalExecutor")
if forks_dag_code_runners(sys.argv, _EXECUTOR):
    _pre_import("elt.dag_factory")
if forks_task_runners(sys.argv, _EXECUTOR):
    # dbt itself, for the tasks that run it in-process (source freshness, a model task's own
    # `dbt build` when the producer did not run): ~2 CPU-seconds of imports each, once here instead.
    # The watcher producer's `dbt build` is a subprocess and imports it anyway.
    _pre_import("dbt.cli.main")
    _pre_import("dbt.adapters.postgres")
