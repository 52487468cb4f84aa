"""elt.deferral: a trigger's event is held until the scheduler has surely read its task's exit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from airflow.configuration import conf
from airflow.triggers.base import BaseTrigger, TriggerEvent

from elt import deferral


class Fires(BaseTrigger):
    """Fires at once with its payload."""

    def __init__(self, payload: dict[str, Any]) -> None:
        super().__init__()
        self.payload = payload

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{__name__}.Fires", {"payload": self.payload}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        yield TriggerEvent(self.payload)


class HeldFires(deferral.SettledTrigger, Fires):
    pass


def first_event(trigger: BaseTrigger) -> tuple[dict[str, Any], float]:
    async def first() -> tuple[dict[str, Any], float]:
        event = await trigger.run().__anext__()
        return event.payload, time.time()

    return asyncio.run(first())


def test_an_event_is_held_until_not_before() -> None:
    start = time.time()
    payload, at = first_event(HeldFires({"status": "success"}, not_before=start + 0.4))
    assert payload == {"status": "success"}
    assert at >= start + 0.4


def test_an_event_after_not_before_is_not_held() -> None:
    start = time.time()
    payload, at = first_event(HeldFires({"status": "failed"}, not_before=start - 10))
    assert payload == {"status": "failed"}
    assert at - start < 0.2


def test_the_hold_survives_serialization() -> None:
    path, kwargs = HeldFires({"a": 1}, not_before=99.5).serialize()
    assert path == f"{__name__}.HeldFires"
    assert kwargs == {"payload": {"a": 1}, "not_before": 99.5}
    assert HeldFires(**kwargs).not_before == 99.5


def test_a_trigger_that_defines_run_itself_cannot_mix_the_hold_in() -> None:
    with pytest.raises(TypeError, match="defines run"):

        class Bypassing(deferral.SettledTrigger, Fires):
            async def run(self) -> AsyncIterator[TriggerEvent]:
                yield TriggerEvent({})


def test_the_hold_outlasts_the_supervisors_exit_tick() -> None:
    # The supervisor notices a task process's exit on its heartbeat tick (Airflow's config), and
    # only then does the executor report it: the hold must be longer, with room for both loops.
    tick = conf.getint("workers", "min_heartbeat_interval")
    assert tick + 3 <= deferral.SETTLE_SECONDS
    assert deferral.not_before() - time.time() > tick
