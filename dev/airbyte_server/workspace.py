"""Load include/airbyte/workspace.yaml: the workspace, its destination, sources and connections.

Secrets are never written in the file: any string may reference the environment as `${VAR}`
or `${VAR:-default}`, resolved when the file is loaded. A value that is exactly one reference
takes the YAML type of the variable's value when that is a number or a boolean (so
`port: ${WAREHOUSE_PORT}` is an int); everything else stays a string. A mapping key whose
value resolves to an empty string is dropped (optional connector settings).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SYNC_MODES = (
    "full_refresh_overwrite",
    "full_refresh_append",
    "incremental_append",
    "incremental_deduped_history",
)
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_KEYS = ("password", "secret", "token", "api_key", "apikey", "credentials")


class WorkspaceError(ValueError):
    """workspace.yaml is malformed or references something that does not exist."""


@dataclass(frozen=True)
class StreamConfig:
    name: str
    sync_mode: str
    cursor_field: list[str] = field(default_factory=list)
    primary_key: list[list[str]] = field(default_factory=list)

    @property
    def is_incremental(self) -> bool:
        return self.sync_mode.startswith("incremental")


@dataclass(frozen=True)
class Source:
    id: str
    name: str
    source_type: str
    definition_id: str
    configuration: dict[str, Any]
    # Exactly one of the two: a PyPI-installed connector or a declarative manifest file.
    connector_name: str | None = None
    pip_url: str | None = None
    manifest: Path | None = None


@dataclass(frozen=True)
class Destination:
    id: str
    name: str
    destination_type: str
    definition_id: str
    configuration: dict[str, Any]


@dataclass(frozen=True)
class Connection:
    id: str
    name: str
    source_id: str
    destination_id: str
    schema: str
    streams: list[StreamConfig]
    status: str = "active"
    created_at: int = 0


@dataclass(frozen=True)
class Workspace:
    id: str
    name: str
    data_residency: str
    destinations: dict[str, Destination]
    sources: dict[str, Source]
    connections: dict[str, Connection]

    def connection(self, connection_id: str) -> Connection | None:
        return self.connections.get(connection_id)


def resolve_env(value: Any, where: str, env: Mapping[str, str] | None = None) -> Any:
    """Replace `${VAR}` references in every string of `value`; name the variable and place if unset."""
    env = os.environ if env is None else env
    if isinstance(value, dict):
        resolved = {k: resolve_env(v, f"{where}.{k}", env) for k, v in value.items()}
        # `key: ${OPTIONAL:-}` that resolves empty means "not set": leave the key out.
        return {
            k: v
            for k, v in resolved.items()
            if not (v == "" and isinstance(value[k], str) and _REFERENCE.search(value[k]))
        }
    if isinstance(value, list):
        return [resolve_env(v, f"{where}[{i}]", env) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if env.get(name):
            return env[name]
        if default is not None:
            return default
        raise WorkspaceError(f"{where} references ${{{name}}}, but environment variable {name} is not set")

    resolved = _REFERENCE.sub(substitute, value)
    if _REFERENCE.fullmatch(value):
        typed = yaml.safe_load(resolved) if resolved else resolved
        if isinstance(typed, (bool, int, float)):
            return typed
    return resolved


def mask_secrets(configuration: dict[str, Any]) -> dict[str, Any]:
    """Mask secret-looking values the way Airbyte's API does in GET responses."""
    masked: dict[str, Any] = {}
    for key, value in configuration.items():
        if isinstance(value, dict):
            masked[key] = mask_secrets(value)
        elif any(marker in key.lower() for marker in _SECRET_KEYS):
            masked[key] = "**********"
        else:
            masked[key] = value
    return masked


def _require(mapping: dict[str, Any], key: str, where: str) -> Any:
    if key not in mapping or mapping[key] in (None, ""):
        raise WorkspaceError(f"{where}: missing required key {key!r}")
    return mapping[key]


