"""The asset graph the DAG factory declares: Airbyte stream -> dbt staging -> intermediate -> marts.

Expected edges are written out from the dbt project's SQL (which model selects from which source
or ref), not derived from the manifest the code under test reads.
"""

from __future__ import annotations

import pytest
from airflow.sdk import Asset

from elt.dag_factory import dag_from_spec
from elt.spec import load_spec, spec_files

ENERGY_EDGES = {  # model task -> the tables it reads
    "stg_energy_meters__muid_1": {"raw_energy/muid_1"},
    "stg_energy_meters__muid_2": {"raw_energy/muid_2"},
    "int_energy_readings_unpivoted": {
        "analytics_staging/stg_energy_meters__muid_1",
        "analytics_staging/stg_energy_meters__muid_2",
    },
    "fct_energy_daily": {"analytics_intermediate/int_energy_readings_unpivoted"},
}
ENERGY_OUTPUTS = {
    "stg_energy_meters__muid_1": "analytics_staging/stg_energy_meters__muid_1",
    "int_energy_readings_unpivoted": "analytics_intermediate/int_energy_readings_unpivoted",
    "fct_energy_daily": "analytics_marts/fct_energy_daily",
    "dim_meters": "analytics_marts/dim_meters",
}


def tables(assets: list) -> set[str]:
    return {"/".join(a.uri.split("/")[-2:]) for a in assets if isinstance(a, Asset)}


def model_task_id(execution: str, model: str) -> str:
    return f"dbt.{model}.run" if execution == "watcher" else f"dbt.{model}_model_build"


@pytest.mark.parametrize("execution", ["watcher", "per_model"])
def test_streams_feed_staging_and_models_feed_marts(execution: str) -> None:
    spec = load_spec(next(p for p in spec_files() if p.stem == "energy_meters"))
    dag = dag_from_spec(spec.model_copy(update={"dbt": spec.dbt.model_copy(update={"execution": execution})}))

    for model, reads in ENERGY_EDGES.items():
        assert reads <= tables(dag.get_task(model_task_id(execution, model)).inlets), model
    for model, table in ENERGY_OUTPUTS.items():
        assert tables(dag.get_task(model_task_id(execution, model)).outlets) == {table}, model

    # The stream assets the Airbyte wait publishes are the very assets the staging tasks consume.
    wait_outlets = {a.uri for a in dag.get_task("airbyte_energy.wait").outlets}
    staging_inlets = {
        a.uri
        for model in ("stg_energy_meters__muid_1", "stg_energy_meters__muid_2")
        for a in dag.get_task(model_task_id(execution, model)).inlets
    }
    assert wait_outlets == staging_inlets
    # dbt tests produce nothing: only models do.
    assert all(
        not tables(t.outlets)
        for t in dag.tasks
        if t.task_id.endswith(("test", ".test")) and "dbt." in t.task_id
    )
