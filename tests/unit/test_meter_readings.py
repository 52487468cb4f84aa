"""The meter API's value model and parameter validation, without a server."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from dev.meter_api.query import InvalidParameter, parse_measurement_query
from dev.meter_api.readings import METERS, OBIS_EXPORT, OBIS_IMPORT, reading, readings, timestamps

HOUSEHOLD = METERS["95ce3367-cbce-4a4d-bbe3-da082831d7bd"]
PV = METERS["1db7649e-9342-4e04-97c7-f0ebb88ed1f8"]


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


def values(meter, day: date) -> list[float]:
    return [row[meter.obis] for row in readings(meter, day, day + timedelta(days=1))]


def test_meters_and_obis_codes() -> None:
    assert (HOUSEHOLD.obis, PV.obis) == (OBIS_IMPORT, OBIS_EXPORT)


def test_a_value_depends_only_on_meter_and_timestamp() -> None:
    ts = at(date(2023, 2, 2), 7, 30)
    from_week = readings(HOUSEHOLD, date(2023, 1, 30), date(2023, 2, 6))
    assert reading(HOUSEHOLD, ts) in from_week
    assert reading(HOUSEHOLD, ts) == reading(HOUSEHOLD, ts)
    assert reading(HOUSEHOLD, ts)[OBIS_IMPORT] != reading(HOUSEHOLD, ts + timedelta(days=1))[OBIS_IMPORT]


def test_values_are_plausible_kwh_per_quarter_hour_rounded_to_4_decimals() -> None:
    for meter in (HOUSEHOLD, PV):
        for day in (date(2023, 1, 15), date(2023, 6, 21)):
            for value in values(meter, day):
                assert 0.0 <= value < 1.5
                assert value == round(value, 4)
    assert 5 < sum(values(HOUSEHOLD, date(2023, 1, 15))) < 25  # kWh per day, a typical household


def test_household_has_morning_and_evening_peaks_over_a_night_base_load() -> None:
    day = values(HOUSEHOLD, date(2023, 3, 1))
    night, morning, evening = day[2 * 4 : 4 * 4], day[7 * 4 : 8 * 4], day[19 * 4 : 20 * 4]
    assert max(night) < min(morning)
    assert max(night) < min(evening)


def test_pv_is_zero_at_night_peaks_around_noon_and_is_seasonal() -> None:
    june, december = values(PV, date(2023, 6, 21)), values(PV, date(2023, 12, 21))
    for day in (june, december):
        assert day[: 3 * 4] == [0.0] * 12  # 00:00-02:45
        assert day[22 * 4 :] == [0.0] * 8
        assert max(day) == max(day[10 * 4 : 14 * 4])
    assert sum(1 for v in june if v > 0) > sum(1 for v in december if v > 0)  # longer days
    summer = sum(sum(values(PV, date(2023, 6, d))) for d in range(1, 29))
    winter = sum(sum(values(PV, date(2023, 12, d))) for d in range(1, 29))
    assert summer > 2 * winter


def test_timestamps_are_stop_exclusive_and_never_after_until() -> None:
    day = date(2023, 2, 1)
    stamps = list(timestamps(day, day + timedelta(days=1)))
    assert (len(stamps), stamps[0], stamps[-1]) == (96, at(day, 0), at(day, 23, 45))
    assert list(timestamps(day, day + timedelta(days=1), until=at(day, 1, 0))) == stamps[:5]


@pytest.mark.parametrize(
    ("overrides", "parameter"),
    [
        ({"muid": "x"}, "muid"),
        ({"measurement": "power"}, "measurement"),
        ({"start": "20230201"}, "start"),
        ({"stop": "2023-02-01"}, "stop"),
        ({"stop": "2023-03-05"}, "stop"),  # 32 days
        ({"limit": "1001"}, "limit"),
        ({"offset": "-5"}, "offset"),
    ],
)
def test_invalid_parameters_are_named(overrides: dict, parameter: str) -> None:
    params = {"muid": HOUSEHOLD.muid, "measurement": "energy", "start": "2023-02-01", "stop": "2023-02-02"}
    with pytest.raises(InvalidParameter) as raised:
        parse_measurement_query(**(params | overrides))
    assert raised.value.parameter == parameter


def test_defaults_and_the_longest_range() -> None:
    query = parse_measurement_query(HOUSEHOLD.muid, "energy", "2023-01-01", "2023-02-01")
    assert (query.meter, query.limit, query.offset) == (HOUSEHOLD, 1000, 0)
