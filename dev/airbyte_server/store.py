"""Jobs, connector state and generations, persisted in the server's own Postgres database.

Shared by the API server and the sync workers (each worker opens its own short connection).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

# `incomplete`: an attempt was interrupted and the next one has not started yet (still active).
ACTIVE_STATUSES = ("pending", "running", "incomplete")
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id         bigserial PRIMARY KEY,
    connection_id  text        NOT NULL,
    job_type       text        NOT NULL,
    status         text        NOT NULL DEFAULT 'pending',
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    ended_at       timestamptz,
    rows_synced    bigint      NOT NULL DEFAULT 0,
    bytes_synced   bigint      NOT NULL DEFAULT 0,
    pid            integer,
    message        text
);
-- Airbyte runs at most one job per connection; the index makes the check race-free.
DROP INDEX IF EXISTS jobs_one_active_per_connection;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_one_active_per_connection_v2
    ON jobs (connection_id) WHERE status IN ('pending', 'running', 'incomplete');
CREATE INDEX IF NOT EXISTS jobs_connection_created ON jobs (connection_id, created_at);

-- One row per attempt of a job (Airbyte's attempts), numbered from 0; `failure` is one entry of
-- Airbyte's failureSummary.failures; `log_offset` is where the attempt's lines start in job.log.
CREATE TABLE IF NOT EXISTS attempts (
    job_id         bigint      NOT NULL REFERENCES jobs (job_id),
    attempt_number integer     NOT NULL,
    status         text        NOT NULL DEFAULT 'running',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    ended_at       timestamptz,
    rows_synced    bigint      NOT NULL DEFAULT 0,
    bytes_synced   bigint      NOT NULL DEFAULT 0,
    failure        jsonb,
    log_offset     bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, attempt_number)
);

-- Latest state message per stream (or '__global__'), carried from one job to the next.
CREATE TABLE IF NOT EXISTS connection_state (
    connection_id  text        NOT NULL,
    stream         text        NOT NULL,
    state          jsonb       NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection_id, stream)
);

-- The discovered catalog per connection, reused while the source configuration is unchanged
-- (Airbyte also keeps a connection's catalog instead of discovering before every sync).
CREATE TABLE IF NOT EXISTS connection_catalog (
    connection_id  text        PRIMARY KEY,
    config_hash    text        NOT NULL,
    catalog        jsonb       NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS connection_generation (
    connection_id  text   PRIMARY KEY,
    generation_id  bigint NOT NULL
);
"""


class ConnectionBusyError(Exception):
    """A job of the connection is already pending or running."""


@dataclass(frozen=True)
class Job:
    job_id: int
    connection_id: str
    job_type: str
    status: str
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    ended_at: datetime | None
    rows_synced: int
    bytes_synced: int
    pid: int | None
    message: str | None

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES


@dataclass(frozen=True)
class Attempt:
    job_id: int
    attempt_number: int
    status: str
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    rows_synced: int
    bytes_synced: int
    failure: dict[str, Any] | None
    log_offset: int


@dataclass(frozen=True)
class JobFilter:
    connection_id: str | None = None
    status: str | None = None
    job_type: str | None = None
    created_at_start: datetime | None = None
    created_at_end: datetime | None = None
    updated_at_start: datetime | None = None
    updated_at_end: datetime | None = None
    order_column: str = "created_at"
    descending: bool = True
    limit: int = 20
    offset: int = 0


def ensure_database(db_url: str) -> None:
    """Create the database named in `db_url` if it does not exist yet (dev convenience)."""
    try:
        psycopg.connect(db_url, connect_timeout=10).close()
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
        info = psycopg.conninfo.conninfo_to_dict(db_url)
        name = info.pop("dbname")
        with psycopg.connect(psycopg.conninfo.make_conninfo(**info, dbname="postgres"), autocommit=True) as c:
            c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


