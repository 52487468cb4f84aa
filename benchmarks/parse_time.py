"""Parse time: dags/, and a generated 300-model dbt project rendered three ways.

    .venv/bin/python benchmarks/parse_time.py [--models 300] [--repeat 5] [--dbt-ls]

Prints CPU seconds per DAG build (median of --repeat) for:
  - this repository's dags/ (a DagBag, as the dag-processor parses it);
  - the generated project rendered our way (Cosmos LoadMode.DBT_MANIFEST, compiled once);
  - with --dbt-ls, the same with Cosmos LoadMode.DBT_LS (runs `dbt ls` while parsing);
  - a plain DAG with the same number of EmptyOperator tasks and edges (the floor).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "plugins"), str(REPO)]
os.environ.setdefault("AIRFLOW__COSMOS__ENABLE_TELEMETRY", "False")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW_HOME", str(REPO / ".local" / "bench-airflow-home"))


def generate_project(root: Path, models: int) -> Path:
    """A dbt project of `models` models in layers of 10: each model selects from two of the layer above."""
    project = root / "bench_project"
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text(
        "name: bench\nversion: '1.0'\nprofile: bench\nconfig-version: 2\nmodels:\n  bench:\n    +materialized: view\n"
    )
    (project / "profiles.yml").write_text(
        "bench:\n  target: dev\n  outputs:\n    dev:\n      type: postgres\n      host: localhost\n"
        "      port: 5432\n      user: u\n      password: p\n      dbname: d\n      schema: s\n      threads: 1\n"
    )
    lines = ["version: 2", "models:"]
    for i in range(models):
        if i < 10:
            sql = "select 1 as id"
        else:
            a, b = i - 10, i - 10 + (1 if (i % 10) < 9 else -1)
            sql = (
                f"select id from {{{{ ref('m{a:03d}') }}}} union all select id from {{{{ ref('m{b:03d}') }}}}"
            )
        (project / "models" / f"m{i:03d}.sql").write_text(sql + "\n")
        lines += [f"  - name: m{i:03d}", "    columns:", "      - name: id", "        data_tests: [not_null]"]
    (project / "models" / "schema.yml").write_text("\n".join(lines) + "\n")
    return project


def dbt_parse(project: Path) -> Path:
    from dbt.cli.main import dbtRunner

    result = dbtRunner().invoke(
        ["parse", "--project-dir", str(project), "--profiles-dir", str(project), "--quiet"]
    )
    assert result.success, result.exception
    return project / "target" / "manifest.json"


def timed(build, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.process_time()  # CPU seconds: steadier than wall time on a shared machine
        build()
        samples.append(time.process_time() - started)
    return statistics.median(samples)


def cosmos_dag(project: Path, load_mode, manifest: Path | None):
    from cosmos import DbtDag, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig
    from cosmos.constants import TestBehavior

    return DbtDag(
        dag_id=f"bench_{load_mode.name.lower()}",
        start_date=datetime(2024, 1, 1),
        schedule=None,
        project_config=ProjectConfig(
            dbt_project_path=project, manifest_path=manifest, project_name="bench", install_dbt_deps=False
        ),
        profile_config=ProfileConfig(
            profile_name="bench", target_name="dev", profiles_yml_filepath=project / "profiles.yml"
        ),
        render_config=RenderConfig(load_method=load_mode, test_behavior=TestBehavior.BUILD),
        execution_config=ExecutionConfig(dbt_executable_path=str(Path(sys.executable).parent / "dbt")),
    )


def plain_dag(manifest: Path):
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG

    nodes = json.loads(manifest.read_text())["nodes"]
    models = {uid: node for uid, node in nodes.items() if node["resource_type"] == "model"}
    with DAG("bench_plain", start_date=datetime(2024, 1, 1), schedule=None) as dag:
        tasks = {uid: EmptyOperator(task_id=node["name"]) for uid, node in models.items()}
        for uid, node in models.items():
            for parent in node["depends_on"]["nodes"]:
                if parent in tasks:
                    tasks[parent] >> tasks[uid]
    return dag


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dbt-ls", action="store_true", help="also time LoadMode.DBT_LS (slow)")
    args = parser.parse_args()
    import logging

    logging.disable(logging.INFO)
    importlib.import_module("elt")  # first, as in the DAG files: the product's Cosmos settings
    from airflow.dag_processing.dagbag import DagBag
    from cosmos.constants import LoadMode

    results = {}
    results["dags/ (DagBag, both pipelines)"] = timed(
        lambda: DagBag(dag_folder=str(REPO / "dags")), args.repeat
    )
    with tempfile.TemporaryDirectory() as tmp:
        project = generate_project(Path(tmp), args.models)
        manifest = dbt_parse(project)
        shutil.rmtree(project / "target" / "partial_parse.msgpack", ignore_errors=True)
        plain = timed(lambda: plain_dag(manifest), args.repeat)
        ours = timed(lambda: cosmos_dag(project, LoadMode.DBT_MANIFEST, manifest), args.repeat)
        results[f"plain DAG, {args.models} EmptyOperators"] = plain
        results[f"Cosmos DBT_MANIFEST, {args.models} models (ours)"] = ours
        if args.dbt_ls:
            dbt_ls = timed(lambda: cosmos_dag(project, LoadMode.DBT_LS, None), max(1, args.repeat // 2))
            results[f"Cosmos DBT_LS, {args.models} models"] = dbt_ls
    width = max(map(len, results))
    for name, seconds in results.items():
        print(f"{name:<{width}}  {seconds:8.3f} s")
    print(f"{'ours / plain':<{width}}  {ours / plain:8.2f} x   (target <= 1.5x)")
    if args.dbt_ls:
        print(f"{'DBT_LS / plain':<{width}}  {dbt_ls / plain:8.2f} x")


if __name__ == "__main__":
    main()
