"""Every DAG file parses, with no database, Variables, connections or services, one DAG per spec."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from elt.spec import check_specs, spec_files

REPO = Path(__file__).resolve().parents[2]


def test_no_import_errors(dagbag) -> None:
    assert not dagbag.import_errors, "\n".join(
        f"{path}:\n{err}" for path, err in dagbag.import_errors.items()
    )


def test_one_dag_per_spec(dagbag) -> None:
    specs = {path.stem for path in spec_files()}
    dag_files = {path.stem for path in (REPO / "dags").glob("*.py")}
    assert specs, "no pipeline specs found"
    assert specs <= dag_files, f"specs without a DAG file in dags/: {sorted(specs - dag_files)}"
    assert set(dagbag.dag_ids) == specs


def test_specs_agree_with_each_other() -> None:
    """What no single DAG file checks while parsing: shared selectors and connections, unknown ids."""
    assert [str(p) for p in check_specs()] == []


@pytest.mark.parametrize(
    ("conn", "namespace", "database"),
    [
        (None, "postgres://warehouse:5432", "warehouse"),
        (
            json.dumps({"conn_type": "postgres", "host": "db.internal", "port": 6543, "schema": "dwh"}),
            "postgres://db.internal:6543",
            "dwh",
        ),
        ("postgresql://u:p@pg.example.com:5433/analytics", "postgres://pg.example.com:5433", "analytics"),
    ],
    ids=["default", "json-connection", "uri-connection"],
)
def test_asset_uris_match_cosmos_sources(
    monkeypatch: pytest.MonkeyPatch, conn: str | None, namespace: str, database: str
) -> None:
    """The Airbyte wait publishes the URI Cosmos gives the dbt source, for the warehouse in the environment."""
    from cosmos.dataset import construct_dataset_uri

    from elt.dag_factory import dag_from_spec
    from elt.spec import parse_spec

    monkeypatch.delenv("ELT_WAREHOUSE_ASSET_NAMESPACE", raising=False)
    if conn is None:
        monkeypatch.delenv("AIRFLOW_CONN_WAREHOUSE", raising=False)
    else:
        monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", conn)
    spec = parse_spec(REPO / "include" / "pipelines" / "energy_meters.yaml")
    wait = dag_from_spec(spec).get_task("airbyte_energy.wait")
    expected = {construct_dataset_uri(namespace, f"{database}.raw_energy.{t}") for t in ("muid_1", "muid_2")}
    assert {asset.uri for asset in wait.outlets} == expected


def test_parsing_needs_nothing_but_airflow_home(tmp_path: Path) -> None:
    """Parse dags/ in a fresh interpreter with only AIRFLOW_HOME set (no metadata DB, Variables or
    connections), with settings a deployment might set that would make Cosmos touch the DB, and with
    sockets and subprocesses raising. Twice, with an empty render cache (elt.render_cache) and then
    the one the first parse wrote, in interpreters with different hash seeds: the second parse loads
    the cached dbt task groups (no new cache file) and builds the same DAGs."""
    script = tmp_path / "parse.py"
    script.write_text(
        "import socket, subprocess, sys\n"
        "def boom(*a, **k): raise RuntimeError('I/O at parse time')\n"
        "socket.socket.connect = boom\n"
        "subprocess.Popen.__init__ = boom\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(REPO / 'dags')!r})\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "dags = [bag.dags[d] for d in sorted(bag.dag_ids)]\n"
        "print([(d.dag_id, sorted(d.task_dict), sorted(d.params), d.doc_md) for d in dags])\n"
    )
    cache = tmp_path / "render-cache"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "PYTHONPATH": str(REPO / "plugins"),
        # Deployment settings the product must override in code:
        "AIRFLOW__COSMOS__ENABLE_CACHE": "True",
        "AIRFLOW__COSMOS__ENABLE_CACHE_DBT_YAML_SELECTORS": "True",
        "AIRFLOW__COSMOS__ENABLE_CACHE_DBT_LS": "True",
        # An empty cache of our own, not the repository's (include/dbt/target/elt_render_cache):
        "ELT_RENDER_CACHE_DIR": str(cache),
    }
    parses, files = [], []
    for seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, str(script)],
            env={**env, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        parses.append(result.stdout.strip().splitlines()[-1])
        files.append(sorted(p.name for p in cache.glob("*.pickle")))
    dags = [name for name, *_ in ast.literal_eval(parses[0])]
    assert sorted(p.stem for p in spec_files()) == dags
    assert parses[1] == parses[0]
    assert len(files[0]) == len(dags) and files[1] == files[0]
