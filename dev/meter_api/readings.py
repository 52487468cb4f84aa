"""Synthetic 15-minute energy readings for the two local meters.

Pure functions, no web framework: the API serves them and tests import them directly.

A reading at timestamp ``t`` is the energy (kWh) of the 15 minutes ending at ``t``. Its value
depends only on the meter and ``t`` (noise comes from a hash of both, never from a RNG), so any
request for any range returns the same numbers.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

INTERVAL = timedelta(minutes=15)
READINGS_PER_DAY = 96
MEASUREMENT = "energy"
OBIS_IMPORT = "0100011D00FF"  # active energy drawn from the grid
OBIS_EXPORT = "0100021D00FF"  # active energy fed into the grid


@dataclass(frozen=True)
class Meter:
    muid: str
    obis: str
    profile: str  # "household" or "pv"


METERS: dict[str, Meter] = {
    m.muid: m
    for m in (
        Meter("95ce3367-cbce-4a4d-bbe3-da082831d7bd", OBIS_IMPORT, "household"),
        Meter("1db7649e-9342-4e04-97c7-f0ebb88ed1f8", OBIS_EXPORT, "pv"),
    )
}


def format_timestamp(ts: datetime) -> str:
    """The vendor's format: UTC, milliseconds, ``Z`` suffix."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def _unit(*parts: str) -> float:
    """A deterministic pseudo-random number in [0, 1) derived from ``parts``."""
    digest = hashlib.blake2b("|".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _gauss(x: float, centre: float, width: float) -> float:
    return math.exp(-0.5 * ((x - centre) / width) ** 2)


def _season(day: date) -> float:
    """+1 at the June solstice, -1 at the December solstice (northern hemisphere)."""
    return math.sin(2 * math.pi * (day.timetuple().tm_yday - 80) / 365.25)


def household_kwh(muid: str, ts: datetime) -> float:
    """Household consumption: ~200 W base load, a morning and a larger evening peak, more in winter."""
    mid = ts - INTERVAL / 2  # shape is evaluated at the middle of the interval the reading covers
    hour = mid.hour + mid.minute / 60
    shape = 0.05 + 0.20 * _gauss(hour, 7.0, 1.0) + 0.30 * _gauss(hour, 19.0, 1.6)
    seasonal = 1.0 - 0.2 * _season(mid.date())
    noise = 0.8 + 0.4 * _unit(muid, format_timestamp(ts))
    return shape * seasonal * noise


def pv_kwh(muid: str, ts: datetime) -> float:
    """PV export of a ~5 kWp system: zero at night, a bell centred on 12:00 UTC, longer and higher in summer."""
    mid = ts - INTERVAL / 2
    hour = mid.hour + mid.minute / 60
    season = _season(mid.date())
    daylight_hours = 12.0 + 4.0 * season  # 8 h in December .. 16 h in June
    sunrise = 12.0 - daylight_hours / 2
    if not 0.0 < hour - sunrise < daylight_hours:
        return 0.0
    bell = math.sin(math.pi * (hour - sunrise) / daylight_hours) ** 2
    peak = 0.7 + 0.4 * season  # kWh per 15 min at solar noon on a clear day
    cloud = 0.3 + 0.7 * _unit(muid, mid.date().isoformat())  # one cloudiness per day
    flicker = 0.9 + 0.2 * _unit(muid, format_timestamp(ts))
    return peak * bell * cloud * flicker


_PROFILES = {"household": household_kwh, "pv": pv_kwh}


def reading(meter: Meter, ts: datetime) -> dict:
    """One reading in the vendor's JSON shape."""
    value = _PROFILES[meter.profile](meter.muid, ts)
    return {
        "measurement": MEASUREMENT,
        "timestamp": format_timestamp(ts),
        "tags": {"muid": meter.muid, "quality": "measured"},
        meter.obis: round(value, 4),
    }


def timestamps(start: date, stop: date, until: datetime | None = None) -> Iterator[datetime]:
    """Reading times in [start 00:00Z, stop 00:00Z), none after ``until`` (data does not exist yet)."""
    ts = datetime.combine(start, time(), UTC)
    end = datetime.combine(stop, time(), UTC)
    if until is not None:
        end = min(end, until + timedelta(microseconds=1))
    while ts < end:
        yield ts
        ts += INTERVAL


def readings(meter: Meter, start: date, stop: date, until: datetime | None = None) -> list[dict]:
    return [reading(meter, ts) for ts in timestamps(start, stop, until)]
