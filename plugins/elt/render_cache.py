"""A cache of the rendered dbt task group, so parsing a DAG does not re-render it from the manifest.

Cosmos builds each of its operators through a deep class hierarchy: every `__init__` level runs
Airflow's `apply_defaults` (which deep-copies the DAG's params), and Cosmos reflects
`inspect.signature` and two argspecs per operator. A 300-model project took ~5x a plain DAG of the
same tasks to parse. Cosmos has no supported switch for that (a cache of those signatures belongs
upstream in Cosmos), so the task group Cosmos renders is pickled once and loaded on later parses.

The cache is a generated artifact beside the manifest (`target/elt_render_cache/`, gitignored), one
file per key. The key is everything the rendered group depends on: the manifest's SHA-256, the dbt
project's files (Cosmos puts their hash in the DAG docs), the DAG's default_args/params/dates, the
render inputs the caller passes (selection, execution mode, ...), `AIRFLOW_*`/`ELT_*` environment
variables and airflow.cfg, the versions of Airflow and Cosmos, and the source of this package. A
change to any of them is a new key, so the group is rendered again; the equality of cached and
freshly rendered DAGs is tested (tests/unit/test_render_cache.py). Writing is best effort
(a read-only deployment simply renders every time) and atomic (parsers run in parallel).
`ELT_RENDER_CACHE=off` turns the cache off.

On a hit, the group's operators are restored from their pickled state (Airflow's own
`BaseOperator.__getstate__`/`__setstate__`) and registered with the DAG being built the way
building them registers them (`DAG.add_task`, the parent group's children, the used ids), and the
changes Cosmos made to the DAG itself (its dbt project hash in `doc_md`, its params) are re-applied.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import os
import pickle
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, TaskGroup
from airflow.sdk.definitions._internal.contextmanager import TaskGroupContext
from airflow.sdk.exceptions import DuplicateTaskIdFound

from elt import paths

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the payload's layout changes
CACHE_DIR_NAME = "elt_render_cache"
_PACKAGE_DIR = Path(__file__).resolve().parent
# The project's generated folders: the same Cosmos leaves out of its project hash.
_PROJECT_SKIP = {".git", "target", "dbt_packages", "logs", "__pycache__"}
# Environment a render reads: Airflow config, connections (the warehouse's asset namespace), paths.
_ENV_PREFIXES = ("AIRFLOW__", "AIRFLOW_CONN_", "ELT_")
KEEP_PER_DAG = 4  # files kept per DAG id: processes whose keys differ do not evict each other at once


_ON, _OFF = ("on", "1", "true", "yes"), ("off", "0", "false", "no")


def enabled() -> bool:
    value = os.environ.get("ELT_RENDER_CACHE", "on").strip().lower()
    if value not in _ON + _OFF:
        raise ValueError(f"ELT_RENDER_CACHE={value!r}: expected on or off")
    return value in _ON


def cache_dir() -> Path:
    return Path(os.environ.get("ELT_RENDER_CACHE_DIR") or paths.DBT_MANIFEST.parent / CACHE_DIR_NAME)


def cached_task_group(render: Callable[[], TaskGroup], inputs: Any) -> TaskGroup:
    """The task group `render()` builds in the current DAG and group, from the cache when it can.

    `inputs` are the arguments `render` depends on beyond the DAG and the files of the key (see the
    module doc); they must pickle deterministically (plain data, pydantic models).
    """
    dag = _current_dag()
    parent = TaskGroupContext.get_current(dag) or dag.task_group
    key = _key(dag, parent, inputs) if enabled() else None
    path = cache_dir() / f"{dag.dag_id}-{key}.pickle" if key else None
    if path is not None and path.is_file():
        try:
            _check_trusted(path)
            payload = _Unpickler(io.BytesIO(path.read_bytes()), dag, parent).load()
        except Exception as err:  # a corrupt or vanished file: render, then overwrite it
            log.warning("render cache: ignoring %s, rendering instead: %s", path, err)
        else:
            group = _restore(payload, dag, parent)
            log.info("render cache: loaded %s.%s from %s", dag.dag_id, group.group_id, path)
            return group
    return _render_and_store(render, dag, parent, path)


def _check_trusted(path: Path) -> None:
    """Loading a pickle runs code: refuse one that anybody could have written (e.g. a cache dir
    set to a world-writable folder). The cache is as trusted as dags/ and plugins/, no more."""
    for place in (path, path.parent):
        if place.stat().st_mode & 0o002:
            raise PermissionError(f"{place} is world-writable")


# -- key ---------------------------------------------------------------------------------------


def _current_dag() -> DAG:
    from airflow.sdk.definitions._internal.contextmanager import DagContext

    dag = DagContext.get_current()
    if dag is None:
        raise RuntimeError("cached_task_group must be called inside a DAG context")
    return dag


def _key(dag: DAG, parent: TaskGroup, inputs: Any) -> str | None:
    material = (
        FORMAT,
        _files_digest(),
        dag.dag_id,
        parent.group_id,
        dag.default_args,
        dag.params,
        dag.start_date,
        dag.end_date,
        dag.fail_fast,
        inputs,
        sorted(
            (k, v)
            for k, v in os.environ.items()
            if k.startswith(_ENV_PREFIXES) and not k.startswith("ELT_RENDER_CACHE")
        ),
    )
    buffer = io.BytesIO()
    try:
        _KeyPickler(buffer, protocol=5).dump(material)
    except Exception as err:  # something in the DAG's arguments does not pickle: no cache
        log.info("render cache: off for %s: %s", dag.dag_id, err)
        return None
    return hashlib.sha256(buffer.getvalue()).hexdigest()


class _KeyPickler(pickle._Pickler):  # the Python pickler: it asks reducer_override about sets too
    """Pickles sets sorted: their order follows the interpreter's hash seed, the key must not."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) in (set, frozenset):
            return type(obj), (sorted(obj, key=repr),)
        return NotImplemented


