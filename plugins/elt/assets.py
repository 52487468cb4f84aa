"""Asset URIs for raw tables, identical to the ones Cosmos gives the matching dbt sources.

Cosmos (through OpenLineage) names a Postgres table `postgres://HOST:PORT/DATABASE/SCHEMA/TABLE`.
The Airbyte wait task publishes each stream it loaded under that URI, so the asset graph
reads Airbyte stream -> dbt source -> models. The warehouse address is read from the
environment only (parsing a DAG never looks up a connection).
"""

from __future__ import annotations

import json
import os
from urllib.parse import urlsplit

from airflow.sdk import Asset

DEFAULT_NAMESPACE = ("postgres://warehouse:5432", "warehouse")


def warehouse_namespace() -> tuple[str, str]:
    """(`postgres://HOST:PORT`, database) of the `warehouse` connection, from the environment."""
    explicit = os.environ.get("ELT_WAREHOUSE_ASSET_NAMESPACE")
    if explicit:
        parts = urlsplit(explicit)
        return f"{parts.scheme}://{parts.hostname}:{parts.port or 5432}", parts.path.strip("/") or "warehouse"
    raw = os.environ.get("AIRFLOW_CONN_WAREHOUSE")
    if not raw:
        return DEFAULT_NAMESPACE
    if raw.lstrip().startswith("{"):
        conn = json.loads(raw)
        host, port, database = conn.get("host"), conn.get("port") or 5432, conn.get("schema") or "warehouse"
    else:
        parts = urlsplit(raw)
        host, port, database = parts.hostname, parts.port or 5432, parts.path.strip("/") or "warehouse"
    return f"postgres://{host}:{port}", database


def raw_table_asset(schema: str, table: str) -> Asset:
    namespace, database = warehouse_namespace()
    return Asset(uri=f"{namespace}/{database}/{schema}/{table}", group="airbyte")
