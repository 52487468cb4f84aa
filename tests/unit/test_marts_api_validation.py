"""The energy marts API (plugins/elt/marts_api.py): validation, shape, auth, and the plugin registration.

The warehouse is replaced by an in-memory `Marts`; tests/integration/test_marts_api.py reads
the real tables through the running api-server.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pytest
from airflow.api_fastapi.core_api.security import get_user
from fastapi.testclient import TestClient

from elt import marts_api
from elt.marts_api import MartsNotBuiltError, RangeQuery

IMPORT_MUID = "95ce3367-cbce-4a4d-bbe3-da082831d7bd"
EXPORT_MUID = "1db7649e-9342-4e04-97c7-f0ebb88ed1f8"


class FakeMarts:
    def __init__(self, built: bool = True) -> None:
        self.built = built
        self.queries: list[tuple[str, RangeQuery]] = []

    def meters(self) -> list[dict[str, Any]]:
        if not self.built:
            raise MartsNotBuiltError('relation "analytics_marts.dim_meters" does not exist')
        return [
            {"meter_muid": EXPORT_MUID, "direction": "export", "reading_count": 96},
            {"meter_muid": IMPORT_MUID, "direction": "import", "reading_count": 96},
        ]

    def energy(self, grain: str, query: RangeQuery) -> list[dict[str, Any]]:
        if not self.built:
            raise MartsNotBuiltError("no such table")
        self.queries.append((grain, query))
        when = date(2023, 2, 1) if grain == "daily" else datetime.fromisoformat("2023-02-01T00:00:00+00:00")
        return [{"reading_date": when, "meter_muid": IMPORT_MUID, "energy_kwh": Decimal("1.25")}]


@pytest.fixture
def fake() -> FakeMarts:
    return FakeMarts()


@pytest.fixture
def client(fake: FakeMarts) -> Iterator[TestClient]:
    app = marts_api.app
    app.dependency_overrides[marts_api.get_marts] = lambda: fake
    app.dependency_overrides[get_user] = lambda: object()
    try:
        yield TestClient(app)
    finally:
        app.dependency_overrides.clear()


def test_meters(client: TestClient) -> None:
    body = client.get("/meters").json()
    assert body["count"] == 2
    assert {m["meter_muid"] for m in body["data"]} == {IMPORT_MUID, EXPORT_MUID}


def test_daily_passes_the_validated_query_and_serialises_rows(client: TestClient, fake: FakeMarts) -> None:
    response = client.get(
        "/daily",
        params={"start": "2023-02-01", "end": "2023-02-08", "meter": IMPORT_MUID, "direction": "import"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["data"] == [{"reading_date": "2023-02-01", "meter_muid": IMPORT_MUID, "energy_kwh": 1.25}]
    assert (body["start"], body["end"], body["count"]) == ("2023-02-01", "2023-02-08", 1)
    assert fake.queries == [("daily", RangeQuery(date(2023, 2, 1), date(2023, 2, 8), IMPORT_MUID, "import"))]


def test_hourly_without_filters(client: TestClient, fake: FakeMarts) -> None:
    response = client.get("/hourly", params={"start": "2023-02-01", "end": "2023-02-02"})
    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["reading_date"] == "2023-02-01T00:00:00+00:00"
    assert fake.queries[0][1].meter is None and fake.queries[0][1].direction is None


@pytest.mark.parametrize(
    ("path", "params", "status", "parameter"),
    [
        ("/daily", {"start": "2023-02-30", "end": "2023-03-02"}, 400, "start"),
        ("/daily", {"start": "01.02.2023", "end": "2023-03-02"}, 400, "start"),
        ("/daily", {"start": "20230201", "end": "2023-03-02"}, 400, "start"),
        ("/daily", {"start": "2023-02-01", "end": "tomorrow"}, 400, "end"),
        ("/daily", {"start": "2023-02-05", "end": "2023-02-01"}, 400, "end"),
        ("/daily", {"start": "2023-02-05", "end": "2023-02-05"}, 400, "end"),
        ("/daily", {"start": "2023-01-01", "end": "2024-01-03"}, 400, "end"),
        ("/hourly", {"start": "2023-02-01", "end": "2023-03-05"}, 400, "end"),
        ("/daily", {"start": "2023-02-01", "end": "2023-02-02", "direction": "sideways"}, 400, "direction"),
        ("/hourly", {"start": "2023-02-01", "end": "2023-02-02", "meter": "meter-1"}, 400, "meter"),
        (
            "/daily",
            {"start": "2023-02-01", "end": "2023-02-02", "meter": "00000000-0000-0000-0000-000000000000"},
            404,
            "meter",
        ),
    ],
)
def test_bad_input_is_a_4xx_naming_the_parameter(
    client: TestClient, fake: FakeMarts, path: str, params: dict, status: int, parameter: str
) -> None:
    response = client.get(path, params=params)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert detail["parameter"] == parameter
    assert parameter in detail["message"]
    assert fake.queries == []


def test_missing_dates_are_a_422_naming_them(client: TestClient) -> None:
    response = client.get("/daily")
    assert response.status_code == 422
    assert {tuple(e["loc"]) for e in response.json()["detail"]} == {("query", "start"), ("query", "end")}


def test_a_year_of_days_is_allowed(client: TestClient) -> None:
    assert client.get("/daily", params={"start": "2024-01-01", "end": "2025-01-01"}).status_code == 200


def test_marts_not_built_is_a_503_that_says_what_to_do(client: TestClient, fake: FakeMarts) -> None:
    fake.built = False
    for path in ("/meters", "/daily?start=2023-02-01&end=2023-02-02"):
        response = client.get(path)
        assert response.status_code == 503
        assert "energy_meters" in response.json()["detail"]["message"]


def test_requests_need_an_airflow_login() -> None:
    # Without the override, the api-server's own authentication applies.
    assert TestClient(marts_api.app).get("/meters").status_code == 401


def test_warehouse_queries_are_parameterised(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, list]] = []
    marts = marts_api.WarehouseMarts()
    monkeypatch.setattr(
        marts, "_records", lambda sql, parameters=(): seen.append((sql, list(parameters))) or []
    )
    marts.energy("hourly", RangeQuery(date(2023, 2, 1), date(2023, 2, 2), IMPORT_MUID, "export"))
    sql, parameters = seen[0]
    assert "analytics_marts.fct_energy_hourly" in sql
    assert IMPORT_MUID not in sql and "export" not in sql
    assert [str(p) for p in parameters] == [
        "2023-02-01 00:00:00+00:00",
        "2023-02-02 00:00:00+00:00",
        IMPORT_MUID,
        "export",
    ]


def test_undefined_table_becomes_marts_not_built(monkeypatch: pytest.MonkeyPatch) -> None:
    class UndefinedTable(Exception):
        pgcode = "42P01"

    class Hook:
        def __init__(self, **kwargs: Any) -> None:
            pass

        def get_records(self, sql: str, parameters: Any = None) -> list:
            raise UndefinedTable('relation "analytics_marts.dim_meters" does not exist')

    monkeypatch.setattr("airflow.providers.postgres.hooks.postgres.PostgresHook", Hook)
    with pytest.raises(MartsNotBuiltError, match="dim_meters"):
        marts_api.WarehouseMarts().meters()


def test_plugin_registers_the_link_and_mounts_the_api() -> None:
    from elt.airbyte import AirbyteJobLink
    from elt_plugin import EltPlugin

    assert EltPlugin.name == "elt"
    assert [type(link) for link in EltPlugin.operator_extra_links] == [AirbyteJobLink]
    assert EltPlugin.fastapi_apps == [
        {"app": marts_api.app, "url_prefix": "/energy", "name": "Energy marts API"}
    ]
