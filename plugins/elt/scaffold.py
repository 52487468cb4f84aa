"""`python -m elt new-pipeline NAME --connection ID`: a pipeline from an Airbyte connection.

Reads the connection, its source and the source's stream schemas through the provider's
AirbyteHook (the airbyte_api SDK), then writes the spec, the DAG file, a dbt sources file, one
staging model per stream with its YAML, and a tag selector. Never overwrites a file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from elt import paths

FRESHNESS = {"warn_after": {"count": 26, "period": "hour"}, "error_after": {"count": 50, "period": "hour"}}
# Airbyte's raw-table columns (destination v2 layout) that staging keeps.
EXTRACTED_AT = "_airbyte_extracted_at"
RAW_ID = "_airbyte_raw_id"
# Airbyte may run the source's discover for GET /streams: slower than other calls.
DISCOVER_TIMEOUT_MS = 300_000


class ScaffoldError(RuntimeError):
    """The pipeline cannot be scaffolded (name taken, file exists, connection unusable)."""


def identifier(name: str) -> str:
    """A SQL/spec identifier as Airbyte's Postgres writer names tables and columns (lowercase, `_`)."""
    normalized = re.sub(r"[^a-z0-9]", "_", name.lower())
    return f"_{normalized}" if normalized[:1].isdigit() else normalized


def snake_case(name: str) -> str:
    """The staging name of a column: camelCase and punctuation become snake_case."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    return re.sub(r"_+", "_", identifier(spaced)).strip("_") or identifier(name)


@dataclass
class Column:
    name: str  # as the source names it
    json_type: str | None = None  # JSON schema type, when the API tells it
    json_format: str | None = None

    @property
    def raw(self) -> str:
        return identifier(self.name)

    @property
    def staged(self) -> str:
        return snake_case(self.name)

    def select_expression(self) -> str:
        raw = self.raw
        if self.json_type == "string" and self.json_format == "date-time":
            return f"{{{{ to_utc_timestamp('{raw}') }}}}"
        cast = {
            "integer": "bigint",
            "number": "numeric",
            "boolean": "boolean",
            "object": "jsonb",
            "array": "jsonb",
            "string": "date" if self.json_format == "date" else "text",
        }.get(self.json_type or "")
        return f"{raw}::{cast}" if cast else raw


@dataclass
class Stream:
    name: str
    sync_mode: str
    cursor_field: list[str] = field(default_factory=list)
    primary_key: list[list[str]] = field(default_factory=list)
    columns: list[Column] = field(default_factory=list)

    @property
    def table(self) -> str:
        return identifier(self.name)

    def key_columns(self) -> list[Column]:
        by_name = {c.name: c for c in self.columns}
        return [by_name.get(part[0], Column(part[0])) for part in self.primary_key if part]


@dataclass
class ConnectionInfo:
    id: str
    name: str
    schema: str
    source_name: str
    streams: list[Stream]


def _json_type(schema: dict[str, Any]) -> tuple[str | None, str | None]:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    return kind, schema.get("format")


def _destination_schema(api: Any, connection: dict[str, Any]) -> str:
    definition = connection.get("namespaceDefinition") or "destination"
    if definition == "custom_format":
        schema = connection.get("namespaceFormat") or ""
        if "$" in schema:
            raise ScaffoldError(
                f"connection {connection['connectionId']}: namespaceFormat {schema!r} depends on the "
                "source namespace; set a fixed destination namespace in Airbyte first"
            )
        return schema
    if definition == "destination":
        from airbyte_api.api import GetDestinationRequest

        response = api.destinations.get_destination(
            request=GetDestinationRequest(destination_id=connection["destinationId"])
        )
        return (response.raw_response.json().get("configuration") or {}).get("schema") or "public"
    raise ScaffoldError(
        f"connection {connection['connectionId']}: namespaceDefinition {definition!r} names the schema "
        "after each stream's source namespace; set a fixed destination namespace in Airbyte first"
    )


def airbyte_client(airbyte_conn_id: str = "airbyte_default") -> Any:
    """The airbyte_api SDK client of the provider's AirbyteHook for an Airflow connection."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.providers.airbyte.hooks.airbyte import AirbyteHook

    try:
        return AirbyteHook(airbyte_conn_id=airbyte_conn_id).airbyte_api
    except AirflowNotFoundException:
        raise ScaffoldError(
            f"Airflow connection {airbyte_conn_id!r} is not defined: set AIRFLOW_CONN_{airbyte_conn_id.upper()} "
            "(the local stack writes it to .local/stack.env: `set -a; . .local/stack.env; set +a`)"
        ) from None


def read_connection(connection_id: str, airbyte_conn_id: str = "airbyte_default") -> ConnectionInfo:
    """The connection, its destination schema and its streams with their columns, from the Airbyte API."""
    from airbyte_api.errors import SDKError

    api = airbyte_client(airbyte_conn_id)
    try:
        return _read_connection(api, connection_id)
    except SDKError as err:
        raise ScaffoldError(
            f"Airbyte API: {err.status_code} for connection {connection_id}: {err.body[:300]}"
        ) from None


