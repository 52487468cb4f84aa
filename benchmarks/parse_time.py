"""Parse time: dags/, and a generated 300-model dbt project rendered our way and Cosmos's way.

    .venv/bin/python benchmarks/parse_time.py [--models 300] [--repeat 5] [--dbt-ls]

Prints CPU seconds per DAG build (median of --repeat) for:
  - this repository's dags/ (a DagBag, as the dag-processor parses it);
  - the generated project rendered the product's way (plugins/elt/dag_factory.py `dbt_group`:
    Cosmos DbtTaskGroup from the compiled manifest, watcher mode, asset lineage) in a DAG with a
    pipeline's default_args and params: from the render cache (every parse but the first after the
    manifest changes: "ours"), rendering and writing it, and with the cache off;
  - a plain DAG of EmptyOperators with the same task ids, task groups and dependencies, and the
    same default_args and params (the floor);
  - Cosmos's own DbtDag of the project (DBT_MANIFEST, TestBehavior.BUILD: one task per model);
  - with --dbt-ls, that DbtDag with LoadMode.DBT_LS (runs `dbt ls` while parsing).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

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
    build()  # warm: first calls pay imports and one-off setup, as no parse after the first does
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


def plain_model_dag(manifest: Path):
    """Cosmos's DbtDag with TestBehavior.BUILD has one task per model: this is its plain twin."""
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


def pipeline_dag(dag_id: str, body) -> object:
    """A DAG with what a pipeline's DAG gives its tasks (default_args, params, macros)."""
    from datetime import timedelta

    from airflow.sdk import DAG

    from elt.dbt import TEMPLATE_MACROS, rebuild_params

    with DAG(
        dag_id,
        start_date=datetime(2024, 1, 1),
        schedule=None,
        params=rebuild_params(),
        default_args={"owner": "bench", "retries": 2, "retry_delay": timedelta(minutes=1)},
        user_defined_macros=TEMPLATE_MACROS,
    ) as dag:
        body()
    return dag


def ours(spec):
    from elt.dag_factory import dbt_group

    return pipeline_dag("bench_ours", lambda: dbt_group(spec))


def shape(dag) -> list[tuple[str, list[str], list[str]]]:
    """(task id, its task groups outermost first, downstream task ids) of every task."""
    rows = []
    for task_id, task in dag.task_dict.items():
        groups, group = [], task.task_group
        while group is not None and group.group_id is not None:
            groups.insert(0, group.group_id)
            group = group.parent_group
        rows.append((task_id, groups, sorted(task.downstream_task_ids)))
    return rows


def plain(rows) -> object:
    """EmptyOperators with the same task ids, groups and dependencies as `rows` (see shape)."""
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import TaskGroup

    def body() -> None:
        groups: dict[str, TaskGroup] = {}
        tasks = {}
        for task_id, group_ids, _ in rows:
            parent = None
            for group_id in group_ids:
                if group_id not in groups:
                    groups[group_id] = TaskGroup(group_id.rpartition(".")[2], parent_group=parent)
                parent = groups[group_id]
            tasks[task_id] = EmptyOperator(task_id=task_id.rpartition(".")[2], task_group=parent)
        for task_id, _, downstream in rows:
            for other in downstream:
                tasks[task_id] >> tasks[other]

    return pipeline_dag("bench_plain_twin", body)


DAGBAG = """
import logging, statistics, sys, time
logging.disable(logging.INFO)
from airflow.dag_processing.dagbag import DagBag
samples = []
for _ in range(int(sys.argv[2])):
    started = time.process_time()
    bag = DagBag(dag_folder=sys.argv[1])
    samples.append(time.process_time() - started)
    assert not bag.import_errors, bag.import_errors
print(statistics.median(samples))
"""


