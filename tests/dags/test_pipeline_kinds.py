"""DAGs of pipelines that are not Airbyte + dbt: dbt only (following another pipeline's streams), Airbyte only."""

from __future__ import annotations

from pathlib import Path

import yaml

from elt.dag_factory import dag_from_spec
from elt.spec import parse_spec

REPO = Path(__file__).resolve().parents[2]
ENERGY = yaml.safe_load((REPO / "include" / "pipelines" / "energy_meters.yaml").read_text())


def build(tmp_path: Path, name: str, **changes: object):
    data = {key: value for key, value in ENERGY.items() if key != "name"}
    data.update(changes)
    for key in [k for k, v in changes.items() if v is None and k in ("airbyte", "dbt")]:
        del data[key]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return dag_from_spec(parse_spec(path))


def test_dbt_only_pipeline_follows_another_pipelines_streams(tmp_path: Path) -> None:
    energy = build(tmp_path, "energy_meters")
    marts = build(
        tmp_path,
        "energy_marts",
        airbyte=None,
        schedule=None,
        trigger_on_assets=["raw_energy.muid_1", "raw_energy.muid_2"],
    )
    published = {asset.uri for asset in energy.get_task("airbyte_energy.wait").outlets}
    assert {asset.uri for asset in marts.timetable.asset_condition.objects} == published
    assert not [t for t in marts.task_ids if t.startswith("airbyte_")]
    assert [t for t in marts.task_ids if t.startswith("dbt.")]
    assert "Runs when all of these assets are updated" in marts.doc_md


def test_airbyte_only_pipeline_and_paused_false(tmp_path: Path) -> None:
    dag = build(tmp_path, "energy_raw", dbt=None, paused=False)
    assert sorted(dag.task_ids) == ["airbyte_energy.sync", "airbyte_energy.wait"]
    assert dag.is_paused_upon_creation is False


def test_new_dags_start_paused_by_default(tmp_path: Path) -> None:
    assert build(tmp_path, "energy_meters").is_paused_upon_creation is None  # Airflow's default: paused


def test_every_task_that_runs_dbt_runs_it_without_its_debug_log_file(tmp_path: Path) -> None:
    """dbt's debug log file lands in the project copy Cosmos deletes after the run: not written."""
    from cosmos.operators.local import DbtLocalBaseOperator

    dag = build(tmp_path, "energy_meters")
    runs_dbt = {t.task_id: t for t in dag.tasks if isinstance(t, DbtLocalBaseOperator)}
    assert {"source_freshness", "dbt.dbt_producer_watcher", "dbt.fct_energy_daily.run"} <= set(runs_dbt)
    assert {task_id for task_id, t in runs_dbt.items() if t.env.get("DBT_LOG_LEVEL_FILE") != "none"} == set()
