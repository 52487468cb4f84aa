"""The render cache (elt.render_cache) changes how fast a DAG parses, never what it is.

Every pipeline, in both dbt execution modes, is built three ways: without the cache, rendering and
writing it (a miss), and loading it (a hit). The three DAGs must be the same: task ids, groups,
dependencies, operator classes and every attribute of every operator (its arguments, retries,
callbacks, params, inlets/outlets), the DAG's own documentation and params, and Airflow's
serialized form of the whole DAG (what the scheduler and UI read).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import DAG, TaskGroup
from airflow.sdk.bases.operator import BaseOperator
from airflow.sdk.definitions.param import Param, ParamsDict
from airflow.serialization.serialized_objects import DagSerialization
from cosmos.operators._watcher.base import BaseConsumerSensor

from elt import dbt, render_cache
from elt.dag_factory import dag_from_spec
from elt.spec import load_spec, spec_files

SPECS = [p.stem for p in spec_files()]


def _normal(value: Any, seen: set[int]) -> Any:
    """A comparable, order-preserving picture of an attribute value (references by their ids)."""
    if value is None or isinstance(value, (str, int, float, bool, bytes)):
        return value
    if isinstance(value, DAG):
        return ("DAG", value.dag_id)
    if isinstance(value, TaskGroup):  # also a weakref.proxy of one (it forwards __class__)
        return ("TaskGroup", value.group_id)
    if isinstance(value, BaseOperator):
        return ("task", value.task_id)
    if isinstance(value, ParamsDict):
        return ("ParamsDict", [(k, _normal(value.get_param(k), seen)) for k in value])
    if isinstance(value, Param):
        return ("Param", _normal(value.value, seen), _normal(value.schema, seen), value.description)
    if isinstance(value, dict):
        return [(_normal(k, seen), _normal(v, seen)) for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [_normal(v, seen) for v in value])
    if isinstance(value, (set, frozenset)):
        return (type(value).__name__, sorted(map(repr, (_normal(v, seen) for v in value))))
    if id(value) in seen:
        return ("seen", type(value).__qualname__)
    seen = seen | {id(value)}
    state = getattr(value, "__dict__", None)
    if state is None:  # enums, dates, paths, timedeltas, attrs with slots: their own equality
        return (type(value).__qualname__, repr(value))
    return (type(value).__qualname__, _normal({k: v for k, v in state.items() if k != "_log"}, seen))


def picture(dag: DAG) -> dict[str, Any]:
    return {
        "doc_md": dag.doc_md,
        "params": _normal(dag.params, set()),
        "tasks": [
            (
                task_id,
                f"{type(task).__module__}.{type(task).__qualname__}",
                task.task_group.group_id if task.task_group else None,
                sorted(task.upstream_task_ids),
                sorted(task.downstream_task_ids),
                _normal({k: v for k, v in task.__dict__.items() if k != "_log"}, set()),
            )
            for task_id, task in dag.task_dict.items()
        ],
        "groups": {
            group_id: (
                sorted(group.children),
                sorted(group.upstream_task_ids),
                sorted(group.downstream_task_ids),
            )
            for group_id, group in dag.task_group.get_task_group_dict().items()
        },
        "serialized": json.loads(json.dumps(DagSerialization.to_dict(dag), default=str, sort_keys=True)),
    }


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ELT_RENDER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("execution", ["watcher", "per_model"])
@pytest.mark.parametrize("name", SPECS)
def test_a_cached_dag_is_the_dag_built_without_the_cache(
    name: str, execution: str, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_spec(next(p for p in spec_files() if p.stem == name))
    if spec.dbt is None:
        pytest.skip("no dbt task group")
    spec = spec.model_copy(update={"dbt": spec.dbt.model_copy(update={"execution": execution})})
    restored = []  # calls of the cache's own loader: this test watches which path was taken
    restore = render_cache._restore
    monkeypatch.setattr(render_cache, "_restore", lambda *a: restored.append(1) or restore(*a))

    monkeypatch.setenv("ELT_RENDER_CACHE", "off")
    uncached = picture(dag_from_spec(spec))
    assert not cache.exists()

    monkeypatch.delenv("ELT_RENDER_CACHE")
    miss = picture(dag_from_spec(spec))
    assert len(list(cache.glob(f"{name}-*.pickle"))) == 1 and not restored
    hit_dag = dag_from_spec(spec)
    hit = picture(hit_dag)
    assert restored == [1]

    assert miss == uncached
    assert hit == uncached
    assert any(t[0].endswith((".run", "_model_build")) for t in hit["tasks"])  # per-model tasks are there
    if execution == "watcher":
        _assert_post_processed(hit_dag, spec, monkeypatch)


def _edges(dag: DAG) -> set[tuple[str, str]]:
    return {(up, task.task_id) for task in dag.tasks for up in task.upstream_task_ids}


def _assert_post_processed(dag: DAG, spec: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `dbt_task_group` changes after Cosmos renders a watcher group is in the cached DAG too
    (the equality above compares it; this shows there is something to compare)."""
    consumers = [t for t in dag.tasks if isinstance(t, BaseConsumerSensor)]
    assert consumers and {t.poke_interval for t in consumers} == {dbt.WATCHER_POKE_SECONDS}
    excluded = {t.task_id: t.exclude for t in dag.tasks if getattr(t, "exclude", None)}
    assert excluded, "no test task excludes a multi-model test: order_multi_parent_tests did nothing"
    # The edges order_multi_parent_tests adds: those of the DAG rendered without it.
    monkeypatch.setenv("ELT_RENDER_CACHE", "off")
    monkeypatch.setattr(dbt, "order_multi_parent_tests", lambda group: None)
    unordered = dag_from_spec(spec)
    assert _edges(dag) > _edges(unordered)
    assert not any(getattr(t, "exclude", None) for t in unordered.tasks)


