"""Run one job of a connection with PyAirbyte: read the source, write the warehouse's raw schema.

Each connection writes to its own schema, one table per stream. Sync modes map onto PyAirbyte's
write strategies; a read is done per (strategy, full refresh) group of streams:

    full_refresh_overwrite       replace  (force_full_refresh)
    full_refresh_append          append   (force_full_refresh)
    incremental_append           append
    incremental_deduped_history  merge    (on the primary key)

Incremental state is kept per connection in the server's store (not in the warehouse) and is
checkpointed as PyAirbyte commits each batch, like Airbyte does.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import airbyte as ab
import sqlalchemy
from airbyte._executors.declarative import DeclarativeExecutor
from airbyte.caches import PostgresCache
from airbyte.caches._catalog_backend import SqlCatalogBackend
from airbyte.caches._state_backend import SqlStateBackend
from airbyte.caches.base import CacheBase
from airbyte.caches.postgres import PostgresConfig
from airbyte.shared.catalog_providers import CatalogProvider
from airbyte.shared.state_providers import StateProviderBase, StaticInputState
from airbyte.shared.state_writers import StateWriterBase, StdOutStateWriter
from airbyte_cdk.entrypoint import AirbyteEntrypoint
from airbyte_cdk.sources.declarative.concurrent_declarative_source import ConcurrentDeclarativeSource
from airbyte_protocol.models import (
    AirbyteCatalog,
    AirbyteStateMessage,
    AirbyteStateType,
    ConfiguredAirbyteCatalog,
)
from pydantic import PrivateAttr

from .store import Store
from .workspace import Connection, Destination, Source, StreamConfig, Workspace

log = logging.getLogger(__name__)

INTERNAL_SCHEMA = "airbyte_internal"
GLOBAL_STATE_KEY = "__global__"
_STRATEGIES: dict[str, tuple[str, bool]] = {
    "full_refresh_overwrite": ("replace", True),
    "full_refresh_append": ("append", True),
    "incremental_append": ("append", False),
    "incremental_deduped_history": ("merge", False),
}


class SyncError(RuntimeError):
    """The job cannot run as configured (missing manifest, unknown stream, ...)."""


@dataclass(frozen=True)
class SyncStats:
    rows_synced: int = 0
    bytes_synced: int = 0


class StoreStateWriter(StateWriterBase):
    """Checkpoints the state messages of incremental streams into the server's store."""

    def __init__(self, store: Store, connection_id: str, incremental_streams: set[str]) -> None:
        super().__init__()
        self._store, self._connection_id, self._streams = store, connection_id, incremental_streams

    def _write_state(self, state_message: AirbyteStateMessage) -> None:
        if state_message.type == AirbyteStateType.GLOBAL:
            key = GLOBAL_STATE_KEY
        elif state_message.stream and state_message.stream.stream_descriptor.name in self._streams:
            key = state_message.stream.stream_descriptor.name
        else:
            return  # full-refresh streams start from scratch every time
        self._store.save_state(
            self._connection_id, key, state_message.model_dump(mode="json", exclude_none=True)
        )


class WarehouseCache(PostgresCache):
    """A PostgresCache for one connection's raw schema.

    Differences from PyAirbyte's: its bookkeeping tables (`_airbyte_streams`, `_airbyte_state`)
    go to `airbyte_internal` so the raw schema holds only stream tables, and state comes from
    and goes to the server's store.
    """

    _store: Store = PrivateAttr()
    _connection_id: str = PrivateAttr()
    _incremental_streams: set[str] = PrivateAttr()

    def __init__(
        self, *, store: Store, connection_id: str, incremental_streams: set[str], **data: Any
    ) -> None:
        # Replaces CacheBase.__init__ (PyAirbyte 0.71.3), which would create the bookkeeping
        # tables in the cache's own schema; the body is otherwise the same.
        super(CacheBase, self).__init__(**data)
        self._store, self._connection_id = store, connection_id
        self._incremental_streams = incremental_streams
        self._sql_processor_class(
            sql_config=self,
            catalog_provider=CatalogProvider(ConfiguredAirbyteCatalog(streams=[])),
            state_writer=StdOutStateWriter(),
            temp_dir=self.cache_dir,
            temp_file_cleanup=self.cleanup,
        )._ensure_schema_exists()
        internal = PostgresConfig(
            host=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            database=self.database,
            schema_name=INTERNAL_SCHEMA,
        )
        with internal.get_sql_engine().begin() as conn:
            conn.execute(sqlalchemy.text(f'CREATE SCHEMA IF NOT EXISTS "{INTERNAL_SCHEMA}"'))
        self._catalog_backend = SqlCatalogBackend(sql_config=internal, table_prefix=self.table_prefix or "")
        self._state_backend = SqlStateBackend(sql_config=internal, table_prefix=self.table_prefix or "")
        self._read_processor = self._sql_processor_class(
            sql_config=self,
            catalog_provider=self._catalog_backend.get_full_catalog_provider(),
            state_writer=StdOutStateWriter(),
            temp_dir=self.cache_dir,
            temp_file_cleanup=self.cleanup,
        )

    def get_sql_alchemy_connect_args(self) -> dict[str, Any]:
        # Naive timestamps PyAirbyte writes are UTC; make timestamptz casts agree.
        return {"options": "-c timezone=UTC"}

    def get_state_provider(
        self, source_name: str, *, refresh: bool = True, destination_name: str | None = None
    ) -> StateProviderBase:
        saved = self._store.load_state(self._connection_id)
        return StaticInputState([AirbyteStateMessage.model_validate(s) for s in saved.values()])

    def get_state_writer(self, source_name: str, destination_name: str | None = None) -> StateWriterBase:
        return StoreStateWriter(self._store, self._connection_id, self._incremental_streams)