def _read_connection(api: Any, connection_id: str) -> ConnectionInfo:
    from airbyte_api.api import GetConnectionRequest, GetSourceRequest, GetStreamPropertiesRequest

    # Raw bodies: the SDK's closed unions drop keys of custom (declarative) sources.
    connection = api.connections.get_connection(
        request=GetConnectionRequest(connection_id=connection_id)
    ).raw_response.json()
    source = api.sources.get_source(
        request=GetSourceRequest(source_id=connection["sourceId"])
    ).raw_response.json()
    properties = api.streams.get_stream_properties(
        request=GetStreamPropertiesRequest(
            source_id=connection["sourceId"], destination_id=connection["destinationId"]
        ),
        timeout_ms=DISCOVER_TIMEOUT_MS,
    ).raw_response.json()
    by_name = {p["streamName"]: p for p in properties}
    prefix = connection.get("prefix") or ""
    streams = []
    for configured in (connection.get("configurations") or {}).get("streams") or []:
        name = configured["name"]
        offered = by_name.get(name)
        if offered is None:
            raise ScaffoldError(
                f"connection {connection_id}: stream {name!r} is configured but source "
                f"{source.get('name')!r} does not offer it (streams: {sorted(by_name)})"
            )
        schema_properties = (offered.get("jsonSchema") or {}).get("properties") or {}
        if schema_properties:
            columns = [Column(n, *_json_type(s)) for n, s in schema_properties.items()]
        else:  # the official API gives names only: no casts
            columns = [Column(path[0]) for path in offered.get("propertyFields") or [] if len(path) == 1]
        streams.append(
            Stream(
                name=prefix + name,
                sync_mode=configured.get("syncMode") or "full_refresh_overwrite",
                cursor_field=configured.get("cursorField") or offered.get("defaultCursorField") or [],
                primary_key=configured.get("primaryKey") or offered.get("sourceDefinedPrimaryKey") or [],
                columns=columns,
            )
        )
    if not streams:
        raise ScaffoldError(f"connection {connection_id}: no streams are selected in Airbyte")
    return ConnectionInfo(
        id=connection_id,
        name=identifier(connection.get("name") or "airbyte")[:60],
        schema=_destination_schema(api, connection),
        source_name=source.get("name") or connection["sourceId"],
        streams=streams,
    )


# -- rendering -------------------------------------------------------------------------------------


def render_spec(name: str, conn: ConnectionInfo, owner: str, schedule: str | None) -> str:
    streams = []
    for s in conn.streams:
        cursor = s.cursor_field[0] if s.sync_mode.startswith("incremental") and s.cursor_field else None
        streams.append({"name": s.table, "cursor_field": identifier(cursor)} if cursor else s.table)
    spec = {
        "name": name,
        "description": f"Syncs {conn.source_name} (Airbyte connection {conn.name!r}) into "
        f"{conn.schema}, then builds its staging models.",
        "owners": [owner],
        "tags": ["airbyte", "dbt"],
        "schedule": schedule,
        "start_date": "2024-01-01",
        "catchup": False,
        "airbyte": {
            "connections": [
                {"id": conn.id, "name": conn.name, "destination_schema": conn.schema, "streams": streams}
            ]
        },
        "dbt": {"selector": name},
    }
    header = f"# Scaffolded by `python -m elt new-pipeline {name} --connection {conn.id}`.\n"
    return header + yaml.safe_dump(spec, sort_keys=False, width=100)


def render_dag(name: str) -> str:
    return (
        f'"""Airflow DAG for include/pipelines/{name}.yaml; all logic lives in the plugins/elt package."""\n\n'
        "from elt.dag_factory import build_pipeline_dag\n\n"
        "dag = build_pipeline_dag(__file__)\n"
    )


def _key_tests(stream: Stream) -> set[str]:
    return {c.raw for c in stream.key_columns()}


def render_sources(name: str, conn: ConnectionInfo) -> str:
    tables = []
    for s in conn.streams:
        keys = _key_tests(s)
        columns = []
        for c in s.columns:
            column: dict[str, Any] = {"name": c.raw, "description": f"`{c.name}` as the source sends it."}
            if c.raw in keys:
                column["data_tests"] = ["not_null"]
            columns.append(column)
        tables.append(
            {
                "name": s.table,
                "description": f"Stream {s.name!r} ({s.sync_mode}) of Airbyte connection {conn.name!r}.",
                "columns": columns,
            }
        )
    body = {
        "version": 2,
        "sources": [
            {
                "name": name,
                "description": f"{conn.source_name}, synced by Airbyte connection {conn.name!r} ({conn.id}).",
                "schema": conn.schema,
                "config": {"tags": [name], "loaded_at_field": EXTRACTED_AT, "freshness": FRESHNESS},
                "tables": tables,
            }
        ],
    }
    return yaml.safe_dump(body, sort_keys=False, width=100)


