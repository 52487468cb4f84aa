"""`GET /streams?sourceId=&destinationId=`: a source's streams, shaped like Airbyte's StreamProperties.

The catalog comes from discovering the source with PyAirbyte (a declarative manifest with
inline schemas discovers without network), cached per source configuration. Besides the
official fields each item carries `jsonSchema`, the stream's JSON schema: a local extension
(real Airbyte leaves it out) that lets `elt new-pipeline` cast columns to their types.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from . import errors
from .routes import Ctx, require_token
from .workspace import Source

streams = APIRouter(dependencies=[Depends(require_token)])
_cache: dict[str, list[dict[str, Any]]] = {}
_lock = threading.Lock()


def _fingerprint(source: Source) -> str:
    parts = [source.connector_name, source.pip_url, str(source.manifest), source.configuration]
    text = json.dumps(parts, sort_keys=True, default=str)
    if source.manifest is not None and source.manifest.is_file():
        text += source.manifest.read_text()
    return hashlib.sha256(text.encode()).hexdigest()


def stream_properties(stream: Any) -> dict[str, Any]:
    """One AirbyteStream (protocol model) as the public API's StreamProperties."""
    schema = stream.json_schema or {}
    properties = schema.get("properties") or {}
    modes = stream.supported_sync_modes or []
    sync_modes = []
    for mode in (m.value if hasattr(m, "value") else str(m) for m in modes):
        if mode == "full_refresh":
            sync_modes += ["full_refresh_overwrite", "full_refresh_append"]
        elif mode == "incremental":
            sync_modes += ["incremental_append", "incremental_deduped_history"]
    return {
        "streamName": stream.name,
        "syncModes": sync_modes,
        "defaultCursorField": list(stream.default_cursor_field or []),
        "sourceDefinedCursorField": bool(stream.source_defined_cursor),
        "sourceDefinedPrimaryKey": [list(key) for key in stream.source_defined_primary_key or []],
        "propertyFields": [[name] for name in properties],
        "streamnamespace": stream.namespace,
        "jsonSchema": schema,
    }


def discover(source: Source, connectors_dir: Any) -> list[dict[str, Any]]:
    key = _fingerprint(source)
    with _lock:
        if key not in _cache:
            from .sync import build_source  # PyAirbyte: imported only when a catalog is needed

            built = build_source(source, connectors_dir)
            _cache[key] = [stream_properties(s) for s in built.discovered_catalog.streams]
        return _cache[key]


@streams.get("/streams")
def get_streams(
    context: Ctx,
    source_id: Annotated[str, Query(alias="sourceId")],
    destination_id: Annotated[str | None, Query(alias="destinationId")] = None,
    ignore_cache: Annotated[bool, Query(alias="ignoreCache")] = False,
) -> list[dict[str, Any]]:
    ws = context.workspace
    source = ws.sources.get(source_id)
    if source is None:
        raise errors.not_found("source", source_id)
    if destination_id is not None and destination_id not in ws.destinations:
        raise errors.not_found("destination", destination_id)
    if ignore_cache:
        _cache.pop(_fingerprint(source), None)
    try:
        return discover(source, context.settings.connectors_dir)
    except Exception as err:  # a connector that cannot discover: Airbyte answers 400 with the reason
        raise errors.bad_request(f"source {source.name!r} could not be discovered: {err}") from None
