"""`python -m elt check [--airbyte]`: do the specs, the dbt sources and Airbyte agree?

Without `--airbyte` it reads only files (specs and the compiled dbt manifest), so `make
test-fast` runs it. With `--airbyte` it also reads each spec's connections from the Airbyte API.
Every problem names the file and the field.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from elt import paths
from elt.spec import PipelineSpec, Problem, SpecError, check_specs, display, parse_spec, spec_files


def _connections(spec: PipelineSpec) -> list[Any]:
    airbyte = getattr(spec, "airbyte", None)  # None for a dbt-only pipeline
    return list(airbyte.connections) if airbyte else []


def load_specs(directory: Path | None = None) -> tuple[dict[Path, PipelineSpec], list[Problem]]:
    """Each spec file on its own (no manifest or environment needed): the specs that parse, the rest as problems."""
    specs, problems = {}, []
    for path in spec_files(directory):
        try:
            specs[path] = parse_spec(path)
        except SpecError as err:
            problems += [Problem(err.file, field, message) for field, message in err.problems]
    return specs, problems


def read_manifest(manifest: Path | None = None) -> dict[str, Any]:
    manifest = manifest or paths.DBT_MANIFEST
    if not manifest.exists():
        raise FileNotFoundError(f"dbt manifest {display(manifest)} not found: run `make dbt-manifest`")
    return json.loads(manifest.read_text())


def dbt_problems(specs: dict[Path, PipelineSpec], manifest: dict[str, Any]) -> list[Problem]:
    """Each spec stream has a dbt source on the same schema and table, and each source in a synced schema a stream."""
    project = manifest.get("metadata", {}).get("project_name")
    sources = [s for s in manifest.get("sources", {}).values() if s.get("package_name") == project]
    tables = {(s["schema"], s.get("identifier") or s["name"]) for s in sources}
    by_table: dict[str, set[str]] = defaultdict(set)
    for schema, table in tables:
        by_table[table].add(schema)
    synced: set[tuple[str, str]] = set()
    problems = []
    for path, spec in specs.items():
        file = display(path)
        for i, conn in enumerate(_connections(spec)):
            for j, stream in enumerate(conn.streams):
                synced.add((conn.destination_schema, stream.name))
                if (conn.destination_schema, stream.name) in tables:
                    continue
                elsewhere = sorted(by_table.get(stream.name, ()))
                hint = f" (dbt has it in schema {', '.join(elsewhere)})" if elsewhere else ""
                problems.append(
                    Problem(
                        file,
                        f"airbyte.connections.{i}.streams.{j}",
                        f"no dbt source reads {conn.destination_schema}.{stream.name}{hint}",
                    )
                )
    # Sources in a schema some connection writes, but that no connection syncs.
    schemas = {schema for schema, _ in synced}
    for s in sources:
        table = s.get("identifier") or s["name"]
        if s["schema"] in schemas and (s["schema"], table) not in synced:
            problems.append(
                Problem(
                    s["original_file_path"],
                    f"sources.{s['source_name']}.tables.{s['name']}",
                    f"reads {s['schema']}.{table}, but no pipeline's connection syncs that stream",
                )
            )
    return problems


def airbyte_problems(specs: dict[Path, PipelineSpec], api: Any) -> list[Problem]:
    """Each spec connection against the live Airbyte: exists, schema, streams, cursors."""
    from airbyte_api.api import GetConnectionRequest
    from airbyte_api.errors import SDKError

    problems = []
    for path, spec in specs.items():
        file = display(path)
        for i, conn in enumerate(_connections(spec)):
            at = f"airbyte.connections.{i}"
            try:
                response = api.connections.get_connection(
                    request=GetConnectionRequest(connection_id=str(conn.id))
                )
            except SDKError as err:
                problems.append(
                    Problem(file, f"{at}.id", f"Airbyte has no connection {conn.id} ({err.status_code})")
                )
                continue
            body = response.raw_response.json()
            schema = (
                body.get("namespaceFormat") if body.get("namespaceDefinition") == "custom_format" else None
            )
            if schema is not None and schema != conn.destination_schema:
                problems.append(
                    Problem(
                        file,
                        f"{at}.destination_schema",
                        f"{conn.destination_schema!r}, but Airbyte connection {conn.id} writes into {schema!r}",
                    )
                )
            configured = {s["name"]: s for s in (body.get("configurations") or {}).get("streams") or []}
            prefix = body.get("prefix") or ""
            for j, stream in enumerate(conn.streams):
                airbyte_stream = configured.get(stream.name.removeprefix(prefix)) if prefix else None
                airbyte_stream = airbyte_stream or configured.get(stream.name)
                if airbyte_stream is None:
                    problems.append(
                        Problem(
                            file,
                            f"{at}.streams.{j}",
                            f"stream {stream.name!r} is not synced by Airbyte connection {conn.id} "
                            f"(it syncs {sorted(configured)})",
                        )
                    )
                    continue
                mode = airbyte_stream.get("syncMode") or ""
                cursor = airbyte_stream.get("cursorField") or []
                if stream.cursor_field and not mode.startswith("incremental"):
                    problems.append(
                        Problem(
                            file,
                            f"{at}.streams.{j}.cursor_field",
                            f"backfills rely on cursor {stream.cursor_field!r}, but Airbyte syncs "
                            f"{stream.name!r} as {mode or 'unknown'} (no cursor)",
                        )
                    )
                elif stream.cursor_field and cursor and cursor != [stream.cursor_field]:
                    problems.append(
                        Problem(
                            file,
                            f"{at}.streams.{j}.cursor_field",
                            f"{stream.cursor_field!r}, but Airbyte's cursor for {stream.name!r} is {cursor}",
                        )
                    )
    return problems


def run_check(
    with_airbyte: bool = False,
    airbyte_conn_id: str = "airbyte_default",
    directory: Path | None = None,
    manifest: Path | None = None,
) -> list[Problem]:
    """The specs on their own and across files (elt.spec.check_specs), against the dbt sources, and
    with `with_airbyte` against the live Airbyte and the environment's alert connections."""
    manifest = manifest or paths.DBT_MANIFEST
    connection_type = None
    if with_airbyte:
        from elt.connections import airflow_connection_type

        connection_type = airflow_connection_type
    problems = check_specs(directory, manifest, connection_type=connection_type)
    specs, _ = load_specs(directory)  # their problems are in check_specs' list already
    problems += dbt_problems(specs, read_manifest(manifest))
    if with_airbyte:
        from elt.scaffold import airbyte_client

        problems += airbyte_problems(specs, airbyte_client(airbyte_conn_id))
    return problems
