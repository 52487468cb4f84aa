"""The Airbyte task subclasses against the live local Airbyte, with its fault injection."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.providers.airbyte.hooks.airbyte import AirbyteHook
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred

from elt.airbyte import AirbyteJobTrigger, AirbyteJobWaitSensor, AirbyteSyncOperator, list_jobs
from tests.integration.conftest_airbyte import StackServer, cancel_unfinished_jobs
from tests.integration.pipeline_runs import ECOMMERCE_CONNECTION, local_airbyte

pytestmark = pytest.mark.stack


@pytest.fixture
def airbyte(stack):
    """Jobs of the e-commerce connection are held in `pending` (nothing syncs) unless a test releases them."""
    local_airbyte(stack, "DELETE", "/faults")
    local_airbyte(stack, "POST", "/faults/hold-jobs", {"connectionId": ECOMMERCE_CONNECTION})
    hook = AirbyteHook("airbyte_default", timeout=30)
    yield hook
    local_airbyte(stack, "DELETE", "/faults")
    cancel_unfinished_jobs(hook)


def context(try_number: int = 1, started: datetime | None = None, run_type: str = "manual") -> dict:
    return {
        "ti": SimpleNamespace(try_number=try_number),
        "dag_run": SimpleNamespace(start_date=started or datetime.now(UTC), run_type=run_type),
    }


def operator(**kwargs) -> AirbyteSyncOperator:
    return AirbyteSyncOperator(
        task_id="sync", connection_id=ECOMMERCE_CONNECTION, request_timeout=10, **kwargs
    )


def trigger(job_id: int, **kwargs) -> AirbyteJobTrigger:
    defaults = {"end_time": time.time() + 120, "poll_interval": 0.5, "request_timeout": 10}
    return AirbyteJobTrigger(conn_id="airbyte_default", job_id=job_id, **{**defaults, **kwargs})


async def first_event(trig: AirbyteJobTrigger, timeout: float):
    return (await asyncio.wait_for(trig.run().__anext__(), timeout)).payload


def test_a_409_attaches_to_the_running_sync(airbyte) -> None:
    running = airbyte.submit_sync_connection(ECOMMERCE_CONNECTION)
    job_id = operator().execute(context())
    assert job_id == running.job_id
    assert (
        len([j for j in list_jobs(airbyte, ECOMMERCE_CONNECTION, limit=20) if j.status.value == "pending"])
        == 1
    )


def test_a_retried_trigger_task_reuses_its_earlier_sync(airbyte) -> None:
    started = datetime.now(UTC) - timedelta(seconds=5)
    first = operator().execute(context(try_number=1, started=started))
    local_airbyte_jobs = {j.job_id for j in list_jobs(airbyte, ECOMMERCE_CONNECTION, limit=50)}
    second = operator().execute(context(try_number=2, started=started))
    assert second == first
    assert {j.job_id for j in list_jobs(airbyte, ECOMMERCE_CONNECTION, limit=50)} == local_airbyte_jobs


def test_pending_counts_as_running_until_the_job_ends(airbyte, stack) -> None:
    job = airbyte.submit_sync_connection(ECOMMERCE_CONNECTION)

    async def scenario():
        trig = trigger(job.job_id)
        events = trig.run()
        pending = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(3)
        assert not pending.done(), "a pending job must keep the trigger polling"
        await asyncio.to_thread(airbyte.cancel_job, job.job_id)
        return (await asyncio.wait_for(pending, 30)).payload

    event = asyncio.run(scenario())
    assert event["status"] == "cancelled" and event["job_id"] == job.job_id


def test_transient_5xx_while_polling_is_ridden_out(airbyte, stack) -> None:
    job = airbyte.submit_sync_connection(ECOMMERCE_CONNECTION)
    airbyte.cancel_job(job.job_id)
    local_airbyte(stack, "POST", "/faults/http-error", {"status": 503, "count": 3, "pathPrefix": "/jobs"})
    event = asyncio.run(first_event(trigger(job.job_id), 60))
    assert event["status"] == "cancelled", event


def test_requests_have_an_explicit_timeout(airbyte, stack) -> None:
    local_airbyte(stack, "POST", "/faults/hang", {"seconds": 30, "count": 1, "pathPrefix": "/jobs"})
    hook = AirbyteHook("airbyte_default", timeout=2)
    started = time.monotonic()
    with pytest.raises(AirflowException):
        hook.submit_sync_connection(ECOMMERCE_CONNECTION)
    assert time.monotonic() - started < 10


def test_the_wait_cancels_the_job_when_it_times_out(airbyte) -> None:
    job = airbyte.submit_sync_connection(ECOMMERCE_CONNECTION)
    event = asyncio.run(first_event(trigger(job.job_id, end_time=time.time() + 2), 30))
    assert event["status"] == "timeout"
    sensor = AirbyteJobWaitSensor(
        task_id="wait", airbyte_job_id=job.job_id, connection_id=ECOMMERCE_CONNECTION
    )
    with pytest.raises(AirflowException, match="did not finish in time"):
        sensor.execute_complete(context(), event)
    assert airbyte.get_job_status(job.job_id).value == "cancelled"


def test_killing_the_deferred_wait_cancels_the_job(airbyte) -> None:
    job = airbyte.submit_sync_connection(ECOMMERCE_CONNECTION)
    asyncio.run(trigger(job.job_id).on_kill())
    assert airbyte.get_job_status(job.job_id).value == "cancelled"


def test_killing_a_running_wait_cancels_the_job(airbyte) -> None:
    job = airbyte.submit_sync_connection(ECOMMERCE_CONNECTION)
    AirbyteJobWaitSensor(task_id="wait", airbyte_job_id=job.job_id).on_kill()
    assert airbyte.get_job_status(job.job_id).value == "cancelled"


def test_a_failed_job_fails_the_wait_for_good(airbyte, stack) -> None:
    local_airbyte(stack, "DELETE", "/faults")
    local_airbyte(
        stack, "POST", "/faults/fail-next-job", {"connectionId": ECOMMERCE_CONNECTION, "message": "boom"}
    )
    job = airbyte.submit_sync_connection(ECOMMERCE_CONNECTION)
    event = asyncio.run(first_event(trigger(job.job_id), 120))
    assert event["status"] == "failed"
    sensor = AirbyteJobWaitSensor(
        task_id="wait", airbyte_job_id=job.job_id, connection_id=ECOMMERCE_CONNECTION
    )
    with pytest.raises(AirflowFailException) as failed:
        sensor.execute_complete(context(), event)
    # The cause, from the job's attempts (Airbyte's configuration API), is what the alert quotes.
    assert str(failed.value) == f"Airbyte job {job.job_id} failed: replication: boom"
    assert sensor.job_url.endswith(f"/connections/{ECOMMERCE_CONNECTION}/timeline?jobId={job.job_id}")


# -- the fault matrix (issue 12): the API blinks, replies get lost, the server restarts ---------------


def release(stack) -> None:
    local_airbyte(stack, "DELETE", f"/faults/hold-jobs/{ECOMMERCE_CONNECTION}")


def new_jobs(hook: AirbyteHook, before: set[int]) -> list[int]:
    return sorted(j.job_id for j in list_jobs(hook, ECOMMERCE_CONNECTION, limit=50) if j.job_id not in before)


def jobs_now(hook: AirbyteHook) -> set[int]:
    return {j.job_id for j in list_jobs(hook, ECOMMERCE_CONNECTION, limit=50)}


def wait_until_done(sensor: AirbyteJobWaitSensor, job_id: int, timeout: float = 600) -> dict:
    """The wait as Airflow runs it: execute, then the trigger in the triggerer, then execute_complete."""
    try:
        return sensor.execute(context())
    except TaskDeferred as deferred:
        assert int(deferred.trigger.job_id) == job_id
        event = asyncio.run(first_event(deferred.trigger, timeout))
    return sensor.execute_complete(context(), event)


def test_503s_during_the_wait_of_a_succeeding_job_do_not_fail_it(airbyte, stack) -> None:
    job_id = operator().execute(context())
    release(stack)
    # 20 in a row on job polling: execute's polls (in the worker) and the deferred ones share them.
    local_airbyte(
        stack,
        "POST",
        "/faults/http-error",
        {"status": 503, "count": 20, "method": "GET", "pathPrefix": "/jobs/"},
    )
    sensor = AirbyteJobWaitSensor(
        task_id="wait", airbyte_job_id=job_id, connection_id=ECOMMERCE_CONNECTION, poll_interval=1
    )
    assert wait_until_done(sensor, job_id)["job_id"] == job_id
    assert local_airbyte(stack, "GET", "/faults")["http"] == []  # all 20 were served


def test_two_503s_at_submit_leave_one_job(airbyte, stack) -> None:
    before = jobs_now(airbyte)
    local_airbyte(
        stack,
        "POST",
        "/faults/http-error",
        {"status": 503, "count": 2, "method": "POST", "pathPrefix": "/jobs"},
    )
    job_id = operator().execute(context())
    assert new_jobs(airbyte, before) == [job_id]


def test_a_lost_submit_reply_leaves_one_job(airbyte, stack) -> None:
    before = jobs_now(airbyte)
    local_airbyte(
        stack, "POST", "/faults/drop-reply", {"seconds": 8, "method": "POST", "pathPrefix": "/jobs"}
    )
    job_id = AirbyteSyncOperator(
        task_id="sync", connection_id=ECOMMERCE_CONNECTION, request_timeout=3
    ).execute(context())
    assert new_jobs(airbyte, before) == [job_id]


def test_a_cleared_wait_on_a_failed_job_syncs_again(airbyte, stack) -> None:
    local_airbyte(
        stack, "POST", "/faults/fail-next-job", {"connectionId": ECOMMERCE_CONNECTION, "message": "boom"}
    )
    release(stack)
    failed = airbyte.submit_sync_connection(ECOMMERCE_CONNECTION).job_id
    asyncio.run(first_event(trigger(failed), 120))
    local_airbyte(stack, "POST", "/faults/hold-jobs", {"connectionId": ECOMMERCE_CONNECTION})
    sensor = AirbyteJobWaitSensor(  # held jobs never end: defer at once, not after watching 30 s
        task_id="wait", airbyte_job_id=failed, connection_id=ECOMMERCE_CONNECTION, watch_in_worker=0
    )
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context(try_number=2))
    new = int(deferred.value.trigger.job_id)
    assert new != failed
    assert airbyte.get_job_status(new).value in ("pending", "running")
    assert sensor.job_url.endswith(f"jobId={new}")


def test_the_wait_rides_through_a_restart_of_airbyte_mid_sync(airbyte, stack) -> None:
    before = jobs_now(airbyte)
    job_id = operator().execute(context())
    release(stack)
    server = StackServer(Path(stack["STACK_HOME"]))
    deadline = time.monotonic() + 120
    while not local_airbyte(stack, "GET", f"/jobs/{job_id}")["pid"] and time.monotonic() < deadline:
        time.sleep(0.5)
    server.kill()
    server.start()
    sensor = AirbyteJobWaitSensor(
        task_id="wait", airbyte_job_id=job_id, connection_id=ECOMMERCE_CONNECTION, poll_interval=1
    )
    assert wait_until_done(sensor, job_id)["job_id"] == job_id
    assert new_jobs(airbyte, before) == [job_id]
