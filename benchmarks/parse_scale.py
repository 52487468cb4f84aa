"""Parse cost per DAG as the number of pipelines grows.

    .venv/bin/python benchmarks/parse_scale.py [--counts 1 10 50 200] [--repeat 3] [--no-freeze]

For each count N it generates N pipeline specs (copies of energy_meters.yaml with their own
Airbyte connection and schema) and their two-line DAG files into a temporary directory, points
ELT_PIPELINES_DIR at it, and times a DagBag of those DAG files in a fresh interpreter: the first
DagBag (empty render cache: every dbt task group is rendered and written, "cold") and the median of
--repeat more (loaded from the cache, as the dag-processor parses once the manifest is compiled).
Imports (Airflow, Cosmos, elt) are paid once per process and reported apart, then frozen out of
the garbage collector's sight (`gc.freeze()`), as Airflow's DagFileProcessorManager does before it
forks the processes that parse DAG files; with --no-freeze, every full collection also scans them,
and those collections come more often the more DAGs one process holds (Python's collector, not the
DAG code: with the collector off the per-DAG cost is flat). Goal: per-DAG cost at 200 pipelines
<= 1.2x the cost at 10.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, logging, statistics, sys, time
logging.disable(logging.WARNING)
started, cpu = time.perf_counter(), time.process_time()
from airflow.dag_processing.dagbag import DagBag
import elt.dag_factory  # noqa: F401
imports = time.perf_counter() - started
if sys.argv[3] == "freeze":  # as the dag-processor manager does before it forks its parsers
    import gc
    gc.freeze()
walls, cpus = [], []
for _ in range(int(sys.argv[2]) + 1):  # the first renders every dbt group and writes the render cache
    started, cpu = time.perf_counter(), time.process_time()
    bag = DagBag(dag_folder=sys.argv[1])
    walls.append(time.perf_counter() - started)
    cpus.append(time.process_time() - cpu)
    assert not bag.import_errors, bag.import_errors
print(json.dumps({"imports": imports, "wall": statistics.median(walls[1:]), "cpu": statistics.median(cpus[1:]),
                  "cold_cpu": cpus[0], "dags": len(bag.dag_ids)}))
"""


def generate(root: Path, count: int) -> Path:
    pipelines, dags = root / "pipelines", root / "dags"
    pipelines.mkdir(parents=True)
    dags.mkdir()
    shutil.copy(REPO / "include" / "pipelines" / "vocabulary.yaml", pipelines)
    base = yaml.safe_load((REPO / "include" / "pipelines" / "energy_meters.yaml").read_text())
    base.pop("name")
    dag_file = (REPO / "dags" / "energy_meters.py").read_text()
    for i in range(count):
        name = f"bench_pipeline_{i:03d}"
        spec = dict(base)
        connection = dict(base["airbyte"]["connections"][0])
        connection.update(
            id=str(uuid.uuid5(uuid.NAMESPACE_URL, name)), destination_schema=f"raw_bench_{i:03d}"
        )
        spec["airbyte"] = {**base["airbyte"], "connections": [connection]}
        (pipelines / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        (dags / f"{name}.py").write_text(dag_file)
    return root


def measure(count: int, repeat: int, freeze: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp), count)
        env = {
            **os.environ,
            "ELT_PIPELINES_DIR": str(root / "pipelines"),
            "AIRFLOW_HOME": str(root / "airflow"),
            "ELT_RENDER_CACHE_DIR": str(root / "render-cache"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO)]),
        }
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(root / "dags"), str(repeat), "freeze" if freeze else "-"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode:
            sys.exit(out.stderr[-3000:])
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["dags"] == count, result
        return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 10, 50, 200])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--no-freeze",
        action="store_true",
        help="leave the imported modules to the garbage collector (the dag-processor freezes them)",
    )
    args = parser.parse_args()
    rows = {count: measure(count, args.repeat, not args.no_freeze) for count in args.counts}
    print(
        f"{'pipelines':>9}  {'imports s':>9}  {'DagBag s':>9}  {'per DAG ms':>10}  {'CPU/DAG ms':>10}"
        f"  {'cold CPU/DAG ms':>15}"
    )
    for count, r in rows.items():
        print(
            f"{count:>9}  {r['imports']:>9.2f}  {r['wall']:>9.2f}  {1000 * r['wall'] / count:>10.1f}"
            f"  {1000 * r['cpu'] / count:>10.1f}  {1000 * r['cold_cpu'] / count:>15.1f}"
        )
    if 10 in rows and max(rows) > 10:
        big = max(rows)
        ratio = (rows[big]["cpu"] / big) / (rows[10]["cpu"] / 10)
        print(f"CPU per DAG at {big} / at 10: {ratio:.2f}x   (goal <= 1.2x)")
        cold = (rows[big]["cold_cpu"] / big) / (rows[10]["cold_cpu"] / 10)
        print(f"the same for the first parse (rendering every dbt group, writing the cache): {cold:.2f}x")


if __name__ == "__main__":
    main()
