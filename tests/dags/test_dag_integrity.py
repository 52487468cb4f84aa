"""Every DAG file parses, with no connections, variables or services, and follows the house rules."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

from elt.spec import OWNERS, TAGS, spec_files

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def dagbag() -> DagBag:
    return DagBag(dag_folder=str(REPO / "dags"))


def test_no_import_errors(dagbag: DagBag) -> None:
    assert not dagbag.import_errors, "\n".join(
        f"{path}:\n{err}" for path, err in dagbag.import_errors.items()
    )


def test_one_dag_per_spec(dagbag: DagBag) -> None:
    specs = {path.stem for path in spec_files()}
    dag_files = {path.stem for path in (REPO / "dags").glob("*.py")}
    assert specs <= dag_files, f"specs without a DAG file in dags/: {sorted(specs - dag_files)}"
    assert set(dagbag.dag_ids) == specs


@pytest.mark.parametrize("dag_id", ["energy_meters", "ecommerce_sales"])
def test_pipeline_shape(dagbag: DagBag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    task_ids = set(dag.task_ids)
    airbyte_groups = {t.split(".")[0] for t in task_ids if t.startswith("airbyte_")}
    assert airbyte_groups, "no Airbyte task group"
    for group in airbyte_groups:
        sync, wait = dag.get_task(f"{group}.sync"), dag.get_task(f"{group}.wait")
        assert wait.upstream_task_ids == {sync.task_id}
        assert wait.outlets, "the wait task must publish the stream assets"
    dbt_tasks = [t for t in task_ids if t.startswith("dbt.")]
    assert dbt_tasks, "no dbt task group"
    # Every dbt task starts after every Airbyte wait (directly or through its upstream models).
    for task_id in dbt_tasks:
        task = dag.get_task(task_id)
        upstream = {t.task_id for t in task.get_flat_relatives(upstream=True)}
        assert {f"{g}.wait" for g in airbyte_groups} <= upstream, task_id


def test_policies(dagbag: DagBag) -> None:
    for dag in dagbag.dags.values():
        assert dag.doc_md and "Backfill" in dag.doc_md and "Re-run" in dag.doc_md, dag.dag_id
        assert dag.dagrun_timeout is not None, dag.dag_id
        assert dag.max_active_runs >= 1, dag.dag_id
        assert set(dag.tags) <= TAGS | OWNERS, dag.dag_id
        assert dag.catchup is False, f"{dag.dag_id}: catchup would schedule every day since start_date"
        for task in dag.tasks:
            assert set(task.owner.split(", ")) <= OWNERS, (dag.dag_id, task.task_id, task.owner)
            assert task.retries >= 1, (dag.dag_id, task.task_id)
            assert task.on_failure_callback, f"{dag.dag_id}.{task.task_id}: no on-call alert on failure"
        assert dag.on_failure_callback and dag.on_success_callback, dag.dag_id
        assert dag.deadline, f"{dag.dag_id}: no deadline alert"


def test_windowed_pipelines_have_real_data_intervals(dagbag: DagBag) -> None:
    from airflow.sdk import CronDataIntervalTimetable

    energy = dagbag.dags["energy_meters"]
    assert isinstance(energy.timetable, CronDataIntervalTimetable)


def test_asset_uris_match_cosmos_sources(dagbag: DagBag) -> None:
    from cosmos.dataset import construct_dataset_uri

    wait = dagbag.dags["energy_meters"].get_task("airbyte_energy.wait")
    uris = {asset.uri for asset in wait.outlets}
    namespace = "postgres://warehouse:5432"
    expected = {construct_dataset_uri(namespace, f"warehouse.raw_energy.{t}") for t in ("muid_1", "muid_2")}
    if "AIRFLOW_CONN_WAREHOUSE" not in os.environ:
        assert uris == expected


def test_parsing_does_no_io(tmp_path: Path) -> None:
    """Parse dags/ in a fresh interpreter where sockets and subprocesses raise."""
    script = tmp_path / "parse.py"
    script.write_text(
        "import socket, subprocess, sys\n"
        "def boom(*a, **k): raise RuntimeError('I/O at parse time')\n"
        "socket.socket.connect = boom\n"
        "subprocess.Popen.__init__ = boom\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(REPO / 'dags')!r})\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "print(sorted(bag.dag_ids))\n"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_", "AIRFLOW__DATABASE__"))
    }
    env.update(
        AIRFLOW_HOME=str(tmp_path / "airflow"),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="postgresql+psycopg2://nobody:x@127.0.0.1:1/none",
        PYTHONPATH=os.pathsep.join([str(REPO / "plugins"), str(REPO)]),
    )
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "energy_meters" in result.stdout and "ecommerce_sales" in result.stdout