def _load_stream(raw: dict[str, Any], where: str) -> StreamConfig:
    name = _require(raw, "name", where)
    sync_mode = _require(raw, "sync_mode", where)
    if sync_mode not in SYNC_MODES:
        raise WorkspaceError(f"{where}: sync_mode {sync_mode!r} is not one of {', '.join(SYNC_MODES)}")
    cursor = raw.get("cursor_field") or []
    primary_key = [[part] if isinstance(part, str) else list(part) for part in raw.get("primary_key") or []]
    if sync_mode.startswith("incremental") and not cursor:
        raise WorkspaceError(f"{where}: incremental stream {name!r} needs a cursor_field")
    if sync_mode == "incremental_deduped_history" and not primary_key:
        raise WorkspaceError(f"{where}: deduped stream {name!r} needs a primary_key")
    if any(len(part) != 1 for part in primary_key) or len(cursor) > 1:
        # PyAirbyte keys tables on top-level columns only.
        raise WorkspaceError(f"{where}: nested primary keys or cursor fields are not supported")
    return StreamConfig(name=name, sync_mode=sync_mode, cursor_field=list(cursor), primary_key=primary_key)


def load_workspace(path: Path, env: Mapping[str, str] | None = None) -> Workspace:
    """Parse and validate the workspace file, resolving `${VAR}` references from `env`."""
    if not path.is_file():
        raise WorkspaceError(f"workspace file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    where = path.name

    ws = _require(raw, "workspace", where)
    destinations: dict[str, Destination] = {}
    for i, d in enumerate(raw.get("destinations") or []):
        at = f"{where}: destinations[{i}]"
        dest = Destination(
            id=str(_require(d, "id", at)),
            name=_require(d, "name", at),
            destination_type=_require(d, "type", at),
            definition_id=str(_require(d, "definition_id", at)),
            configuration=resolve_env(d.get("configuration") or {}, f"{at}.configuration", env),
        )
        destinations[dest.id] = dest

    sources: dict[str, Source] = {}
    for i, s in enumerate(raw.get("sources") or []):
        at = f"{where}: sources[{i}]"
        connector = _require(s, "connector", at)
        manifest = connector.get("manifest")
        if bool(manifest) == bool(connector.get("pip_url")):
            raise WorkspaceError(f"{at}.connector: set exactly one of 'manifest' or 'pip_url'")
        source = Source(
            id=str(_require(s, "id", at)),
            name=_require(s, "name", at),
            source_type=_require(s, "type", at),
            definition_id=str(_require(s, "definition_id", at)),
            configuration=resolve_env(s.get("configuration") or {}, f"{at}.configuration", env),
            connector_name=_require(connector, "name", f"{at}.connector"),
            pip_url=connector.get("pip_url"),
            # Relative to the workspace file; existence is checked when a sync needs it.
            manifest=(path.parent / manifest).resolve() if manifest else None,
        )
        sources[source.id] = source

    connections: dict[str, Connection] = {}
    for i, c in enumerate(raw.get("connections") or []):
        at = f"{where}: connections[{i}]"
        conn = Connection(
            id=str(_require(c, "id", at)),
            name=_require(c, "name", at),
            source_id=str(_require(c, "source_id", at)),
            destination_id=str(_require(c, "destination_id", at)),
            schema=_require(c, "schema", at),
            streams=[_load_stream(st, f"{at}.streams[{j}]") for j, st in enumerate(c.get("streams") or [])],
            status=c.get("status", "active"),
            created_at=int(c.get("created_at", 0)),
        )
        if conn.source_id not in sources:
            raise WorkspaceError(f"{at}: source_id {conn.source_id} is not a source in this workspace")
        if conn.destination_id not in destinations:
            raise WorkspaceError(
                f"{at}: destination_id {conn.destination_id} is not a destination in this workspace"
            )
        if not conn.streams:
            raise WorkspaceError(f"{at}: connection {conn.name!r} has no streams")
        connections[conn.id] = conn

    return Workspace(
        id=str(_require(ws, "id", f"{where}: workspace")),
        name=_require(ws, "name", f"{where}: workspace"),
        data_residency=ws.get("data_residency", "auto"),
        destinations=destinations,
        sources=sources,
        connections=connections,
    )
