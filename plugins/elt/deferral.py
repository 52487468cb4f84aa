"""Deferrals whose resumed try a stale executor event cannot fail (apache/airflow#72716).

A task that defers ends its worker process, and the executor reports that try as `success`. The
scheduler reads that report up to [workers] min_heartbeat_interval (5 s) later: the supervisor
notices its process exit only on its next heartbeat tick. If the trigger fires sooner and the
resumed try is already `running` when the report is read, Airflow 3.3 takes it for a task killed
externally ("finished with state success, but the task instance's state attribute is running")
and fails the try: a retry (and a retry alert) for nothing, or a failed run and a page where the
task has no retries. Airflow 3.3 tolerates the report only while the resumed try is `scheduled`;
the fixes for `running` are open upstream (apache/airflow#71579, #72767): drop the hold once a
pinned Airflow release has one.

So a trigger here holds its event until `not_before`, SETTLE_SECONDS after the deferral: by then
the scheduler has read the report while the task was still deferred (which it ignores). A trigger
that fires later pays nothing; the tasks that defer first watch in their worker for a while
(elt.airbyte, elt.watcher), so a short wait does not defer at all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.configuration import conf
from airflow.triggers.base import TriggerEvent

# The supervisor's exit tick, then the executor's and the scheduler's loops (~1 s each, more when busy).
SETTLE_SECONDS = conf.getint("workers", "min_heartbeat_interval", fallback=5) + 5.0


def not_before() -> float:
    """The earliest time (epoch seconds) a trigger created now may fire."""
    return time.time() + SETTLE_SECONDS


class SettledTrigger:
    """Mixed in before a trigger class: its events wait until `not_before` (epoch seconds)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "run" in cls.__dict__:  # it would come before this mixin's run: no hold
            raise TypeError(
                f"{cls.__qualname__} defines run(), which bypasses SettledTrigger's hold: "
                "mix SettledTrigger into a subclass of the trigger class instead"
            )

    def __init__(self, *args: Any, not_before: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.not_before = not_before

    def serialize(self) -> tuple[str, dict[str, Any]]:
        _, kwargs = super().serialize()  # type: ignore[misc]
        return f"{type(self).__module__}.{type(self).__qualname__}", {**kwargs, "not_before": self.not_before}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        async for event in super().run():  # type: ignore[misc]
            if (hold := self.not_before - time.time()) > 0:
                self.log.info(  # type: ignore[attr-defined]
                    "Holding the event %.1f s: the task deferred %.0f s ago and the scheduler may not "
                    "have read its exit yet (apache/airflow#72716)",
                    hold,
                    SETTLE_SECONDS - hold,
                )
                await asyncio.sleep(hold)
            yield event
