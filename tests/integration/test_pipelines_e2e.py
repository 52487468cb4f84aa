"""Both pipelines end to end through the real scheduler, Airbyte sync, triggerer and dbt."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import psycopg
import pytest

from tests.integration.pipeline_runs import (
    ENERGY_CONNECTION,
    assert_energy_marts_match,
    local_airbyte,
    meter_energy,
    run_dag,
)

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def warehouse(stack):
    with psycopg.connect(stack["WAREHOUSE_URL"], autocommit=True) as conn:
        yield conn


# A date inside the February 2023 the test stack syncs (tests/conftest.py).
RUN_DATE = datetime(2023, 2, 10, tzinfo=UTC)


@pytest.fixture(scope="module")
def energy_run(airflow, stack):
    return run_dag(airflow, "energy_meters", logical_date=RUN_DATE)


def test_energy_run_succeeds_with_every_task(energy_run) -> None:
    states = {task: ti["state"] for task, ti in energy_run["task_instances"].items()}
    assert energy_run["state"] == "success", states
    # Also when the run is a re-run (cleared) on a kept stack: its producer then builds again.
    assert set(states.values()) == {"success"}, states
    assert {
        "airbyte_energy.sync",
        "airbyte_energy.wait",
        "dbt.dbt_producer_watcher",
        "dbt.fct_energy_daily.run",
    } <= set(states)


def test_energy_raw_tables_hold_whole_days(energy_run, warehouse) -> None:
    for table in ("muid_1", "muid_2"):
        rows, days, first = warehouse.execute(
            f'select count(*), count(distinct ("timestamp"::timestamptz)::date), min("timestamp"::timestamptz) '
            f"from raw_energy.{table}"
        ).fetchone()
        assert first.date().isoformat() == "2023-02-01"
        assert rows == days * 96, (table, rows, days)
        meta = warehouse.execute(
            f"select count(*) from raw_energy.{table} where _airbyte_raw_id is null or _airbyte_extracted_at is null"
        ).fetchone()
        assert meta == (0,)


def test_energy_run_marts_equal_meter_api(energy_run, stack) -> None:
    """The run's interval is 2023-02-09 (its logical date's day before): daily and hourly from the API."""
    assert energy_run["data_interval_start"][:10] == "2023-02-09", energy_run["data_interval_start"]
    day = date(2023, 2, 9)
    expected = meter_energy(stack, day, day)
    assert {n for (n,) in [(v[1],) for v in expected["daily"].values()]} == {96}
    assert_energy_marts_match(stack["WAREHOUSE_URL"], expected, day, day)


def test_ecommerce_run_builds_the_sales_marts(airflow, warehouse) -> None:
    run = run_dag(airflow, "ecommerce_sales")
    states = {task: ti["state"] for task, ti in run["task_instances"].items()}
    assert run["state"] == "success", states
    users, products, purchases = (
        warehouse.execute(f"select count(distinct id) from raw_ecommerce.{t}").fetchone()[0]
        for t in ("users", "products", "purchases")
    )
    assert users > 0 and products > 0 and purchases > 0
    assert warehouse.execute("select count(*) from analytics_marts.dim_customers").fetchone()[0] == users
    assert warehouse.execute("select count(*) from analytics_marts.dim_products").fetchone()[0] == products
    assert warehouse.execute("select count(*) from analytics_marts.fct_purchases").fetchone()[0] == purchases
    # The marts, recomputed in plain Python from the raw tables (latest version of each id).
    expected = ecommerce_marts_from_raw(warehouse)
    revenue = {
        row[0]: tuple(row[1:])
        for row in warehouse.execute(
            "select purchase_date, orders_count, gross_revenue, returns_count, returned_revenue, net_revenue "
            "from analytics_marts.fct_daily_revenue"
        ).fetchall()
    }
    assert revenue == expected["daily_revenue"]
    customers = {
        row[0]: tuple(row[1:])
        for row in warehouse.execute(
            "select customer_id, orders_count, returns_count, lifetime_net_revenue from analytics_marts.dim_customers"
        ).fetchall()
    }
    assert customers == expected["customers"]


def _latest(rows: list[tuple]) -> dict:
    """Latest version of each id: rows are (id, updated_at, extracted_at, *rest)."""
    latest: dict = {}
    for row in rows:
        key = (row[1] is not None, row[1], row[2])
        if row[0] not in latest or key > latest[row[0]][0]:
            latest[row[0]] = (key, row[3:])
    return {ident: rest for ident, (_, rest) in latest.items()}


def ecommerce_marts_from_raw(warehouse) -> dict[str, dict]:
    products = _latest(
        warehouse.execute(
            "select id, updated_at::text, _airbyte_extracted_at, price from raw_ecommerce.products"
        ).fetchall()
    )
    purchases = _latest(
        warehouse.execute(
            "select id, updated_at::text, _airbyte_extracted_at, user_id, product_id, purchased_at::text, "
            "returned_at::text from raw_ecommerce.purchases"
        ).fetchall()
    )
    users = _latest(
        warehouse.execute(
            "select id, updated_at::text, _airbyte_extracted_at from raw_ecommerce.users"
        ).fetchall()
    )
    daily: dict = {}
    customers = {user: [0, 0, Decimal(0)] for user in users}
    for user, product, purchased_at, returned_at in purchases.values():
        if purchased_at is None:
            if returned_at is not None and user in customers:
                customers[user][1] += 1
            continue
        price = Decimal(str(products[product][0]))
        # raw timestamps are UTC (text without offset, or with one)
        day = datetime.fromisoformat(purchased_at.replace("Z", "+00:00"))
        day = (day.astimezone(UTC) if day.tzinfo else day).date()
        orders, gross, returns, returned = daily.get(day, (0, Decimal(0), 0, Decimal(0)))
        returned_now = returned_at is not None
        daily[day] = (
            orders + 1,
            gross + price,
            returns + returned_now,
            returned + (price if returned_now else 0),
        )
        if user in customers:  # dim_customers lists the users table's customers only
            customers[user][0] += 1
            customers[user][1] += returned_now
            customers[user][2] += 0 if returned_now else price
    return {
        "daily_revenue": {day: (o, g, r, rr, g - rr) for day, (o, g, r, rr) in daily.items()},
        "customers": {user: tuple(values) for user, values in customers.items()},
    }


def test_failed_airbyte_job_fails_the_dag_and_runs_no_dbt(airflow, stack, energy_run) -> None:
    local_airbyte(stack, "DELETE", "/faults")
    local_airbyte(
        stack, "POST", "/faults/fail-next-job", {"connectionId": ENERGY_CONNECTION, "message": "source 500"}
    )
    try:
        run = run_dag(airflow, "energy_meters")  # no logical date: never collides with an earlier run
    finally:
        local_airbyte(stack, "DELETE", "/faults")
    states = {task: ti["state"] for task, ti in run["task_instances"].items()}
    assert run["state"] == "failed", states
    assert states["airbyte_energy.wait"] == "failed"
    assert states["airbyte_energy.sync"] == "success"
    dbt_states = {state for task, state in states.items() if task.startswith("dbt.")}
    assert dbt_states <= {None, "upstream_failed"}, dbt_states
