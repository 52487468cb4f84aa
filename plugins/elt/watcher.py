"""Cosmos's watcher tasks, told a cleared run from a retry.

Cosmos skips its producer on every attempt after the first (a retry must not run a second
`dbt build`), and each model task then runs its own dbt. Clearing a run (Clear in the UI, a
backfill that reprocesses) also starts attempt 2, so a cleared run rebuilt its models one dbt
invocation each: twelve for energy_meters instead of one `dbt build`. Worse, a model task of a
cleared run could report its model's result from before the clear: Airflow deletes the producer's
XComs only when the producer's next attempt starts, and a model task polling before that found
the old result (and the producer, skipped, rebuilt nothing).

Here the first attempt after a clear, by Airflow's own rule (try_number == max_tries - retries + 1,
as in `RuntimeTaskInstance.get_first_reschedule_date`), is treated as a first attempt:
- the producer records the run's `clear_number`, then runs `dbt build`;
- a model task waits until the producer's attempt of this clear has recorded it (in its worker
  for up to WATCH_IN_WORKER_SECONDS, then rescheduled: no slot held), then watches that attempt
  (poking in its worker, not deferred). If the producer ended without running in this clear (only
  the model task was cleared, or the producer's retry was skipped), the model task runs its own
  dbt (Cosmos's fallback). That includes a task that had not run before the clear (upstream_failed,
  cleared with the failed tasks as the runbook says): Cosmos would read the producer's old result,
  'failed' for a model dbt skipped after a failed test, and fail it into a retry.
Automatic retries are unchanged. A clear is told by the run's clear_number, which every clear
from the UI, the CLI or the REST API adds one to (unless the API is asked for reset_dag_runs=false:
then a cleared model task reads the producer's last results). A fix that belongs in Cosmos; kept
here as small subclasses.

A model task (first attempt, or watching the producer's attempt of a clear) first watches its
model's result in its worker, every WATCH_INTERVAL_SECONDS for up to WATCH_IN_WORKER_SECONDS, and
only then defers (Cosmos's trigger, polling every `poke_interval`, frees the slot for a long wait).
Deferring at once made each model task report up to a poll interval after dbt had built its model,
then start again from the trigger's event; and a trigger that fires within a second or two of its
task deferring can meet the scheduler's stale "success" of the deferral and fail the task
(apache/airflow#67287, #72716): most model tasks now never defer, and the trigger of one that does
holds its event until that report has been read (elt.deferral).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk.exceptions import AirflowRescheduleException
from cosmos.operators._watcher.state import is_producer_task_terminated
from cosmos.operators._watcher.triggerer import WatcherTrigger
from cosmos.operators.watcher import (
    DbtProducerWatcherOperator,
    DbtRunWatcherOperator,
    DbtSeedWatcherOperator,
    DbtSnapshotWatcherOperator,
    DbtSourceWatcherOperator,
    DbtTestWatcherOperator,
)

from elt import deferral

# XCom of the producer: the dag run's clear_number its running attempt belongs to.
CLEAR_NUMBER_KEY = "elt_producer_clear_number"

# A model task checks its model's result in its worker this often, for up to this long, then defers.
WATCH_INTERVAL_SECONDS = 0.5
WATCH_IN_WORKER_SECONDS = 30.0
# A cleared model task whose producer has not started within that window tries again this much later.
# Not sooner: a task process's executor event reaches the scheduler up to [workers]
# min_heartbeat_interval (5 s) after it exits (the supervisor's select then has no socket left to
# wake it), and an event that arrives after the rescheduled try was queued again, same try_number,
# fails that try ("finished with state success, but the task instance's state attribute is queued").
RESCHEDULE_SECONDS = 30.0

log = logging.getLogger(__name__)


def first_attempt_since_clear(ti: Any, retries: int | None) -> bool:
    """Attempt 1 of a run, or the first attempt after the task was cleared (not a retry)."""
    return ti.try_number == ti.max_tries - (retries or 0) + 1


def clear_number(context: Any) -> int:
    return int(getattr(context["dag_run"], "clear_number", 0) or 0)


class _FirstTry:
    """The task instance as Cosmos should see it: attempt 1; everything else is the real one."""

    try_number = 1

    def __init__(self, ti: Any) -> None:
        object.__setattr__(self, "_ti", ti)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ti, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._ti, name, value)


def as_first_try(context: Any) -> Any:
    ti = _FirstTry(context["ti"])
    return {**context, "ti": ti, "task_instance": ti}


def _cleared(context: Any, retries: int | None) -> bool:
    """The first attempt since a clear: of a task that ran before it, or of one that had not run
    (upstream_failed, cleared with the failed tasks), in a run cleared at least once."""
    ti = context["ti"]
    return first_attempt_since_clear(ti, retries) and (ti.try_number > 1 or clear_number(context) > 0)


class ProducerWatcher(DbtProducerWatcherOperator):
    def execute(self, context: Any, **kwargs: Any) -> Any:
        ti = context["ti"]
        if not first_attempt_since_clear(ti, self.retries):
            return super().execute(context, **kwargs)  # a retry: Cosmos skips it
        ti.xcom_push(key=CLEAR_NUMBER_KEY, value=clear_number(context))
        return super().execute(as_first_try(context) if ti.try_number > 1 else context, **kwargs)


class SettledWatcherTrigger(deferral.SettledTrigger, WatcherTrigger):
    """Cosmos's trigger of a model task, its event held until `not_before` (elt.deferral)."""