class Store:
    def __init__(self, db_url: str, *, pool_size: int = 8) -> None:
        self._pool = ConnectionPool(
            db_url, min_size=1, max_size=pool_size, kwargs={"row_factory": dict_row}, open=True
        )

    def close(self) -> None:
        self._pool.close()

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        with self._pool.connection() as conn, conn.transaction():
            yield conn

    def create_schema(self) -> None:
        with self._tx() as conn:
            # Several servers may start against one database in tests; serialise DDL.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('local_airbyte_schema'))")
            conn.execute(_SCHEMA)

    # -- jobs -----------------------------------------------------------------------------------

    def create_job(self, connection_id: str, job_type: str) -> Job:
        with self._tx() as conn:
            # Check under a per-connection lock so a refused job does not burn a job id;
            # the unique index stays the backstop.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (connection_id,))
            busy = conn.execute(
                "SELECT 1 FROM jobs WHERE connection_id = %s AND status = ANY(%s)",
                (connection_id, list(ACTIVE_STATUSES)),
            ).fetchone()
            if busy:
                raise ConnectionBusyError(connection_id)
            row = conn.execute(
                "INSERT INTO jobs (connection_id, job_type) VALUES (%s, %s) RETURNING *",
                (connection_id, job_type),
            ).fetchone()
        return Job(**row)

    def get_job(self, job_id: int) -> Job | None:
        with self._tx() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE job_id = %s", (job_id,)).fetchone()
        return Job(**row) if row else None

    def list_jobs(self, f: JobFilter) -> list[Job]:
        clauses = [sql.SQL("TRUE")]
        params: list[Any] = []
        for column, op, value in (
            ("connection_id", "=", f.connection_id),
            ("status", "=", f.status),
            ("job_type", "=", f.job_type),
            ("created_at", ">=", f.created_at_start),
            ("created_at", "<=", f.created_at_end),
            ("updated_at", ">=", f.updated_at_start),
            ("updated_at", "<=", f.updated_at_end),
        ):
            if value is not None:
                clauses.append(sql.SQL("{} {} %s").format(sql.Identifier(column), sql.SQL(op)))
                params.append(value)
        query = sql.SQL("SELECT * FROM jobs WHERE {} ORDER BY {} {}, job_id {} LIMIT %s OFFSET %s").format(
            sql.SQL(" AND ").join(clauses),
            sql.Identifier(f.order_column),
            sql.SQL("DESC" if f.descending else "ASC"),
            sql.SQL("DESC" if f.descending else "ASC"),
        )
        with self._tx() as conn:
            rows = conn.execute(query, [*params, f.limit, f.offset]).fetchall()
        return [Job(**r) for r in rows]

    def active_jobs(self) -> list[Job]:
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT * FROM jobs WHERE status = ANY(%s) ORDER BY job_id", (list(ACTIVE_STATUSES),)
            ).fetchall()
        return [Job(**r) for r in rows]

    def start_attempt(self, job_id: int, log_offset: int) -> int | None:
        """pending/incomplete -> running with a new attempt; its number, or None if the job ended."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE jobs SET status = 'running', started_at = coalesce(started_at, now()), "
                "updated_at = now() WHERE job_id = %s AND status IN ('pending', 'incomplete')",
                (job_id,),
            )
            if cur.rowcount != 1:
                return None
            row = conn.execute(
                "INSERT INTO attempts (job_id, attempt_number, log_offset) "
                "SELECT %s, count(*), %s FROM attempts WHERE job_id = %s RETURNING attempt_number",
                (job_id, log_offset, job_id),
            ).fetchone()
        return row["attempt_number"]

    def end_attempt(
        self,
        job_id: int,
        status: str,
        *,
        rows_synced: int = 0,
        bytes_synced: int = 0,
        failure: dict[str, Any] | None = None,
    ) -> None:
        """Close the job's open attempt (if any) as `succeeded` or `failed`."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE attempts SET status = %s, ended_at = now(), updated_at = now(), "
                "rows_synced = %s, bytes_synced = %s, failure = %s "
                "WHERE job_id = %s AND ended_at IS NULL",
                (status, rows_synced, bytes_synced, json.dumps(failure) if failure else None, job_id),
            )

    def mark_incomplete(self, job_id: int) -> bool:
        """running/pending -> incomplete (waiting for its next attempt); False if the job ended."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE jobs SET status = 'incomplete', updated_at = now() "
                "WHERE job_id = %s AND status IN ('pending', 'running')",
                (job_id,),
            )
            return cur.rowcount == 1

    def attempts(self, job_id: int) -> list[Attempt]:
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT * FROM attempts WHERE job_id = %s ORDER BY attempt_number", (job_id,)
            ).fetchall()
        return [Attempt(**r) for r in rows]

    def set_pid(self, job_id: int, pid: int) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE jobs SET pid = %s, updated_at = now() WHERE job_id = %s", (pid, job_id))

    def finish_job(
        self,
        job_id: int,
        status: str,
        *,
        rows_synced: int | None = None,
        bytes_synced: int | None = None,
        message: str | None = None,
    ) -> bool:
        """Move an active job to a terminal status; False if it had already ended."""
        assert status in TERMINAL_STATUSES, status
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE jobs SET status = %s, ended_at = now(), updated_at = now(), "
                "rows_synced = coalesce(%s, rows_synced), bytes_synced = coalesce(%s, bytes_synced), "
                "message = coalesce(%s, message) "
                "WHERE job_id = %s AND status = ANY(%s)",
                (status, rows_synced, bytes_synced, message, job_id, list(ACTIVE_STATUSES)),
            )
            return cur.rowcount == 1

    # -- connector state and generations ------------------------------------------------------------

    def load_state(self, connection_id: str) -> dict[str, dict[str, Any]]:
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT stream, state FROM connection_state WHERE connection_id = %s", (connection_id,)
            ).fetchall()
        return {r["stream"]: r["state"] for r in rows}

    def save_state(self, connection_id: str, stream: str, state: dict[str, Any]) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO connection_state (connection_id, stream, state) VALUES (%s, %s, %s) "
                "ON CONFLICT (connection_id, stream) DO UPDATE SET state = excluded.state, updated_at = now()",
                (connection_id, stream, json.dumps(state)),
            )

    def clear_state(self, connection_id: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM connection_state WHERE connection_id = %s", (connection_id,))

    def load_catalog(self, connection_id: str, config_hash: str) -> dict[str, Any] | None:
        with self._tx() as conn:
            row = conn.execute(
                "SELECT catalog FROM connection_catalog WHERE connection_id = %s AND config_hash = %s",
                (connection_id, config_hash),
            ).fetchone()
        return row["catalog"] if row else None

    def save_catalog(self, connection_id: str, config_hash: str, catalog: dict[str, Any]) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO connection_catalog (connection_id, config_hash, catalog) VALUES (%s, %s, %s) "
                "ON CONFLICT (connection_id) DO UPDATE SET config_hash = excluded.config_hash, "
                "catalog = excluded.catalog, updated_at = now()",
                (connection_id, config_hash, json.dumps(catalog)),
            )

    def generation(self, connection_id: str) -> int:
        with self._tx() as conn:
            row = conn.execute(
                "SELECT generation_id FROM connection_generation WHERE connection_id = %s", (connection_id,)
            ).fetchone()
        return row["generation_id"] if row else 0

    def next_generation(self, connection_id: str) -> int:
        with self._tx() as conn:
            row = conn.execute(
                "INSERT INTO connection_generation (connection_id, generation_id) VALUES (%s, 1) "
                "ON CONFLICT (connection_id) DO UPDATE "
                "SET generation_id = connection_generation.generation_id + 1 RETURNING generation_id",
                (connection_id,),
            ).fetchone()
        return row["generation_id"]
