"""The energy marts API served by the running api-server (/energy), against the real marts tables.

The `energy_marts` fixture prefers real data: an existing successful `energy_meters` run, or one it
triggers and waits for (ELT_MARTS_RUN_TIMEOUT seconds, default 1800). Only when that run does not
succeed and the marts tables do not exist does it create and fill them itself (dropping them again
afterwards), so the API is still checked while the pipeline is broken; the test then says so.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from dev.airflow_client import AirflowClient

pytestmark = pytest.mark.stack

DAG_ID = "energy_meters"
IMPORT_MUID = "95ce3367-cbce-4a4d-bbe3-da082831d7bd"
EXPORT_MUID = "1db7649e-9342-4e04-97c7-f0ebb88ed1f8"
RUN_TIMEOUT = float(os.environ.get("ELT_MARTS_RUN_TIMEOUT", "1800"))
SEED_DAY = date(2023, 2, 1)

# The dbt models' columns and types (include/dbt/models/marts/energy), for the fallback seed only.
SEED_SQL = """
create schema if not exists analytics_marts;
create table analytics_marts.dim_meters (
    meter_muid text, obis_code text, direction text, source_stream text,
    first_reading_at timestamptz, last_reading_at timestamptz, reading_count bigint);
create table analytics_marts.fct_energy_hourly (
    energy_hourly_id text, meter_muid text, obis_code text, direction text,
    hour_start_at timestamptz, energy_kwh numeric, reading_count bigint, is_complete boolean);
create table analytics_marts.fct_energy_daily (
    energy_daily_id text, meter_muid text, obis_code text, direction text,
    reading_date date, energy_kwh numeric, reading_count bigint, is_complete boolean);
insert into analytics_marts.dim_meters values
    (%(imp)s, '0100011D00FF', 'import', 'muid_1', %(day)s::timestamptz, %(day)s::timestamptz + interval '1 day' - interval '15 minutes', 96),
    (%(exp)s, '0100021D00FF', 'export', 'muid_2', %(day)s::timestamptz, %(day)s::timestamptz + interval '1 day' - interval '15 minutes', 96);
insert into analytics_marts.fct_energy_hourly
    select md5(m.meter_muid || h::text), m.meter_muid, m.obis_code, m.direction, h, 0.25 * (1 + extract(hour from h)), 4, true
    from analytics_marts.dim_meters m,
         generate_series(%(day)s::timestamptz, %(day)s::timestamptz + interval '23 hours', interval '1 hour') h;
insert into analytics_marts.fct_energy_daily
    select md5(meter_muid || %(day)s), meter_muid, obis_code, direction, %(day)s::date, sum(energy_kwh), sum(reading_count), true
    from analytics_marts.fct_energy_hourly group by 1, 2, 3, 4;