def _files_digest() -> str:
    """The manifest, the dbt project's files, airflow.cfg, this package's source, the versions."""
    airflow_cfg = (
        os.environ.get("AIRFLOW_CONFIG")
        or Path(os.environ.get("AIRFLOW_HOME", "~/airflow"), "airflow.cfg").expanduser()
    )
    stamps = [_stat(paths.DBT_MANIFEST), _stat(Path(airflow_cfg))]
    for root, dirs, files in os.walk(paths.DBT_PROJECT_DIR):
        dirs[:] = sorted(d for d in dirs if d not in _PROJECT_SKIP)
        stamps += [_stat(Path(root, name)) for name in sorted(files)]
    stamps += [_stat(p) for p in sorted(_PACKAGE_DIR.glob("*.py"))]
    return _digest(tuple(stamps))


@functools.lru_cache(maxsize=64)
def _digest(stamps: tuple[tuple[str, int, int], ...]) -> str:
    """SHA-256 of those files' contents (memoised on path, size and mtime: one read per process)."""
    hasher = hashlib.sha256()
    for name, _, _ in stamps:
        hasher.update(name.encode() + b"\0")
        try:
            hasher.update(Path(name).read_bytes())
        except OSError:
            hasher.update(b"<missing>")
    for package in ("apache-airflow-task-sdk", "apache-airflow", "astronomer-cosmos"):
        hasher.update(f"{package}=={_version(package)}".encode())
    return hasher.hexdigest()


def _stat(path: Path) -> tuple[str, int, int]:
    try:
        info = path.stat()
        return str(path), info.st_size, info.st_mtime_ns
    except OSError:
        return str(path), -1, -1


@functools.cache
def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "none"


# -- render, store, restore ----------------------------------------------------------------------


class _Pickler(pickle.Pickler):
    """Pickles the group without the DAG it belongs to: that one is the DAG being built on a hit."""

    def __init__(self, file: io.BytesIO, dag: DAG, parent: TaskGroup) -> None:
        super().__init__(file, protocol=5)
        self.external = {id(dag): "dag", id(parent): "parent", id(parent.used_group_ids): "used_ids"}

    def persistent_id(self, obj: Any) -> str | None:
        return self.external.get(id(obj))


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, dag: DAG, parent: TaskGroup) -> None:
        super().__init__(file)
        self.external = {"dag": dag, "parent": parent, "used_ids": parent.used_group_ids}

    def persistent_load(self, pid: str) -> Any:
        return self.external[pid]


