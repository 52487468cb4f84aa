"""The local meter API over HTTP: shape, determinism, pagination, validation, fault injection.

Starts the API on a free port (or uses METER_API_URL, e.g. the running stack's).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise

import httpx
import pytest

from dev.meter_api import readings
from dev.meter_api.testing import meter_api

IMPORT_MUID = "95ce3367-cbce-4a4d-bbe3-da082831d7bd"
EXPORT_MUID = "1db7649e-9342-4e04-97c7-f0ebb88ed1f8"
PATH = "/meterdata/measurement"


@pytest.fixture(scope="module")
def api() -> Iterator[httpx.Client]:
    with meter_api() as base_url, httpx.Client(base_url=base_url, timeout=10) as client:
        yield client


@pytest.fixture
def faults(api: httpx.Client) -> Iterator[httpx.Client]:
    """Gives access to the fault hooks and always disarms them afterwards."""
    api.delete("/local/faults").raise_for_status()
    yield api
    api.delete("/local/faults").raise_for_status()


def measure(api: httpx.Client, muid: str = IMPORT_MUID, **params: str | int) -> httpx.Response:
    query = {"muid": muid, "measurement": "energy", "start": "2023-02-01", "stop": "2023-02-02", **params}
    return api.get(PATH, params={k: v for k, v in query.items() if v is not None})


def test_health(api: httpx.Client) -> None:
    assert api.get("/health").json() == {"status": "ok"}


def test_same_request_same_bytes(api: httpx.Client) -> None:
    first, second = (
        measure(api, start="2023-03-10", stop="2023-03-12"),
        measure(api, start="2023-03-10", stop="2023-03-12"),
    )
    assert first.status_code == second.status_code == 200
    assert first.content == second.content


def test_one_day_is_96_readings_from_midnight_to_2345(api: httpx.Client) -> None:
    data = measure(api).json()["data"]
    assert len(data) == readings.READINGS_PER_DAY
    assert data[0]["timestamp"] == "2023-02-01T00:00:00.000Z"
    assert data[-1]["timestamp"] == "2023-02-01T23:45:00.000Z"
    times = [datetime.strptime(r["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ") for r in data]
    assert {b - a for a, b in pairwise(times)} == {timedelta(minutes=15)}
    assert data[0] == {
        "measurement": "energy",
        "timestamp": "2023-02-01T00:00:00.000Z",
        "tags": {"muid": IMPORT_MUID, "quality": "measured"},
        "0100011D00FF": data[0]["0100011D00FF"],
    }


@pytest.mark.parametrize(("muid", "obis"), [(IMPORT_MUID, "0100011D00FF"), (EXPORT_MUID, "0100021D00FF")])
def test_each_meter_reports_its_obis_code_with_the_model_values(
    api: httpx.Client, muid: str, obis: str
) -> None:
    data = measure(api, muid=muid, start="2023-06-21", stop="2023-06-22").json()["data"]
    assert {key for row in data for key in row} == {"measurement", "timestamp", "tags", obis}
    expected = readings.readings(readings.METERS[muid], date(2023, 6, 21), date(2023, 6, 22))
    assert data == expected


def test_a_range_is_stop_exclusive_and_values_do_not_depend_on_it(api: httpx.Client) -> None:
    three_days = measure(api, start="2023-02-01", stop="2023-02-04").json()["data"]
    middle_day = measure(api, start="2023-02-02", stop="2023-02-03").json()["data"]
    assert len(three_days) == 3 * 96
    assert three_days[96:192] == middle_day
    assert three_days[-1]["timestamp"] == "2023-02-03T23:45:00.000Z"


def test_pages_cover_exactly_the_day(api: httpx.Client) -> None:
    whole = measure(api).json()["data"]
    pages = [measure(api, limit=40, offset=offset).json()["data"] for offset in (0, 40, 80, 120)]
    assert [len(page) for page in pages] == [40, 40, 16, 0]
    assert [row for page in pages for row in page] == whole


def test_default_and_max_limit_is_1000(api: httpx.Client) -> None:
    assert len(measure(api, start="2023-01-01", stop="2023-02-01").json()["data"]) == 1000
    assert (
        len(measure(api, start="2023-01-01", stop="2023-02-01", limit=1000, offset=2900).json()["data"]) == 76
    )


def test_future_readings_do_not_exist_yet(api: httpx.Client) -> None:
    now = datetime.now(UTC)
    tomorrow = (now + timedelta(days=1)).date()
    assert measure(api, start=str(tomorrow), stop=str(tomorrow + timedelta(days=1))).json() == {"data": []}
    today = measure(api, start=str(now.date()), stop=str(tomorrow)).json()["data"]
    assert len(today) <= (now.hour * 60 + now.minute) // 15 + 1
    assert all(row["timestamp"] <= now.strftime("%Y-%m-%dT%H:%M:%S.999Z") for row in today)


@pytest.mark.parametrize(
    ("params", "parameter", "message"),
    [
        ({"muid": "00000000-0000-0000-0000-000000000000"}, "muid", "unknown muid"),
        ({"muid": ""}, "muid", "'muid' is required"),
        ({"measurement": "power"}, "measurement", "unsupported measurement 'power'"),
        ({"start": "2023-2-1"}, "start", "'start' must be a date YYYY-MM-DD"),
        ({"stop": "tomorrow"}, "stop", "'stop' must be a date YYYY-MM-DD"),
        ({"stop": "2023-02-01"}, "stop", "must be after 'start'"),
        ({"stop": "2023-01-31"}, "stop", "must be after 'start'"),
        ({"stop": "2023-03-05"}, "stop", "exceeds 31 days"),
        ({"limit": 0}, "limit", "'limit' must be between 1 and 1000"),
        ({"limit": 1001}, "limit", "'limit' must be between 1 and 1000"),
        ({"limit": "ten"}, "limit", "'limit' must be an integer"),
        ({"offset": -1}, "offset", "'offset' must be >= 0"),
    ],
)
def test_bad_input_is_a_400_naming_the_parameter(
    api: httpx.Client, params: dict, parameter: str, message: str
) -> None:
    response = measure(api, **params)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_parameter"
    assert body["parameter"] == parameter
    assert message in body["message"]


def test_rate_limit_fault_answers_429_with_retry_after_then_recovers(faults: httpx.Client) -> None:
    faults.post("/local/faults", json={"status": 429, "count": 2, "retry_after": 3}).raise_for_status()
    for _ in range(2):
        response = measure(faults)
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "3"
    assert measure(faults).status_code == 200


def test_server_error_fault_and_clearing(faults: httpx.Client) -> None:
    faults.post("/local/faults", json={"status": 503, "count": 5}).raise_for_status()
    response = measure(faults)
    assert response.status_code == 503
    assert "Retry-After" not in response.headers
    assert faults.get("/local/faults").json() == {
        "fault": {"status": 503, "retry_after": None},
        "remaining": 4,
    }
    faults.delete("/local/faults").raise_for_status()
    assert measure(faults).status_code == 200


def test_unsupported_fault_is_rejected(faults: httpx.Client) -> None:
    response = faults.post("/local/faults", json={"status": 404, "count": 1})
    assert response.status_code == 400
    assert "status must be one of" in response.json()["message"]


def test_stats_count_measurement_requests(api: httpx.Client) -> None:
    api.delete("/local/stats").raise_for_status()
    measure(api, start="2023-04-01", stop="2023-04-02")
    measure(api, muid="nope")
    api.get("/health")
    stats = api.get("/local/stats").json()
    assert stats["measurement_requests"] == 2
    assert stats["by_status"] == {"200": 1, "400": 1}
    assert (stats["recent"][0]["start"], stats["recent"][0]["rows"]) == ("2023-04-01", 96)
