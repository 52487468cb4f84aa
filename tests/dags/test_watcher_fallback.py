"""Watcher mode after the producer dies: each model task falls back to its own dbt command, in the
order of the Airflow graph. Every test such a fallback runs must find all the models it reads built.

The oracle is dbt's manifest (which tests read which models), not Cosmos's rendering of it.
"""

from __future__ import annotations

import json

import pytest

from elt import paths

MANIFEST = json.loads(paths.DBT_MANIFEST.read_text())
MODEL_TESTS = [
    node
    for node in MANIFEST["nodes"].values()
    if node["resource_type"] == "test"
    and sum(uid.startswith("model.") for uid in node["depends_on"]["nodes"]) > 1
]


def _model_tasks(dag) -> dict[str, tuple]:
    """model name -> (run task, test task) for the dbt group's watcher consumers."""
    tasks = {}
    for task in dag.tasks:
        if task.task_id.startswith("dbt.") and task.task_id.endswith(".test"):
            model = task.task_id.split(".")[1]
            run = dag.task_dict.get(f"dbt.{model}.run")
            if run is not None:
                tasks[model] = (run, task)
    return tasks


def _excluded(task) -> set[str]:
    exclude = task.exclude or ""
    return set(exclude.split() if isinstance(exclude, str) else exclude)


@pytest.mark.parametrize("dag_id", ["ecommerce_sales", "energy_meters"])
def test_each_multi_model_test_runs_once_after_all_its_models(dagbag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    tasks = _model_tasks(dag)
    checked = 0
    for test in MODEL_TESTS:
        models = [uid.split(".")[-1] for uid in test["depends_on"]["nodes"] if uid.startswith("model.")]
        if not all(model in tasks for model in models):
            continue
        # `dbt test --select <model>` selects every test of the model (eager): those not excluded run.
        runners = [m for m in models if test["name"] not in _excluded(tasks[m][1])]
        assert len(runners) == 1, f"{dag_id}: {test['name']} runs in the test tasks of {runners}"
        upstream = tasks[runners[0]][1].get_flat_relative_ids(upstream=True)
        missing = [m for m in models if tasks[m][0].task_id not in upstream]
        assert not missing, (
            f"{dag_id}: {test['name']} runs in dbt.{runners[0]}.test before {missing} are built"
        )
        checked += 1
    assert checked, f"{dag_id}: no test reads two models; the check checked nothing"
