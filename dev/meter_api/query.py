"""Validation of the measurement endpoint's query parameters.

Parameters arrive as raw strings so every problem becomes a 400 naming the parameter, the way the
vendor answers, rather than a framework-shaped 422.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from dev.meter_api.readings import MEASUREMENT, METERS, Meter

MAX_DAYS = 31
MAX_LIMIT = 1000


class InvalidParameter(ValueError):
    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.message = message

    def as_json(self) -> dict:
        return {"error": "invalid_parameter", "parameter": self.parameter, "message": self.message}


@dataclass(frozen=True)
class MeasurementQuery:
    meter: Meter
    start: date
    stop: date
    limit: int
    offset: int


def _required(name: str, value: str | None) -> str:
    if value is None or value == "":
        raise InvalidParameter(name, f"'{name}' is required")
    return value


def _date(name: str, value: str | None) -> date:
    raw = _required(name, value)
    try:
        if len(raw) != 10:  # fromisoformat also takes 20230201 and week dates; the vendor does not
            raise ValueError
        return date.fromisoformat(raw)
    except ValueError:
        raise InvalidParameter(name, f"'{name}' must be a date YYYY-MM-DD, got {raw!r}") from None


def _int(name: str, value: str | None, default: int, low: int, high: int | None) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise InvalidParameter(name, f"'{name}' must be an integer, got {value!r}") from None
    if number < low or (high is not None and number > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise InvalidParameter(name, f"'{name}' must be {bounds}, got {number}")
    return number


def parse_measurement_query(
    muid: str | None,
    measurement: str | None,
    start: str | None,
    stop: str | None,
    limit: str | None = None,
    offset: str | None = None,
) -> MeasurementQuery:
    muid = _required("muid", muid)
    if muid not in METERS:
        raise InvalidParameter("muid", f"unknown muid {muid!r}")
    measurement = _required("measurement", measurement)
    if measurement != MEASUREMENT:
        raise InvalidParameter("measurement", f"unsupported measurement {measurement!r}; only 'energy'")
    start_day = _date("start", start)
    stop_day = _date("stop", stop)
    if stop_day <= start_day:
        raise InvalidParameter("stop", f"'stop' ({stop_day}) must be after 'start' ({start_day})")
    if (stop_day - start_day).days > MAX_DAYS:
        raise InvalidParameter("stop", f"range {start_day}..{stop_day} exceeds {MAX_DAYS} days per request")
    return MeasurementQuery(
        meter=METERS[muid],
        start=start_day,
        stop=stop_day,
        limit=_int("limit", limit, default=MAX_LIMIT, low=1, high=MAX_LIMIT),
        offset=_int("offset", offset, default=0, low=0, high=None),
    )
