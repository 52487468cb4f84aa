"""The energy marts API served by the running api-server (/energy), against the real marts tables.

The `energy_marts` fixture needs real data: a successful `energy_meters` run of MARTS_DAY (a day no
other module runs), existing or triggered and waited for (ELT_MARTS_RUN_TIMEOUT seconds, default
1800). It does not rely on other modules' runs: make test runs modules on several stacks at once.
When that run does not succeed the tests fail: they never create or fill a mart themselves.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from dev.airflow_client import AirflowClient
from tests.integration.pipeline_runs import run_dag

pytestmark = pytest.mark.stack

DAG_ID = "energy_meters"
IMPORT_MUID = "95ce3367-cbce-4a4d-bbe3-da082831d7bd"
EXPORT_MUID = "1db7649e-9342-4e04-97c7-f0ebb88ed1f8"
RUN_TIMEOUT = float(os.environ.get("ELT_MARTS_RUN_TIMEOUT", "1800"))
MARTS_DAY = datetime(2023, 2, 20, tzinfo=UTC)


def _successful_run(airflow: AirflowClient) -> dict | None:
    runs = airflow.get(f"/api/v2/dags/{DAG_ID}/dagRuns?state=success&limit=200")["dag_runs"]
    return next((r for r in runs if (r["logical_date"] or "")[:10] == MARTS_DAY.date().isoformat()), None)


@pytest.fixture(scope="session")
def energy_marts(stack: dict[str, str], airflow: AirflowClient) -> str:
    """The dag_run_id of a successful energy_meters run of MARTS_DAY, whose marts the API serves."""
    airflow.wait_for_dags([DAG_ID])
    run = _successful_run(airflow) or run_dag(airflow, DAG_ID, logical_date=MARTS_DAY, timeout=RUN_TIMEOUT)
    if run["state"] != "success":
        pytest.fail(f"{DAG_ID} run {run['dag_run_id']} ended {run['state']}: no marts to serve")
    return run["dag_run_id"]


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
def full_day(stack: dict[str, str], meters: list[dict[str, Any]]) -> date:
    """A UTC day the pipeline built completely for every meter (runs build only their own days)."""
    with psycopg.connect(stack["WAREHOUSE_URL"]) as conn:
        row = conn.execute(
            "select reading_date from analytics_marts.fct_energy_daily group by 1 "
            "having count(distinct meter_muid) = %s and bool_and(is_complete) order by 1 limit 1",
            (len({m["meter_muid"] for m in meters}),),
        ).fetchone()
    assert row, "fct_energy_daily holds no complete day for every meter"
    return row[0]


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
