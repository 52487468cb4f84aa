"""dev.airflow_client's trigger: a logical date before the DAG's start_date is refused, not run empty,
and a date the DAG already has a run at is an error naming that run."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import pytest

from dev.airflow_client import AirflowClient, APIError, RunExists

# Airflow 3.3's answer to a second run at a logical date (its generic unique-constraint handler).
UNIQUE_VIOLATION = (
    'POST /api/v2/dags/energy_meters/dagRuns -> HTTP 409: {"detail":{"reason":"Unique constraint '
    'violation","statement":"hidden","orig_error":"hidden","message":"Serious error when handling your request."}}'
)
HELD_RUN = {
    "dag_run_id": "manual__2026-11-23T07:50:32.474715+00:00",
    "logical_date": "2023-02-10T00:00:00Z",
    "state": "success",
}


class Held(AirflowClient):
    """energy_meters with runs at 2023-02-10, 2023-02-11 and 2023-02-13 (GET .../dagRuns filtered as
    Airflow filters it: logical_date_gte/lte inclusive), refusing a second run at a held date."""

    def __init__(self, held_dates: tuple[str, ...] = ("2023-02-10", "2023-02-11", "2023-02-13")) -> None:
        super().__init__("http://airflow.invalid", "admin", "admin")
        self.runs = [
            {**HELD_RUN, "logical_date": f"{d}T00:00:00Z", "dag_run_id": f"run-{d}"} for d in held_dates
        ]
        self.calls: list[tuple[str, str, Any]] = []

    def _request(self, method: str, path: str, payload: Any = None, auth: bool = True) -> Any:
        self.calls.append((method, path, payload))
        if path == "/api/v2/dags/energy_meters/details":
            return {"dag_id": "energy_meters", "start_date": "2023-02-01T00:00:00Z"}
        if method == "POST":
            if any(
                datetime.fromisoformat(r["logical_date"]) == datetime.fromisoformat(payload["logical_date"])
                for r in self.runs
            ):
                raise APIError(UNIQUE_VIOLATION, 409)
            return {"dag_run_id": "manual__new"}
        route, _, query = path.partition("?")
        assert route == "/api/v2/dags/energy_meters/dagRuns", path
        params = parse_qs(query)
        low = datetime.fromisoformat(params["logical_date_gte"][0])
        high = datetime.fromisoformat(params["logical_date_lte"][0]) if "logical_date_lte" in params else None
        found = [
            r
            for r in self.runs
            if low <= datetime.fromisoformat(r["logical_date"])
            and (high is None or datetime.fromisoformat(r["logical_date"]) <= high)
        ]
        return {"dag_runs": found[: int(params["limit"][0])], "total_entries": len(found)}


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


def test_a_second_run_at_a_logical_date_is_an_error_naming_the_run_that_holds_it() -> None:
    client = Held()
    with pytest.raises(RunExists) as error:
        client.trigger("energy_meters", logical_date=datetime(2023, 2, 10, tzinfo=UTC))
    assert error.value.run["dag_run_id"] == "run-2023-02-10"
    assert error.value.status == 409
    message = str(error.value)
    assert message.startswith(
        "energy_meters already has a run at logical date 2023-02-10T00:00:00+00:00: run-2023-02-10"
    )
    assert "(success)" in message and "clear that run" in message
    assert "Unique constraint" not in message


def test_a_409_with_no_run_at_the_date_stays_the_apis_own_error() -> None:
    client = Held(held_dates=())

    def refuse(method: str, path: str, payload: Any = None, auth: bool = True) -> Any:
        if method == "POST":
            raise APIError(UNIQUE_VIOLATION, 409)  # e.g. a dag_run_id taken
        return Held._request(client, method, path, payload, auth)

    client._request = refuse  # type: ignore[method-assign]
    with pytest.raises(APIError) as error:
        client.trigger("energy_meters", logical_date=datetime(2023, 2, 12, tzinfo=UTC))
    assert not isinstance(error.value, RunExists)
    assert str(error.value) == UNIQUE_VIOLATION


def test_days_without_runs_skips_the_held_days() -> None:
    client = Held()
    first = datetime(2023, 2, 10, tzinfo=UTC)
    assert client.days_without_runs("energy_meters", first, 1) == [datetime(2023, 2, 12, tzinfo=UTC)]
    assert client.days_without_runs("energy_meters", first, 3) == [
        datetime(2023, 2, 12, tzinfo=UTC),
        datetime(2023, 2, 14, tzinfo=UTC),
        datetime(2023, 2, 15, tzinfo=UTC),
    ]
    assert client.days_without_runs("energy_meters", datetime(2023, 2, 14, tzinfo=UTC), 1) == [
        datetime(2023, 2, 14, tzinfo=UTC)
    ]