def test_a_changed_manifest_renders_again(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_spec(next(p for p in spec_files() if p.stem == "energy_meters"))
    dag_from_spec(spec)
    first = {p.name for p in cache.glob("*.pickle")}
    manifest = tmp_path / "manifest.json"
    data = json.loads(render_cache.paths.DBT_MANIFEST.read_text())
    data["metadata"]["generated_at"] = "2000-01-01T00:00:00Z"
    manifest.write_text(json.dumps(data))
    monkeypatch.setattr(render_cache.paths, "DBT_MANIFEST", manifest)
    dag_from_spec(spec)
    assert len({p.name for p in cache.glob("*.pickle")} - first) == 1


def test_a_changed_project_file_renders_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A model's SQL changed but the manifest was not recompiled yet: still a new key.
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    model = project / "models" / "stg_a.sql"
    model.write_text("select 1 as id\n")
    monkeypatch.setattr(render_cache.paths, "DBT_PROJECT_DIR", project)
    before = render_cache._files_digest()
    model.write_text("select 2 as id\n")
    assert render_cache._files_digest() != before


def test_an_unwritable_cache_dir_renders_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A directory below a regular file cannot be created, even by root (chmod would not stop root).
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    monkeypatch.setenv("ELT_RENDER_CACHE_DIR", str(blocker / "cache"))
    spec = load_spec(next(p for p in spec_files() if p.stem == "energy_meters"))
    with caplog.at_level("INFO", logger=render_cache.__name__):
        cached = picture(dag_from_spec(spec))
    monkeypatch.setenv("ELT_RENDER_CACHE", "off")
    assert cached == picture(dag_from_spec(spec))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("not written" in m and "energy_meters" in m for m in warnings), warnings


def test_a_world_writable_cache_file_is_not_loaded(
    cache: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    spec = load_spec(next(p for p in spec_files() if p.stem == "energy_meters"))
    dag_from_spec(spec)
    (path,) = cache.glob("*.pickle")
    path.chmod(0o666)
    loaded = []
    restore = render_cache._restore
    monkeypatch.setattr(render_cache, "_restore", lambda *a: loaded.append(1) or restore(*a))
    with caplog.at_level("WARNING", logger=render_cache.__name__):
        dag_from_spec(spec)
    assert not loaded
    assert any("world-writable" in r.getMessage() for r in caplog.records)
    assert path.stat().st_mode & 0o777 == 0o644  # rendered over


def test_a_corrupt_cache_file_is_rendered_over(cache: Path) -> None:
    spec = load_spec(next(p for p in spec_files() if p.stem == "energy_meters"))
    expected = picture(dag_from_spec(spec))
    (path,) = cache.glob("*.pickle")
    path.write_bytes(b"not a pickle")
    assert picture(dag_from_spec(spec)) == expected
    assert path.read_bytes() != b"not a pickle"


def test_sets_in_the_key_are_pickled_in_a_fixed_order() -> None:
    # Iteration order of a set of str follows PYTHONHASHSEED; the key must not.
    forward, backward = set(), set()
    for word in ("retries", "owner", "pool", "queue"):
        forward.add(word)
    for word in ("queue", "pool", "owner", "retries", "spare"):
        backward.add(word)
    backward.discard("spare")
    dumped = []
    for value in (forward, backward):
        buffer = io.BytesIO()
        render_cache._KeyPickler(buffer, protocol=5).dump({"args": value})
        dumped.append(buffer.getvalue())
    assert dumped[0] == dumped[1]


def test_a_misspelt_switch_is_an_error_naming_it(monkeypatch) -> None:
    monkeypatch.setenv("ELT_RENDER_CACHE", "of")
    with pytest.raises(ValueError, match="ELT_RENDER_CACHE='of': expected on or off"):
        render_cache.enabled()
    monkeypatch.setenv("ELT_RENDER_CACHE", "OFF")
    assert render_cache.enabled() is False
