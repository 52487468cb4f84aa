"""Read-only JSON API over the energy marts, mounted in the Airflow api-server at /energy.

- ``GET /energy/meters``: the meters in ``dim_meters``.
- ``GET /energy/daily?start=&end=[&meter=][&direction=]``: ``fct_energy_daily`` rows.
- ``GET /energy/hourly?start=&end=[&meter=][&direction=]``: ``fct_energy_hourly`` rows.

``start`` and ``end`` are UTC dates (YYYY-MM-DD), ``end`` exclusive like every window in this
project. Requests need an Airflow login (the UI's cookie or a bearer token from
``POST /auth/token``). Data is read through the ``warehouse`` connection at request time.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Annotated, Any, Protocol

from airflow.api_fastapi.core_api.security import requires_authenticated
from fastapi import Depends, FastAPI, HTTPException, Query

WAREHOUSE_CONN_ID = "warehouse"
MARTS_SCHEMA = "analytics_marts"
DIRECTIONS = ("import", "export")
# Bound the work one request can ask of the warehouse (and the size of its answer).
MAX_DAYS = {"daily": 366, "hourly": 31}
UNDEFINED_TABLE = "42P01"

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class MartsNotBuiltError(Exception):
    """The marts tables do not exist yet (no dbt run has built them)."""


@dataclass(frozen=True)
class RangeQuery:
    start: date
    end: date  # exclusive
    meter: str | None
    direction: str | None


class Marts(Protocol):
    """Where the API reads from; the warehouse in production, a fake in unit tests."""

    def meters(self) -> list[dict[str, Any]]: ...

    def energy(self, grain: str, query: RangeQuery) -> list[dict[str, Any]]: ...


class WarehouseMarts:
    """The marts tables, read through the `warehouse` Airflow connection."""

    METER_COLUMNS = (
        "meter_muid",
        "obis_code",
        "direction",
        "source_stream",
        "first_reading_at",
        "last_reading_at",
        "reading_count",
    )
    ENERGY = {
        "daily": ("fct_energy_daily", "reading_date"),
        "hourly": ("fct_energy_hourly", "hour_start_at"),
    }
    ENERGY_COLUMNS = ("meter_muid", "obis_code", "direction", "energy_kwh", "reading_count", "is_complete")

    def __init__(self, conn_id: str = WAREHOUSE_CONN_ID) -> None:
        self.conn_id = conn_id

    def _records(self, sql: str, parameters: Sequence[Any] = ()) -> list[tuple]:
        # Imported here: the provider is only needed when a request actually reads data.
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        try:
            return PostgresHook(postgres_conn_id=self.conn_id).get_records(sql, parameters=parameters)
        except Exception as err:
            if _sqlstate(err) == UNDEFINED_TABLE:
                raise MartsNotBuiltError(str(err).strip().splitlines()[0]) from err
            raise

    def meters(self) -> list[dict[str, Any]]:
        rows = self._records(
            f"select {', '.join(self.METER_COLUMNS)} from {MARTS_SCHEMA}.dim_meters order by meter_muid"
        )
        return [dict(zip(self.METER_COLUMNS, row, strict=True)) for row in rows]

    def energy(self, grain: str, query: RangeQuery) -> list[dict[str, Any]]:
        table, time_column = self.ENERGY[grain]
        columns = (time_column, *self.ENERGY_COLUMNS)
        start, end = query.start, query.end
        if grain == "hourly":
            # Hours are timestamptz: compare against UTC midnights, not session-local ones.
            start, end = _utc_midnight(start), _utc_midnight(end)
        where = [f"{time_column} >= %s", f"{time_column} < %s"]
        parameters: list[Any] = [start, end]
        if query.meter:
            where.append("meter_muid = %s")
            parameters.append(query.meter)
        if query.direction:
            where.append("direction = %s")
            parameters.append(query.direction)
        rows = self._records(
            f"select {', '.join(columns)} from {MARTS_SCHEMA}.{table} where {' and '.join(where)} "
            f"order by {time_column}, meter_muid, direction",
            parameters,
        )
        return [dict(zip(columns, row, strict=True)) for row in rows]


def _sqlstate(err: BaseException) -> str | None:
    """SQLSTATE of a psycopg2 or psycopg 3 error, possibly wrapped."""
    while err is not None:
        code = getattr(err, "pgcode", None) or getattr(err, "sqlstate", None)
        if code:
            return code
        err = err.__cause__ or err.__context__
    return None


def _utc_midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _bad(parameter: str, message: str, status: int = 400) -> HTTPException:
    return HTTPException(status_code=status, detail={"parameter": parameter, "message": message})


def parse_day(parameter: str, raw: str) -> date:
    # date.fromisoformat alone would also take "20230201" and week dates: insist on one spelling.
    if not _DATE.fullmatch(raw):
        raise _bad(parameter, f"{parameter}={raw!r} is not a date; expected YYYY-MM-DD")
    try:
        return date.fromisoformat(raw)
    except ValueError as err:
        raise _bad(parameter, f"{parameter}={raw!r} is not a valid date: {err}") from None


def validate_range(grain: str, start: str, end: str, meter: str | None, direction: str | None) -> RangeQuery:
    """Check everything that does not need the warehouse; 400 naming the parameter on bad input."""
    first, last = parse_day("start", start), parse_day("end", end)
    if last <= first:
        raise _bad("end", f"end={end} must be after start={start} (end is exclusive)")
    limit = MAX_DAYS[grain]
    if last - first > timedelta(days=limit):
        raise _bad(
            "end",
            f"start={start}..end={end} spans {(last - first).days} days; {grain} allows at most {limit}",
        )
    if direction is not None and direction not in DIRECTIONS:
        raise _bad("direction", f"direction={direction!r} is not one of {', '.join(DIRECTIONS)}")
    if meter is not None:
        try:
            meter = str(uuid.UUID(meter))
        except ValueError:
            raise _bad("meter", f"meter={meter!r} is not a meter id (a UUID)") from None
    return RangeQuery(first, last, meter, direction)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    def convert(value: Any) -> Any:
        if isinstance(value, Decimal):
            return float(value)
        if isinstance(value, datetime | date):
            return value.isoformat()
        return value

    return {key: convert(value) for key, value in row.items()}


def get_marts() -> Marts:
    """Dependency: the warehouse marts (overridden in unit tests)."""
    return WarehouseMarts()


MartsDep = Annotated[Marts, Depends(get_marts)]
StartQuery = Annotated[str, Query(description="first UTC day, YYYY-MM-DD")]
EndQuery = Annotated[str, Query(description="UTC day after the last one, YYYY-MM-DD (exclusive)")]
MeterQuery = Annotated[str | None, Query(description="meter id (dim_meters.meter_muid); all when omitted")]
DirectionQuery = Annotated[str | None, Query(description="'import' or 'export'; both when omitted")]


def _energy(grain: str, marts: Marts, start: str, end: str, meter: str | None, direction: str | None) -> dict:
    query = validate_range(grain, start, end, meter, direction)
    try:
        if query.meter is not None:
            known = {m["meter_muid"] for m in marts.meters()}
            if query.meter not in known:
                raise _bad("meter", f"meter={query.meter} is unknown; known meters: {sorted(known)}", 404)
        rows = marts.energy(grain, query)
    except MartsNotBuiltError as err:
        raise _not_built(err) from None
    return {
        "grain": grain,
        "start": query.start.isoformat(),
        "end": query.end.isoformat(),
        "meter": query.meter,
        "direction": query.direction,
        "count": len(rows),
        "data": [_jsonable(row) for row in rows],
    }


def _not_built(err: MartsNotBuiltError) -> HTTPException:
    return HTTPException(
        status_code=503,
        detail={"message": f"the energy marts are not built yet (run the energy_meters DAG): {err}"},
    )


def create_app() -> FastAPI:
    # Sync handlers on purpose: FastAPI runs them in its thread pool, so the blocking
    # database calls never stall the api-server's event loop.
    app = FastAPI(
        title="Energy marts API",
        description=__doc__,
        dependencies=[Depends(requires_authenticated())],
    )

    @app.get("/meters")
    def meters(marts: MartsDep) -> dict:
        try:
            rows = marts.meters()
        except MartsNotBuiltError as err:
            raise _not_built(err) from None
        return {"count": len(rows), "data": [_jsonable(row) for row in rows]}

    @app.get("/daily")
    def daily(
        marts: MartsDep,
        start: StartQuery,
        end: EndQuery,
        meter: MeterQuery = None,
        direction: DirectionQuery = None,
    ) -> dict:
        return _energy("daily", marts, start, end, meter, direction)

    @app.get("/hourly")
    def hourly(
        marts: MartsDep,
        start: StartQuery,
        end: EndQuery,
        meter: MeterQuery = None,
        direction: DirectionQuery = None,
    ) -> dict:
        return _energy("hourly", marts, start, end, meter, direction)

    return app


app = create_app()
