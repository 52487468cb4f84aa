"""dev.airflow_client's trigger: a logical date before the DAG's start_date is refused, not run empty."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from dev.airflow_client import AirflowClient


class Recorded(AirflowClient):
    """The REST API as Airflow 3.3 answers these calls (GET .../details carries `start_date`)."""

    def __init__(self) -> None:
        super().__init__("http://airflow.invalid", "admin", "admin")
        self.calls: list[tuple[str, str, Any]] = []

    def _request(self, method: str, path: str, payload: Any = None, auth: bool = True) -> Any:
        self.calls.append((method, path, payload))
        if path == "/api/v2/dags/ecommerce_sales/details":
            return {"dag_id": "ecommerce_sales", "start_date": "2024-01-01T00:00:00Z"}
        if method == "POST" and path == "/api/v2/dags/ecommerce_sales/dagRuns":
            return {"dag_run_id": "manual__1"}
        raise AssertionError(f"unexpected {method} {path}")


def test_a_logical_date_before_start_date_is_an_error_naming_both_and_triggers_nothing() -> None:
    client = Recorded()
    with pytest.raises(ValueError) as error:
        client.trigger("ecommerce_sales", logical_date=datetime(2023, 12, 31, tzinfo=UTC))
    assert "ecommerce_sales starts at 2024-01-01T00:00:00Z" in str(error.value)
    assert "2023-12-31T00:00:00+00:00 would run no tasks" in str(error.value)
    assert [m for m, _, _ in client.calls] == ["GET"]


def test_on_the_start_date_the_run_is_triggered_for_that_date() -> None:
    client = Recorded()
    assert client.trigger("ecommerce_sales", logical_date=datetime(2024, 1, 1, tzinfo=UTC)) == "manual__1"
    assert client.calls[-1] == (
        "POST",
        "/api/v2/dags/ecommerce_sales/dagRuns",
        {"logical_date": "2024-01-01T00:00:00+00:00"},
    )


def test_without_a_logical_date_nothing_is_checked() -> None:
    client = Recorded()
    client.trigger("ecommerce_sales")
    assert client.calls == [("POST", "/api/v2/dags/ecommerce_sales/dagRuns", {"logical_date": None})]
