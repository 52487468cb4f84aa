"""Watcher tasks after a clear vs after a retry (plugins/elt/watcher.py), on the rendered DAG's tasks.

The attempts follow Airflow's own bookkeeping: a task starts with max_tries = retries; a retry
adds one to try_number only; clearing sets max_tries = try_number + retries (then the next attempt
adds one to try_number) and adds one to the run's clear_number. Cosmos's own execute is replaced
by a recorder: what is checked is which attempt Cosmos is shown and whether the task waits.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowRescheduleException
from cosmos.operators._watcher.base import BaseConsumerSensor
from cosmos.operators.watcher import DbtProducerWatcherOperator

from elt.watcher import CLEAR_NUMBER_KEY, ProducerWatcher, RunWatcher, TestWatcher

PRODUCER = "dbt.dbt_producer_watcher"


class FakeTI:
    """The parts of a RuntimeTaskInstance the watcher tasks use."""

    def __init__(self, try_number: int, max_tries: int, xcoms: dict | None = None) -> None:
        self.try_number, self.max_tries = try_number, max_tries
        self.xcoms = xcoms if xcoms is not None else {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[(PRODUCER, key)] = value

    def xcom_pull(self, task_ids: str, key: str) -> Any:
        return self.xcoms.get((task_ids, key))


def attempt(retries: int, history: str) -> tuple[int, int, int]:
    """(try_number, max_tries, clear_number) after a history of 'r' (retry) and 'c' (clear)."""
    try_number, max_tries, clears = 1, retries, 0
    for event in history:
        if event == "c":
            max_tries, clears = try_number + retries, clears + 1
        try_number += 1
    return try_number, max_tries, clears


def context(ti: FakeTI, clear_number: int) -> dict:
    return {"ti": ti, "task_instance": ti, "dag_run": SimpleNamespace(clear_number=clear_number)}


@pytest.fixture
def tasks(dagbag):
    dag = dagbag.dags["energy_meters"]
    return {
        "producer": dag.get_task(PRODUCER),
        "run": dag.get_task("dbt.stg_energy_meters__muid_1.run"),
        "test": dag.get_task("dbt.stg_energy_meters__muid_1.test"),
    }


deferred: list[bool] = []


@pytest.fixture
def shown(monkeypatch) -> list[int]:
    """The try_number Cosmos's execute was shown, per call (and `deferred`: whether it may defer)."""
    deferred.clear()
    seen: list[int] = []

    def record(self, context, **kwargs):
        seen.append(context["ti"].try_number)
        if isinstance(self, BaseConsumerSensor):
            deferred.append(self.deferrable)

    monkeypatch.setattr(DbtProducerWatcherOperator, "execute", record)
    monkeypatch.setattr(BaseConsumerSensor, "execute", record)
    return seen


def test_the_rendered_watcher_tasks_are_the_clear_aware_ones(tasks) -> None:
    assert type(tasks["producer"]) is ProducerWatcher
    assert type(tasks["run"]) is RunWatcher
    assert type(tasks["test"]) is TestWatcher


@pytest.mark.parametrize(
    ("history", "shown_try", "marker"),
    [
        ("", 1, True),  # the run's first attempt
        ("r", 2, False),  # a retry: Cosmos skips it (no second dbt build)
        ("rr", 3, False),
        ("c", 1, True),  # cleared after attempt 1: runs dbt build again
        ("rc", 1, True),  # cleared after a retry
        ("cr", 3, False),  # a retry after the clear's attempt
        ("cc", 1, True),
    ],
)
def test_producer_runs_dbt_on_a_cleared_run_but_not_on_a_retry(
    tasks, shown, history, shown_try, marker
) -> None:
    producer = tasks["producer"]
    try_number, max_tries, clears = attempt(producer.retries, history)
    ti = FakeTI(try_number, max_tries)
    producer.execute(context(ti, clears))
    assert shown == [shown_try]
    assert ti.xcoms.get((PRODUCER, CLEAR_NUMBER_KEY)) == (clears if marker else None)


@pytest.mark.parametrize("task", ["run", "test"])
def test_a_cleared_model_task_watches_the_producers_attempt_of_this_clear(tasks, shown, task) -> None:
    consumer = tasks[task]
    try_number, max_tries, clears = attempt(consumer.retries, "c")
    ti = FakeTI(try_number, max_tries, {(PRODUCER, CLEAR_NUMBER_KEY): clears})
    consumer.execute(context(ti, clears))
    assert shown == [1]
    assert deferred == [False]  # pokes in its worker: no trigger firing seconds after a deferral


@pytest.mark.parametrize("producer_state", [None, "scheduled", "queued", "running", "up_for_retry"])
def test_a_cleared_model_task_waits_while_the_producers_attempt_has_not_started(
    tasks, shown, monkeypatch, producer_state
) -> None:
    """Before the producer's new attempt starts, its XComs are the old attempt's: not read."""
    consumer = tasks["run"]
    monkeypatch.setattr(type(consumer), "_get_producer_task_status", lambda self, ctx: producer_state)
    try_number, max_tries, clears = attempt(consumer.retries, "c")
    # the marker of the attempt before the clear is still there
    ti = FakeTI(try_number, max_tries, {(PRODUCER, CLEAR_NUMBER_KEY): clears - 1})
    with pytest.raises(AirflowRescheduleException):
        consumer.execute(context(ti, clears))
    assert shown == []


@pytest.mark.parametrize("producer_state", ["success", "failed", "skipped"])
def test_a_model_task_cleared_alone_keeps_cosmos_fallback(tasks, shown, monkeypatch, producer_state) -> None:
    """The producer ended without running in this clear: Cosmos's retry path (its own dbt) runs."""
    consumer = tasks["run"]
    monkeypatch.setattr(type(consumer), "_get_producer_task_status", lambda self, ctx: producer_state)
    try_number, max_tries, clears = attempt(consumer.retries, "c")
    ti = FakeTI(try_number, max_tries, {(PRODUCER, CLEAR_NUMBER_KEY): clears - 1})
    consumer.execute(context(ti, clears))
    assert shown == [try_number]


@pytest.mark.parametrize("task", ["run", "test"])
@pytest.mark.parametrize("history", ["", "r", "cr"])
def test_first_attempts_and_retries_of_model_tasks_are_cosmos_own(tasks, shown, task, history) -> None:
    consumer = tasks[task]
    try_number, max_tries, clears = attempt(consumer.retries, history)
    consumer.execute(context(FakeTI(try_number, max_tries), clears))
    assert shown == [try_number]
    assert deferred == [True]  # Cosmos's deferrable watch