def _render_and_store(render: Callable[[], TaskGroup], dag: DAG, parent: TaskGroup, path: Path | None):
    tasks_before = set(dag.task_dict)
    ids_before = set(parent.used_group_ids)
    children_before = set(parent.children)
    params_before = dict(dag.params.items())
    doc_before = dag.doc_md or ""
    group = render()
    if path is None:
        log.info("render cache: rendered %s.%s (cache off)", dag.dag_id, group.group_id)
        return group
    doc_after = dag.doc_md or ""
    tasks = [task for task_id, task in dag.task_dict.items() if task_id not in tasks_before]
    # What _restore re-creates: one new child of the parent (the group) holding every new task,
    # text appended to doc_md, params added. Anything else: no cache for this DAG.
    if (
        not doc_after.startswith(doc_before)
        or set(parent.children) - children_before != {group.node_id}
        or {task.task_id for task in tasks} != {task.task_id for task in group.iter_tasks()}
    ):
        log.info("render cache: off for %s: the render changed the DAG in an unexpected way", dag.dag_id)
        return group
    payload = {
        "group": group,
        "tasks": tasks,
        "ids": sorted(set(parent.used_group_ids) - ids_before - {t.task_id for t in tasks}),
        "doc_suffix": doc_after[len(doc_before) :],
        "params": {
            name: dag.params.get_param(name)
            for name, value in dag.params.items()
            if name not in params_before or params_before[name] != value
        },
    }
    buffer = io.BytesIO()
    try:
        _Pickler(buffer, dag, parent).dump(payload)
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        # A name no other writer uses (containers sharing a volume can have the same pids).
        fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(buffer.getvalue())
            os.chmod(partial, 0o644)  # mkstemp's 0o600 would hide it from other uids of the deployment
            os.replace(partial, path)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
        _prune(path, dag.dag_id)
    except Exception as err:  # read-only deployment, unpicklable argument: parse without the cache
        log.warning(
            "render cache: rendered %s.%s, not written (every parse will render; set a writable "
            "ELT_RENDER_CACHE_DIR or ELT_RENDER_CACHE=off): %s",
            dag.dag_id,
            group.group_id,
            err,
        )
    else:
        log.info("render cache: rendered %s.%s and wrote %s", dag.dag_id, group.group_id, path)
    return group


def _prune(path: Path, dag_id: str) -> None:
    """Keep the newest KEEP_PER_DAG files of the DAG: old keys are never read again."""
    files = [p for p in path.parent.glob(f"{dag_id}-*.pickle") if p.stem.rpartition("-")[0] == dag_id]
    files.sort(key=lambda p: _stat(p)[2], reverse=True)  # another parser may prune at the same time
    for old in files[KEEP_PER_DAG:]:
        old.unlink(missing_ok=True)


def _restore(payload: dict[str, Any], dag: DAG, parent: TaskGroup) -> TaskGroup:
    group, tasks = payload["group"], payload["tasks"]
    taken = parent.used_group_ids & ({*payload["ids"], *(t.task_id for t in tasks)})
    if taken or group.node_id in parent.children:
        raise DuplicateTaskIdFound(
            f"Task or group ids {sorted(taken) or [group.node_id]} are already in the DAG"
        )
    # What building the group does: TaskGroup.__init__ adds the group to its parent (add() itself
    # refuses a group that already has children) and marks its ids used; each operator's
    # __init__ calls DAG.add_task.
    parent.children[group.node_id] = group
    parent.used_group_ids.update(payload["ids"])
    for task in tasks:
        dag.add_task(task)
    dag.doc_md = (dag.doc_md or "") + payload["doc_suffix"] if payload["doc_suffix"] else dag.doc_md
    for name, param in payload["params"].items():
        dag.params[name] = param
    return group
