"""Watcher tasks after a clear vs after a retry (plugins/elt/watcher.py), on the rendered DAG's tasks.

The attempts follow Airflow's own bookkeeping: a task starts with max_tries = retries; a retry
adds one to try_number only; clearing sets max_tries = try_number + retries (then the next attempt
adds one to try_number) and adds one to the run's clear_number. Cosmos's own execute is replaced
by a recorder: what is checked is which attempt Cosmos is shown and whether the task waits.
Before Cosmos's execute, a model task's first attempt watches the producer's XComs in its worker
(elt.watcher.watch_in_worker); the XCom keys are the ones Cosmos's producer writes.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.configuration import conf
from airflow.sdk.exceptions import AirflowException, AirflowRescheduleException, TaskDeferred
from cosmos.operators._watcher.base import BaseConsumerSensor
from cosmos.operators._watcher.triggerer import WatcherTrigger
from cosmos.operators.watcher import DbtProducerWatcherOperator

from elt import watcher
from elt.watcher import CLEAR_NUMBER_KEY, ProducerWatcher, RunWatcher, TestWatcher

PRODUCER = "dbt.dbt_producer_watcher"


class FakeTI:
    """The parts of a RuntimeTaskInstance the watcher tasks use.

    `reports`: (key, value) the producer pushes when its status key has been read that many times
    without it (dbt finishing the model while the task watches); `reads`: how often it was read.
    `records`: (n, clear_number) the producer's new attempt records after n reads of its marker.
    """

    def __init__(self, try_number: int, max_tries: int, xcoms: dict | None = None) -> None:
        self.try_number, self.max_tries = try_number, max_tries
        self.xcoms = xcoms if xcoms is not None else {}
        self.reports: tuple[int, str, Any] | None = None
        self.reads = 0
        self.records: tuple[int, int] | None = None
        self.marker_reads = 0

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[(PRODUCER, key)] = value

    def xcom_pull(self, task_ids: str, key: str) -> Any:
        if key.endswith("_status"):
            self.reads += 1
            if self.reports and self.reads > self.reports[0]:
                self.xcoms[(PRODUCER, self.reports[1])] = self.reports[2]
        if key == CLEAR_NUMBER_KEY:
            self.marker_reads += 1
            if self.records and self.marker_reads > self.records[0]:
                self.xcoms[(PRODUCER, key)] = self.records[1]
        return self.xcoms.get((task_ids, key))


def status_key(task: Any) -> str:
    """The XCom key Cosmos's producer reports a model's (or its tests') result under."""
    suffix = "_tests_status" if task.task_id.endswith(".test") else "_status"
    return task.model_unique_id.replace(".", "__") + suffix


def reported(task: Any) -> Any:
    return "pass" if task.task_id.endswith(".test") else {"status": "success", "outlet_uris": []}


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
def tasks(dagbag, monkeypatch):
    dag = dagbag.dags["energy_meters"]
    found = {
        "producer": dag.get_task(PRODUCER),
        "run": dag.get_task("dbt.stg_energy_meters__muid_1.run"),
        "test": dag.get_task("dbt.stg_energy_meters__muid_1.test"),
    }
    for task in ("run", "test"):  # as in a task's own process: no pokes counted yet
        monkeypatch.setattr(found[task], "poke_retry_number", 0)
    return found


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


@pytest.fixture(autouse=True)
def producer_state(monkeypatch) -> dict[str, str]:
    """The producer's task state as the model tasks read it (running unless a test says otherwise)."""
    state = {"value": "running"}
    monkeypatch.setattr(BaseConsumerSensor, "_get_producer_task_status", lambda self, ctx: state["value"])
    return state


@pytest.fixture(autouse=True)
def short_watch(monkeypatch) -> None:
    """Not the producer_state fixture: the tests that parametrize producer_state replace it."""
    monkeypatch.setattr(watcher, "WATCH_INTERVAL_SECONDS", 0.01)
    monkeypatch.setattr(watcher, "WATCH_IN_WORKER_SECONDS", 0.3)


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
    ti.reports = (2, status_key(consumer), reported(consumer))
    consumer.execute(context(ti, clears))
    assert ti.reads == 3  # watched in its worker until the producer reported the model
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
    started = datetime.now(UTC)
    with pytest.raises(AirflowRescheduleException) as rescheduled:
        consumer.execute(context(ti, clears))
    assert shown == []
    assert ti.marker_reads >= 10  # it waited in its worker first, checking every WATCH_INTERVAL_SECONDS
    # then asks to run again well after its executor event has reached the scheduler: up to the
    # supervisor's min_heartbeat_interval after the process exits
    latency = timedelta(seconds=conf.getint("workers", "min_heartbeat_interval"))
    assert rescheduled.value.reschedule_date >= started + 3 * latency


@pytest.mark.parametrize("task", ["run", "test"])
def test_a_cleared_model_task_waits_in_its_worker_for_the_producers_attempt_to_start(
    tasks, shown, task
) -> None:
    """The producer's attempt starts beside the model tasks: a task that started first is not
    rescheduled (a try rescheduled for seconds later met the executor's event of the try before
    and was failed), it waits and then watches."""
    consumer = tasks[task]
    try_number, max_tries, clears = attempt(consumer.retries, "c")
    ti = FakeTI(try_number, max_tries, {(PRODUCER, CLEAR_NUMBER_KEY): clears - 1})
    ti.records = (4, clears)
    ti.reports = (2, status_key(consumer), reported(consumer))
    consumer.execute(context(ti, clears))
    assert ti.marker_reads == 5
    assert ti.reads == 3  # then watched until the producer reported the model
    assert shown == [1] and deferred == [False]


@pytest.mark.parametrize("producer_state", ["success", "failed", "skipped"])
@pytest.mark.parametrize("task", ["run", "test"])
@pytest.mark.parametrize("ran_before", [True, False])
def test_a_model_task_cleared_while_the_producer_stays_ended_runs_its_own_dbt(
    tasks, shown, monkeypatch, producer_state, task, ran_before
) -> None:
    """The producer ended without running in this clear (only the model task was cleared, or the
    failed tasks were and the producer's skipped retry was not): its XComs are from before, so
    Cosmos's fallback runs the model's own dbt. Also for a task that had not run before the clear
    (upstream_failed: try_number 1 after it), which read the old 'failed' and failed into a retry."""
    consumer = tasks[task]
    monkeypatch.setattr(type(consumer), "_get_producer_task_status", lambda self, ctx: producer_state)
    fallbacks: list[int] = []
    monkeypatch.setattr(
        type(consumer), "_fallback_to_non_watcher_run", lambda self, n, ctx: fallbacks.append(n) or True
    )
    try_number, max_tries, clears = attempt(consumer.retries, "c") if ran_before else (1, consumer.retries, 1)
    # the producer's XComs from before the clear: dbt skipped this model after an upstream test failed
    ti = FakeTI(try_number, max_tries, {(PRODUCER, CLEAR_NUMBER_KEY): clears - 1})
    ti.xcoms[(PRODUCER, status_key(consumer))] = "fail" if task == "test" else {"status": "failed"}
    consumer.execute(context(ti, clears))
    assert fallbacks == [try_number]
    assert shown == []  # not Cosmos's watch, which would fail on the old result


@pytest.mark.parametrize("task", ["run", "test"])
@pytest.mark.parametrize("history", ["", "r", "cr"])
def test_first_attempts_and_retries_of_model_tasks_are_cosmos_own(tasks, shown, task, history) -> None:
    consumer = tasks[task]
    try_number, max_tries, clears = attempt(consumer.retries, history)
    ti = FakeTI(try_number, max_tries)
    ti.reports = (0, status_key(consumer), reported(consumer))
    consumer.execute(context(ti, clears))
    assert shown == [try_number]
    assert deferred == [True]  # Cosmos's deferrable watch
    # A first attempt read its model's result (there at once) before Cosmos's execute; a retry
    # goes straight to Cosmos's (its fallback when the producer has ended).
    assert ti.reads == (1 if history == "" else 0)


@pytest.mark.parametrize("task", ["run", "test"])
def test_a_model_task_watches_in_its_worker_until_dbt_reports_its_model(tasks, shown, task) -> None:
    consumer = tasks[task]
    ti = FakeTI(1, consumer.retries)
    ti.reports = (5, status_key(consumer), reported(consumer))
    consumer.execute(context(ti, 0))
    assert ti.reads == 6
    assert consumer.poke_retry_number == 5  # each empty check counted, as Cosmos's poke counts them
    assert shown == [1] and deferred == [True]  # Cosmos's execute then finds the result: no deferral


def test_a_model_task_hands_over_to_cosmos_deferral_when_the_window_ends(tasks, shown) -> None:
    consumer = tasks["run"]
    ti = FakeTI(1, consumer.retries)
    started = time.monotonic()
    consumer.execute(context(ti, 0))
    assert time.monotonic() - started >= watcher.WATCH_IN_WORKER_SECONDS
    assert ti.reads >= 10  # kept checking every WATCH_INTERVAL_SECONDS
    assert shown == [1] and deferred == [True]


def test_a_producer_failing_while_a_model_task_watches_fails_the_task(
    tasks, producer_state, monkeypatch
) -> None:
    """Cosmos's own execute (not the recorder): no result for the model and the producer failed
    after the task started is the producer's failure, not a reason to run the model's own dbt."""
    consumer = tasks["run"]
    fallbacks: list[int] = []
    monkeypatch.setattr(
        type(consumer), "_fallback_to_non_watcher_run", lambda self, n, ctx: fallbacks.append(n) or True
    )
    ti = FakeTI(1, consumer.retries)
    original = ti.xcom_pull

    def pull(task_ids: str, key: str) -> Any:
        if ti.reads == 3:
            producer_state["value"] = "failed"
        return original(task_ids, key)

    ti.xcom_pull = pull
    with pytest.raises(AirflowException, match="failed in producer task"):
        consumer.execute(context(ti, 0))
    assert fallbacks == []


def test_a_producer_failed_before_the_model_task_started_keeps_cosmos_fallback(
    tasks, producer_state, monkeypatch
) -> None:
    """As Cosmos's first poke: the producer failed before this task ran (its upstream failed)."""
    consumer = tasks["run"]
    fallbacks: list[int] = []
    monkeypatch.setattr(
        type(consumer), "_fallback_to_non_watcher_run", lambda self, n, ctx: fallbacks.append(n) or True
    )
    producer_state["value"] = "failed"
    consumer.execute(context(FakeTI(1, consumer.retries), 0))
    assert fallbacks == [1]


@pytest.mark.parametrize("task", ["run", "test"])
def test_a_model_task_that_defers_holds_its_triggers_event_past_its_exit(tasks, task) -> None:
    consumer = tasks[task]
    trigger = WatcherTrigger(
        model_unique_id=consumer.model_unique_id,
        producer_task_id=PRODUCER,
        dag_id="energy_meters",
        run_id="manual__1",
        map_index=-1,
        poke_interval=5,
    )
    before = time.time()
    with pytest.raises(TaskDeferred) as deferred:
        consumer.defer(trigger=trigger, method_name="execute_complete")
    held = deferred.value.trigger
    assert isinstance(held, watcher.SettledWatcherTrigger)
    path, kwargs = held.serialize()
    assert path == "elt.watcher.SettledWatcherTrigger"
    assert {k: v for k, v in kwargs.items() if k != "not_before"} == trigger.serialize()[1]
    assert before + conf.getint("workers", "min_heartbeat_interval") < held.not_before
    assert deferred.value.method_name == "execute_complete"