"""
SEED_TABLES = ("fct_energy_daily", "fct_energy_hourly", "dim_meters")


def _marts_exist(conn: psycopg.Connection) -> bool:
    return conn.execute("select to_regclass('analytics_marts.dim_meters') is not null").fetchone()[0]


def _successful_run(airflow: AirflowClient) -> dict | None:
    runs = airflow.get(f"/api/v2/dags/{DAG_ID}/dagRuns?state=success&order_by=-end_date&limit=1")["dag_runs"]
    return runs[0] if runs else None


@pytest.fixture(scope="session")
def energy_marts(stack: dict[str, str], airflow: AirflowClient) -> Iterator[str]:
    """'pipeline' when the marts come from a successful energy_meters run, else 'seeded'."""
    airflow.wait_for_dags([DAG_ID])
    run = _successful_run(airflow)
    if run is None:
        airflow.unpause(DAG_ID)
        run_id = airflow.trigger(DAG_ID)
        try:
            run = airflow.wait_for_run(DAG_ID, run_id, timeout=RUN_TIMEOUT)
        except TimeoutError:
            run = airflow.run(DAG_ID, run_id)
    with psycopg.connect(stack["WAREHOUSE_URL"], autocommit=True) as conn:
        if run["state"] == "success":
            yield "pipeline"
            return
        if _marts_exist(conn):
            warnings.warn(
                f"{DAG_ID} run {run['dag_run_id']} {run['state']}: using the marts as they are", stacklevel=1
            )
            yield "existing"
            return
        warnings.warn(
            f"{DAG_ID} run {run['dag_run_id']} {run['state']}: seeding the marts for this test", stacklevel=1
        )
        with conn.transaction():
            params = {"imp": IMPORT_MUID, "exp": EXPORT_MUID, "day": SEED_DAY.isoformat()}
            for statement in filter(str.strip, SEED_SQL.split(";")):
                conn.execute(statement, params if "%(" in statement else None)
        try:
            yield "seeded"
        finally:
            for table in SEED_TABLES:
                conn.execute(f"drop table if exists analytics_marts.{table}")


@pytest.fixture(scope="module")
def api(stack: dict[str, str], airflow: AirflowClient) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {airflow.token()}"}
    with httpx.Client(base_url=stack["AIRFLOW_API_URL"] + "/energy", headers=headers, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def meters(api: httpx.Client, energy_marts: str) -> list[dict[str, Any]]:
    response = api.get("/meters")
    assert response.status_code == 200, response.text
    return response.json()["data"]


@pytest.fixture(scope="module")
def full_day(meters: list[dict[str, Any]]) -> date:
    """A UTC day every meter has readings for."""
    first = max(date.fromisoformat(m["first_reading_at"][:10]) for m in meters)
    last = min(date.fromisoformat(m["last_reading_at"][:10]) for m in meters)
    assert first <= last, f"the meters' readings do not overlap: {meters}"
    return (
        first if first == last else first + timedelta(days=1) if first + timedelta(days=1) < last else first
    )


def test_requests_need_a_login(stack: dict[str, str]) -> None:
    response = httpx.get(stack["AIRFLOW_API_URL"] + "/energy/meters", timeout=30)
    assert response.status_code == 401


def test_meters_lists_both_meters(meters: list[dict[str, Any]]) -> None:
    by_id = {m["meter_muid"]: m for m in meters}
    assert by_id[IMPORT_MUID]["direction"] == "import"
    assert by_id[EXPORT_MUID]["direction"] == "export"


def test_daily_matches_the_table(api: httpx.Client, stack: dict[str, str], full_day: date) -> None:
    end = full_day + timedelta(days=1)
    body = api.get("/daily", params={"start": full_day.isoformat(), "end": end.isoformat()}).json()
    with psycopg.connect(stack["WAREHOUSE_URL"]) as conn:
        expected = conn.execute(
            "select meter_muid, direction, energy_kwh::float8, reading_count from analytics_marts.fct_energy_daily "
            "where reading_date = %s order by meter_muid, direction",
            (full_day,),
        ).fetchall()
    got = sorted((r["meter_muid"], r["direction"], r["energy_kwh"], r["reading_count"]) for r in body["data"])
    assert got == sorted(expected)
    assert {r["meter_muid"] for r in body["data"]} == {IMPORT_MUID, EXPORT_MUID}


def test_hours_add_up_to_the_day(api: httpx.Client, full_day: date) -> None:
    params = {
        "start": full_day.isoformat(),
        "end": (full_day + timedelta(days=1)).isoformat(),
        "meter": IMPORT_MUID,
        "direction": "import",
    }
    hourly = api.get("/hourly", params=params).json()["data"]
    daily = api.get("/daily", params=params).json()["data"]
    assert len(daily) == 1 and 0 < len(hourly) <= 24
    assert {(r["meter_muid"], r["direction"]) for r in hourly} == {(IMPORT_MUID, "import")}
    assert sum(r["energy_kwh"] for r in hourly) == pytest.approx(daily[0]["energy_kwh"])
    assert sum(r["reading_count"] for r in hourly) == daily[0]["reading_count"]


@pytest.mark.parametrize(
    ("path", "params", "status", "parameter"),
    [
        ("/daily", {"start": "2023-02-31", "end": "2023-03-02"}, 400, "start"),
        ("/daily", {"start": "2023-02-10", "end": "2023-02-01"}, 400, "end"),
        ("/daily", {"start": "2020-01-01", "end": "2023-01-01"}, 400, "end"),
        ("/hourly", {"start": "2023-01-01", "end": "2023-03-01"}, 400, "end"),
        ("/hourly", {"start": "2023-02-01", "end": "2023-02-02", "direction": "both"}, 400, "direction"),
        ("/daily", {"start": "2023-02-01", "end": "2023-02-02", "meter": "not-a-meter"}, 400, "meter"),
        (
            "/daily",
            {"start": "2023-02-01", "end": "2023-02-02", "meter": "0" * 8 + "-0000-0000-0000-" + "0" * 12},
            404,
            "meter",
        ),
    ],
)
def test_bad_input_is_a_4xx_naming_the_parameter(
    api: httpx.Client, energy_marts: str, path: str, params: dict, status: int, parameter: str
) -> None:
    response = api.get(path, params=params)
    assert response.status_code == status, response.text
    assert response.json()["detail"]["parameter"] == parameter