class _ClearAwareConsumer:
    """Mixed in before a Cosmos consumer class (a model's run or test task)."""

    producer_task_id: str
    retries: int | None
    deferrable: bool
    poke_retry_number: int
    model_unique_id: str

    def execute(self, context: Any, **kwargs: Any) -> Any:
        if _cleared(context, self.retries):
            if self.wait_for_the_producer_of_this_clear(context):
                self.watch_in_worker(context)
                # Then keep watching here: a cleared run's producer attempt already ran a while.
                deferrable, self.deferrable = self.deferrable, False
                try:
                    return super().execute(as_first_try(context), **kwargs)  # type: ignore[misc]
                finally:
                    self.deferrable = deferrable
            if not is_producer_task_terminated(self._get_producer_task_status(context)):  # type: ignore[attr-defined]
                # Its attempt of this clear has not started: what its XComs hold is from before.
                raise AirflowRescheduleException(datetime.now(UTC) + timedelta(seconds=RESCHEDULE_SECONDS))
            # The producer ended without running in this clear: its XComs are from before (a model
            # dbt skipped for a failed upstream reads 'failed' there), so the model's own dbt runs.
            return self._fallback_to_non_watcher_run(context["ti"].try_number, context)  # type: ignore[attr-defined]
        if context["ti"].try_number == 1:
            self.watch_in_worker(context)
        return super().execute(context, **kwargs)  # type: ignore[misc]

    def defer(self, *, trigger: Any, **kwargs: Any) -> None:
        if type(trigger) is WatcherTrigger:
            _, trigger_kwargs = trigger.serialize()
            trigger = SettledWatcherTrigger(**trigger_kwargs, not_before=deferral.not_before())
        super().defer(trigger=trigger, **kwargs)  # type: ignore[misc]

    def wait_for_the_producer_of_this_clear(self, context: Any) -> bool:
        """True once the producer's attempt of this clear has recorded it (it starts beside the
        model tasks); False if the producer has ended without (Cosmos's fallback then) or has not
        started within the window (the task is then rescheduled)."""
        deadline = time.monotonic() + WATCH_IN_WORKER_SECONDS
        while True:
            recorded = context["ti"].xcom_pull(task_ids=self.producer_task_id, key=CLEAR_NUMBER_KEY)
            if recorded == clear_number(context):
                return True
            if is_producer_task_terminated(self._get_producer_task_status(context)):  # type: ignore[attr-defined]
                return False
            if time.monotonic() >= deadline:
                return False
            time.sleep(WATCH_INTERVAL_SECONDS)

    def watch_in_worker(self, context: Any) -> None:
        """Return once the model's result is known, the producer has ended, or the window is over.

        Cosmos's execute then decides from the same XComs (success, skip, failure, its fallback or
        a deferral). Each check that finds nothing counts as Cosmos's poke would, so a producer that
        fails after the task started fails the task rather than starting the task's own dbt.
        """
        deadline = time.monotonic() + WATCH_IN_WORKER_SECONDS
        ti = context["ti"]
        log.info("Watching '%s' in this worker for up to %g s", self.model_unique_id, WATCH_IN_WORKER_SECONDS)
        while True:
            if self._get_node_status(ti, context) is not None:  # type: ignore[attr-defined]
                return
            if is_producer_task_terminated(self._get_producer_task_status(context)):  # type: ignore[attr-defined]
                return
            self.poke_retry_number += 1
            if time.monotonic() >= deadline:
                return
            time.sleep(WATCH_INTERVAL_SECONDS)


class RunWatcher(_ClearAwareConsumer, DbtRunWatcherOperator):
    pass


class TestWatcher(_ClearAwareConsumer, DbtTestWatcherOperator):
    __test__ = False


class SeedWatcher(_ClearAwareConsumer, DbtSeedWatcherOperator):
    pass


class SnapshotWatcher(_ClearAwareConsumer, DbtSnapshotWatcherOperator):
    pass


class SourceWatcher(_ClearAwareConsumer, DbtSourceWatcherOperator):
    pass


CLEAR_AWARE: dict[type, type] = {
    DbtProducerWatcherOperator: ProducerWatcher,
    DbtRunWatcherOperator: RunWatcher,
    DbtTestWatcherOperator: TestWatcher,
    DbtSeedWatcherOperator: SeedWatcher,
    DbtSnapshotWatcherOperator: SnapshotWatcher,
    DbtSourceWatcherOperator: SourceWatcher,
}


def make_clear_aware(task: Any) -> None:
    """Give a task Cosmos rendered its clear-aware class (same state, same arguments)."""
    cls = CLEAR_AWARE.get(type(task))
    if cls is not None:
        task.__class__ = cls
