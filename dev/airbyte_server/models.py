"""Public API response bodies, shaped exactly as `airbyte_api.models` (SDK 1.0.1) parses them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .store import Job
from .workspace import Connection, Destination, Source, Workspace, mask_secrets


def iso_timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_duration(seconds: float) -> str:
    """ISO-8601 duration the way Airbyte prints it: PT1M2S, PT3H0M5S, PT0S."""
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"PT{hours}H{minutes}M{secs}S"
    if minutes:
        return f"PT{minutes}M{secs}S"
    return f"PT{secs}S"


def job_response(job: Job, now: datetime | None = None) -> dict[str, Any]:
    # Airbyte's startTime is when the job was created; duration runs until it ended (or now).
    end = job.ended_at or now or datetime.now(UTC)
    return {
        "jobId": job.job_id,
        "status": job.status,
        "jobType": job.job_type,
        "connectionId": job.connection_id,
        "startTime": iso_timestamp(job.created_at),
        "lastUpdatedAt": iso_timestamp(job.updated_at),
        "duration": iso_duration((end - job.created_at).total_seconds()),
        "rowsSynced": job.rows_synced,
        "bytesSynced": job.bytes_synced,
    }


def connection_response(ws: Workspace, conn: Connection) -> dict[str, Any]:
    return {
        "connectionId": conn.id,
        "name": conn.name,
        "sourceId": conn.source_id,
        "destinationId": conn.destination_id,
        "workspaceId": ws.id,
        "status": conn.status,
        "createdAt": conn.created_at,
        "schedule": {"scheduleType": "manual"},
        "namespaceDefinition": "custom_format",
        "namespaceFormat": conn.schema,
        "prefix": "",
        "nonBreakingSchemaUpdatesBehavior": "ignore",
        "tags": [],
        "configurations": {
            "streams": [
                {
                    "name": s.name,
                    "syncMode": s.sync_mode,
                    "cursorField": s.cursor_field,
                    "primaryKey": s.primary_key,
                }
                for s in conn.streams
            ]
        },
    }


def source_response(ws: Workspace, source: Source) -> dict[str, Any]:
    configuration = mask_secrets(source.configuration)
    if source.manifest is None:
        configuration["sourceType"] = source.source_type
    # else: a custom declarative source has no sourceType in the SDK's closed union, so none is
    # sent and the SDK maps the configuration onto whichever generic model accepts it; read
    # `raw_response.json()` for the real keys.
    return {
        "sourceId": source.id,
        "name": source.name,
        "sourceType": source.source_type,
        "definitionId": source.definition_id,
        "workspaceId": ws.id,
        "createdAt": 0,
        "configuration": configuration,
    }


def destination_response(ws: Workspace, dest: Destination) -> dict[str, Any]:
    return {
        "destinationId": dest.id,
        "name": dest.name,
        "destinationType": dest.destination_type,
        "definitionId": dest.definition_id,
        "workspaceId": ws.id,
        "createdAt": 0,
        "configuration": {**mask_secrets(dest.configuration), "destinationType": dest.destination_type},
    }


def workspace_response(ws: Workspace) -> dict[str, Any]:
    return {"workspaceId": ws.id, "name": ws.name, "dataResidency": ws.data_residency, "notifications": {}}


def page(
    data: list[dict[str, Any]], base_url: str, limit: int, offset: int, has_more: bool
) -> dict[str, Any]:
    """A list response with Airbyte's `next`/`previous` links (absent at either end)."""
    body: dict[str, Any] = {"data": data}
    sep = "&" if "?" in base_url else "?"
    if has_more:
        body["next"] = f"{base_url}{sep}limit={limit}&offset={offset + limit}"
    if offset > 0:
        body["previous"] = f"{base_url}{sep}limit={limit}&offset={max(offset - limit, 0)}"
    return body
