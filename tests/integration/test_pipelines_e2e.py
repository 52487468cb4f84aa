"""Both pipelines end to end through the real scheduler, Airbyte sync, triggerer and dbt."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tests.integration.pipeline_runs import (
    ENERGY_CONNECTION,
    local_airbyte,
    meter_day_totals,
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
    # A re-run (cleared) of a watcher run skips the producer and lets each model task run dbt itself.
    assert {state for task, state in states.items() if task != "dbt.dbt_producer_watcher"} == {"success"}, (
        states
    )
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


def test_energy_daily_mart_equals_meter_api(energy_run, stack, warehouse) -> None:
    """The run's window ends today 03:00 UTC; yesterday is its last complete day."""
    end = (
        datetime.fromisoformat(energy_run["data_interval_end"] or "")
        if energy_run["data_interval_end"]
        else None
    )
    day = (end or datetime.now(UTC)).date() - timedelta(days=1)
    expected = meter_day_totals(stack, day)
    rows = warehouse.execute(
        "select meter_muid, direction, energy_kwh, reading_count from analytics_marts.fct_energy_daily "
        "where reading_date = %s",
        (day,),
    ).fetchall()
    actual = {(muid, direction): (float(kwh), count) for muid, direction, kwh, count in rows}
    assert set(actual) == set(expected), (actual, expected)
    for key, kwh in expected.items():
        assert actual[key][0] == pytest.approx(kwh, abs=1e-6), key
        assert actual[key][1] == 96


def test_energy_hourly_mart_sums_to_daily(energy_run, warehouse) -> None:
    mismatches = warehouse.execute(
        """
        select d.meter_muid, d.direction, d.reading_date
        from analytics_marts.fct_energy_daily d
        join (
            select meter_muid, direction, (hour_start_at at time zone 'UTC')::date as reading_date,
                   sum(energy_kwh) as kwh
            from analytics_marts.fct_energy_hourly group by 1, 2, 3
        ) h using (meter_muid, direction, reading_date)
        where abs(d.energy_kwh - h.kwh) > 1e-6
        """
    ).fetchall()
    assert mismatches == []


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
    # Gross revenue, computed from the raw tables independently of dbt.
    expected = warehouse.execute(
        """
        select round(sum(p.price::numeric), 2)
        from (select distinct on (id) * from raw_ecommerce.purchases order by id, updated_at desc) pu
        join (select distinct on (id) * from raw_ecommerce.products order by id, updated_at desc) p
          on p.id = pu.product_id
        where pu.purchased_at is not null
        """
    ).fetchone()[0]
    actual = warehouse.execute(
        "select round(sum(gross_revenue)::numeric, 2) from analytics_marts.fct_daily_revenue"
    ).fetchone()[0]
    assert actual == expected


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
