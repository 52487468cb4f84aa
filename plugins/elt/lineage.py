"""Asset lineage of a rendered dbt task group, declared at parse time from the compiled manifest.

Cosmos's `emit_datasets` registers assets only at run time (through aliases, and only with the
OpenLineage provider installed), so the asset graph would not connect Airbyte streams to dbt models.
Here every model task gets, before the DAG is serialized:
- inlets: the raw-table assets of the sources it reads (the same URIs the Airbyte wait task
  publishes, `elt.assets.raw_table_asset`) and the assets of its upstream models;
- outlets: its model's asset, `postgres://HOST:PORT/DATABASE/SCHEMA/TABLE` like a source's.
so the Assets page reads stream -> staging -> intermediate -> marts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from airflow.sdk import Asset, TaskGroup
from cosmos.constants import PRODUCER_WATCHER_TASK_ID

from elt import paths
from elt.assets import raw_table_asset, warehouse_namespace


def relation_asset(schema: str, table: str) -> Asset:
    """The asset of a dbt model's relation in the warehouse."""
    namespace, database = warehouse_namespace()
    return Asset(uri=f"{namespace}/{database}/{schema}/{table}", group="dbt")


def _manifest_relations(manifest: Path) -> dict[str, Asset]:
    """unique_id -> asset, for every model and source of the manifest."""
    data = json.loads(manifest.read_text())
    relations = {
        uid: relation_asset(node["schema"], node.get("alias") or node["name"])
        for uid, node in data.get("nodes", {}).items()
        if node.get("resource_type") == "model"
    }
    relations.update(
        {
            uid: raw_table_asset(source["schema"], source.get("identifier") or source["name"])
            for uid, source in data.get("sources", {}).items()
        }
    )
    return relations


def _model_task(task_or_group: Any) -> Any:
    """The task that builds a model: the task itself, or the `run` task of its group (tests apart)."""
    if not isinstance(task_or_group, TaskGroup):
        return task_or_group
    for child_id, child in task_or_group.children.items():
        if child_id.endswith(".run"):
            return child
    return None


def attach_lineage(group: Any, manifest: Path | None = None) -> None:
    """Declare inlets/outlets on the model tasks of a built Cosmos DbtTaskGroup (see module doc)."""
    relations = _manifest_relations(manifest or paths.DBT_MANIFEST)
    nodes = group.dbt_graph.filtered_nodes
    read_sources: list[Asset] = []
    for uid, node in nodes.items():
        task = _model_task(group.tasks_map.get(uid))
        if task is None or uid not in relations:
            continue
        upstream = [relations[dep] for dep in node.depends_on if dep in relations]
        read_sources += [relations[dep] for dep in node.depends_on if dep.startswith("source.")]
        task.inlets = _merged(task.inlets, upstream)
        task.outlets = _merged(task.outlets, [relations[uid]])
    producer = group.tasks_map.get(PRODUCER_WATCHER_TASK_ID)
    if producer is not None:  # watcher mode: the one `dbt build` that really reads the raw tables
        producer.inlets = _merged(producer.inlets, read_sources)


def _merged(existing: Any, new: list[Asset]) -> list[Any]:
    current = list(existing or [])
    return current + [asset for asset in new if asset not in current]