@contextmanager
def _install_lock(directory: Path) -> Iterator[None]:
    """Serialise connector installs: parallel jobs may need the same connector venv."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".install.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pass_state_to_manifest_source(executor: DeclarativeExecutor) -> None:
    """Make PyAirbyte's declarative executor honour `--state`.

    PyAirbyte 0.71.3 builds ConcurrentDeclarativeSource without the incoming state, and that
    class only takes state in its constructor (read() ignores it), so every incremental sync of
    a manifest source would start from the beginning.
    """

    def execute(args: list[str], *, stdin: Any = None, suppress_stderr: bool = False) -> Iterator[str]:
        state = None
        if "--state" in args:
            state = ConcurrentDeclarativeSource.read_state(args[args.index("--state") + 1])
        declarative = ConcurrentDeclarativeSource(
            config={**executor._config_dict, **executor._config_from_args(args)},
            source_config=executor._manifest_dict,
            state=state,
        )
        entrypoint = AirbyteEntrypoint(declarative)
        yield from entrypoint.run(entrypoint.parse_args(executor.map_cli_args(args)))

    executor.execute = execute  # type: ignore[method-assign]


def build_source(source: Source, connectors_dir: Path) -> ab.Source:
    if source.manifest is not None:
        if not source.manifest.is_file():
            raise SyncError(f"source {source.name!r}: declarative manifest not found: {source.manifest}")
        built = ab.get_source(
            source.connector_name, source_manifest=source.manifest, config=source.configuration
        )
        _pass_state_to_manifest_source(built.executor)
        return built
    with _install_lock(connectors_dir):
        return ab.get_source(
            source.connector_name,
            pip_url=source.pip_url,
            config=source.configuration,
            install_root=connectors_dir,
        )


class SyncRunner:
    def __init__(
        self,
        workspace: Workspace,
        connection: Connection,
        store: Store,
        connectors_dir: Path,
        cache_dir: Path,
    ) -> None:
        self.connection = connection
        self.source_def: Source = workspace.sources[connection.source_id]
        self.destination: Destination = workspace.destinations[connection.destination_id]
        self.store = store
        self.connectors_dir = connectors_dir
        self.cache_dir = cache_dir

    def _cache(self) -> WarehouseCache:
        if self.destination.destination_type != "postgres":
            raise SyncError(f"destination {self.destination.name!r}: only postgres is supported")
        cfg = self.destination.configuration
        return WarehouseCache(
            store=self.store,
            connection_id=self.connection.id,
            incremental_streams={s.name for s in self.connection.streams if s.is_incremental},
            host=str(cfg["host"]),
            port=int(cfg.get("port", 5432)),
            username=str(cfg["username"]),
            password=str(cfg.get("password", "")),
            database=str(cfg["database"]),
            schema_name=self.connection.schema,
            table_prefix="",
            cache_dir=self.cache_dir,
        )

    def sync(self) -> SyncStats:
        started = datetime.now(UTC)
        streams = self.connection.streams
        overwrites = any(s.sync_mode == "full_refresh_overwrite" for s in streams)
        # A full-refresh overwrite starts a new generation of the connection's data.
        generation = (
            self.store.next_generation(self.connection.id)
            if overwrites
            else self.store.generation(self.connection.id)
        )
        source = build_source(self.source_def, self.connectors_dir)
        validated = self._use_known_catalog(source)
        unknown = {s.name for s in streams} - set(source.get_available_streams())
        if unknown:
            raise SyncError(
                f"connection {self.connection.name!r}: source {self.source_def.name!r} has no stream(s) "
                f"{', '.join(sorted(unknown))}"
            )
        source.set_primary_keys(**{s.name: [k[0] for k in s.primary_key] for s in streams if s.primary_key})
        source.set_cursor_keys(**{s.name: s.cursor_field[0] for s in streams if s.cursor_field})

        cache = self._cache()
        try:
            self._drop_stale_temp_tables(cache)
            rows = bytes_ = 0
            groups: dict[tuple[str, bool], list[StreamConfig]] = {}
            for s in streams:
                groups.setdefault(_STRATEGIES[s.sync_mode], []).append(s)
            for (strategy, full_refresh), group in groups.items():
                names = [s.name for s in group]
                log.info(
                    "reading %s with write strategy %s (full refresh: %s)", names, strategy, full_refresh
                )
                source.select_streams(names)
                # Tables exist even for streams without records, so dbt sources always resolve.
                cache.create_source_tables(source, names)
                result = source.read(
                    cache, write_strategy=strategy, force_full_refresh=full_refresh, skip_validation=validated
                )
                rows += result.processed_records
                # Bytes of the records as the connector emitted them (PyAirbyte's tally).
                bytes_ += result._progress_tracker.total_bytes_read
                self._finalize_tables(cache, names, generation, started)
            return SyncStats(rows_synced=rows, bytes_synced=bytes_)
        finally:
            cache.close()

    def _use_known_catalog(self, source: ab.Source) -> bool:
        """Reuse the catalog discovered by an earlier job (same source config); True if reused.

        Spawning the connector for spec + discover costs seconds per job; the first job of a
        configuration validates it and discovers, later ones only read.
        """
        fingerprint = json.dumps(
            [
                self.source_def.connector_name,
                self.source_def.pip_url,
                str(self.source_def.manifest),
                self.source_def.configuration,
            ],
            sort_keys=True,
            default=str,
        )
        if self.source_def.manifest is not None:
            fingerprint += self.source_def.manifest.read_text()
        config_hash = hashlib.sha256(fingerprint.encode()).hexdigest()
        known = self.store.load_catalog(self.connection.id, config_hash)
        if known is not None:
            source._discovered_catalog = AirbyteCatalog.model_validate(known)
            return True
        source.validate_config()
        self.store.save_catalog(
            self.connection.id,
            config_hash,
            source.discovered_catalog.model_dump(mode="json", exclude_none=True),
        )
        return False

    def reset(self) -> SyncStats:
        """Clear the connection: empty its stream tables, forget state, start a new generation."""
        generation = self.store.next_generation(self.connection.id)
        self.store.clear_state(self.connection.id)
        cache = self._cache()
        try:
            self._drop_stale_temp_tables(cache)
            with cache.get_sql_engine().begin() as conn:
                existing = set(sqlalchemy.inspect(conn).get_table_names(schema=self.connection.schema))
                for s in self.connection.streams:
                    if s.name in existing:
                        conn.execute(sqlalchemy.text(f"TRUNCATE TABLE {self._table(s.name)}"))
                        log.info("truncated %s (generation is now %d)", self._table(s.name), generation)
        finally:
            cache.close()
        return SyncStats()

    def _table(self, stream: str) -> str:
        return f'"{self.connection.schema}"."{stream}"'

    def _drop_stale_temp_tables(self, cache: WarehouseCache) -> None:
        """Drop PyAirbyte batch tables a killed job left behind (`<stream>_<9 chars>`, `_deleteme`)."""
        names = "|".join(re.escape(s.name) for s in self.connection.streams)
        stale = re.compile(rf"^(?:{names})_(?:[0-9a-z]{{9}}|deleteme)$")
        with cache.get_sql_engine().begin() as conn:
            for table in sqlalchemy.inspect(conn).get_table_names(schema=self.connection.schema):
                if stale.match(table):
                    log.warning("dropping stale batch table %s.%s", self.connection.schema, table)
                    conn.execute(sqlalchemy.text(f'DROP TABLE "{self.connection.schema}"."{table}"'))

    def _finalize_tables(
        self, cache: WarehouseCache, streams: list[str], generation: int, since: datetime
    ) -> None:
        """Bring PyAirbyte's tables to the raw-table contract (docs/contracts.md)."""
        with cache.get_sql_engine().begin() as conn:
            conn.execute(sqlalchemy.text("SET LOCAL timezone = 'UTC'"))
            for stream in streams:
                table = self._table(stream)
                conn.execute(
                    sqlalchemy.text(
                        f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS _airbyte_generation_id bigint"
                    )
                )
                extracted_type = conn.execute(
                    sqlalchemy.text(
                        "SELECT data_type FROM information_schema.columns "
                        "WHERE table_schema = :schema AND table_name = :table "
                        "AND column_name = '_airbyte_extracted_at'"
                    ),
                    {"schema": self.connection.schema, "table": stream},
                ).scalar_one()
                if extracted_type == "timestamp without time zone":
                    # PyAirbyte creates a naive column (replace recreates it); values are UTC.
                    conn.execute(
                        sqlalchemy.text(
                            f"ALTER TABLE {table} ALTER COLUMN _airbyte_extracted_at TYPE timestamptz "
                            "USING _airbyte_extracted_at AT TIME ZONE 'UTC'"
                        )
                    )
                # Rows written by this job (inserted, or updated by a merge) carry its generation.
                conn.execute(
                    sqlalchemy.text(
                        f"UPDATE {table} SET _airbyte_generation_id = :generation "
                        "WHERE _airbyte_generation_id IS NULL OR _airbyte_extracted_at >= :since"
                    ),
                    {"generation": generation, "since": since},
                )