def model_name(name: str, stream: Stream) -> str:
    return f"stg_{name}__{stream.table}"


def render_model_sql(name: str, stream: Stream) -> str:
    lines = [f"        {c.select_expression()} as {c.staged}," for c in stream.columns]
    lines.append(f"        {RAW_ID} as airbyte_raw_id,")
    lines.append(f"        {EXTRACTED_AT} as extracted_at")
    sql = (
        "with\n\nsource as (\n\n"
        f"    select * from {{{{ source('{name}', '{stream.table}') }}}}\n\n),\n\n"
        "renamed as (\n\n    select\n" + "\n".join(lines) + "\n\n    from source\n\n)"
    )
    keys = [c.staged for c in stream.key_columns()]
    if keys:
        key = ", ".join(keys)
        sql += (
            ",\n\n-- Append syncs and re-syncs can land a key more than once: keep the latest.\n"
            f"deduplicated as (\n\n    select distinct on ({key}) *\n    from renamed\n"
            f"    order by {key}, extracted_at desc\n\n)\n\nselect * from deduplicated\n"
        )
    else:
        sql += "\n\nselect * from renamed\n"
    return sql


def render_models(name: str, conn: ConnectionInfo) -> str:
    models = []
    for s in conn.streams:
        keys = {c.staged for c in s.key_columns()} or {"airbyte_raw_id"}
        columns = []
        for c in [*s.columns, Column(RAW_ID), Column(EXTRACTED_AT)]:
            staged = {"_airbyte_raw_id": "airbyte_raw_id", EXTRACTED_AT: "extracted_at"}.get(c.name, c.staged)
            column: dict[str, Any] = {"name": staged, "description": f"From `{c.name}`."}
            if staged in keys:
                column["description"] += " Primary key."
                column["data_tests"] = ["unique", "not_null"]
            columns.append(column)
        models.append(
            {
                "name": model_name(name, s),
                "description": f"Stream {s.name!r} of {conn.source_name}, renamed and cast"
                + (", one row per primary key." if s.primary_key else "."),
                "config": {"tags": [name]},
                "columns": columns,
            }
        )
    return yaml.safe_dump({"version": 2, "models": models}, sort_keys=False, width=100)


def render_selector(name: str, conn: ConnectionInfo) -> str:
    return (
        f"  - name: {name}\n"
        f"    description: Airbyte connection {conn.name} ({conn.schema}) -> staging models.\n"
        f"    definition:\n      method: tag\n      value: {name}\n"
    )


# -- writing ----------------------------------------------------------------------------------------


def planned_files(name: str, conn: ConnectionInfo, owner: str, schedule: str | None) -> dict[Path, str]:
    staging = paths.DBT_PROJECT_DIR / "models" / "staging" / name
    files = {
        paths.PIPELINES_DIR / f"{name}.yaml": render_spec(name, conn, owner, schedule),
        paths.REPO / "dags" / f"{name}.py": render_dag(name),
        staging / f"_{name}__sources.yml": render_sources(name, conn),
        staging / f"_{name}__models.yml": render_models(name, conn),
    }
    for s in conn.streams:
        files[staging / f"{model_name(name, s)}.sql"] = render_model_sql(name, s)
    return files


def _existing_selectors(path: Path) -> set[str]:
    if not path.exists():
        return set()
    raw = yaml.safe_load(path.read_text()) or {}
    return {s.get("name") for s in raw.get("selectors") or []}


def new_pipeline(
    name: str,
    connection_id: str,
    *,
    airbyte_conn_id: str = "airbyte_default",
    owner: str = "data-platform",
    schedule: str | None = "@daily",
) -> list[Path]:
    """Write every file of a new pipeline; refuse if any of them (or the selector) exists."""
    from elt.spec import spec_files

    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ScaffoldError(f"pipeline name {name!r}: use lowercase letters, digits and _ (it is the dag_id)")
    taken = [p for p in spec_files() if p.stem == name or _spec_name(p) == name]
    if taken:
        raise ScaffoldError(f"pipeline name {name!r} is already used by {taken[0]}")
    selectors = paths.DBT_PROJECT_DIR / "selectors.yml"
    if name in _existing_selectors(selectors):
        raise ScaffoldError(f"{selectors}: a selector named {name!r} exists already")
    conn = read_connection(connection_id, airbyte_conn_id)
    files = planned_files(name, conn, owner, schedule)
    existing = [p for p in files if p.exists()]
    if existing:
        raise ScaffoldError("refusing to overwrite: " + ", ".join(str(p) for p in existing))
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if not selectors.exists():
        selectors.write_text("selectors:\n")
    text = selectors.read_text()
    selectors.write_text(text + ("" if text.endswith("\n") else "\n") + render_selector(name, conn))
    return [*files, selectors]


def _spec_name(path: Path) -> str | None:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None
    return raw.get("name") if isinstance(raw, dict) else None