def dagbag_seconds(repeat: int) -> float:
    """A DagBag of dags/ in a fresh interpreter: the repository's own project and render cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELT_")}
    env = {**env, "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO)])}
    out = subprocess.run(
        [sys.executable, "-c", DAGBAG, str(REPO / "dags"), str(repeat)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dbt-ls", action="store_true", help="also time LoadMode.DBT_LS (slow)")
    args = parser.parse_args()
    import logging

    logging.disable(logging.INFO)
    with tempfile.TemporaryDirectory() as tmp:
        project = generate_project(Path(tmp), args.models)
        manifest = dbt_parse(project)
        shutil.rmtree(project / "target" / "partial_parse.msgpack", ignore_errors=True)
        # The product reads its dbt project's location from the environment (elt.paths).
        os.environ.update(
            ELT_DBT_PROJECT_DIR=str(project),
            ELT_DBT_MANIFEST=str(manifest),
            ELT_DBT_PROJECT_NAME="bench",
            ELT_RENDER_CACHE_DIR=str(Path(tmp) / "render-cache"),
        )
        importlib.import_module("elt")  # first, as in the DAG files: the product's Cosmos settings
        import airflow  # noqa: F401  (before Cosmos: its plugin entry point imports Cosmos back)
        from cosmos.constants import LoadMode

        from elt import render_cache
        from elt.spec import Dbt

        results = {"dags/ (DagBag, both pipelines)": dagbag_seconds(args.repeat)}
        spec = SimpleNamespace(dbt=Dbt(select=["path:models"]), windowed=True)
        cache_dir = render_cache.cache_dir()

        def cold():
            shutil.rmtree(cache_dir, ignore_errors=True)
            return ours(spec)

        os.environ["ELT_RENDER_CACHE"] = "off"
        uncached = timed(lambda: ours(spec), max(1, args.repeat // 2))
        del os.environ["ELT_RENDER_CACHE"]
        rendered = timed(cold, max(1, args.repeat // 2))
        rows = shape(ours(spec))
        ours_s = timed(lambda: ours(spec), args.repeat)
        plain_s = timed(lambda: plain(rows), args.repeat)
        assert shape(plain(rows)) == rows
        name = f"{args.models} models, {len(rows)} tasks"
        results[f"{name}: plain DAG of EmptyOperators"] = plain_s
        results[f"{name}: ours (render cache hit)"] = ours_s
        results[f"{name}: ours, rendering + writing the cache"] = rendered
        results[f"{name}: ours, cache off"] = uncached
        model_plain = timed(lambda: plain_model_dag(manifest), args.repeat)
        dbt_dag = timed(lambda: cosmos_dag(project, LoadMode.DBT_MANIFEST, manifest), args.repeat)
        results[f"{args.models} models: plain DAG, one EmptyOperator per model"] = model_plain
        results[f"{args.models} models: Cosmos DbtDag DBT_MANIFEST (BUILD)"] = dbt_dag
        if args.dbt_ls:
            dbt_ls = timed(lambda: cosmos_dag(project, LoadMode.DBT_LS, None), max(1, args.repeat // 2))
            results[f"{args.models} models: Cosmos DbtDag DBT_LS (BUILD)"] = dbt_ls
    width = max(map(len, results))
    for label, seconds in results.items():
        print(f"{label:<{width}}  {seconds:8.3f} s")
    print(f"{'ours / plain':<{width}}  {ours_s / plain_s:8.2f} x   (target <= 1.5x)")
    print(
        f"{'ours rendering / plain (first parse after a manifest change)':<{width}}  {rendered / plain_s:8.2f} x"
    )
    print(f"{'ours cache off / plain':<{width}}  {uncached / plain_s:8.2f} x")
    print(f"{'Cosmos DbtDag / plain (one task per model)':<{width}}  {dbt_dag / model_plain:8.2f} x")
    if args.dbt_ls:
        print(f"{'DBT_LS / plain (one task per model)':<{width}}  {dbt_ls / model_plain:8.2f} x")


if __name__ == "__main__":
    main()
