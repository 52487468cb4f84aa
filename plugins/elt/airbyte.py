"""Airbyte tasks: the provider's operator, sensor and trigger, extended where they fall short.

- a sync already running (HTTP 409) is attached to, not failed;
- `queued`, `pending` and `incomplete` count as still running;
- the deferred wait polls at a configurable interval (the provider hard-codes 60 s) and
  rides out transient API errors;
- every HTTP request has an explicit timeout;
- the Airbyte job is cancelled when the task is killed or times out;
- a retried trigger task attaches to the job of its earlier try instead of starting another;
- backfill runs can skip the sync when the raw tables already cover their window.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from airbyte_api import errors as sdk_errors
from airbyte_api.api import ListJobsRequest
from airbyte_api.models import JobResponse, JobStatusEnum, JobTypeEnum
from airflow.providers.airbyte.hooks.airbyte import AirbyteHook
from airflow.providers.airbyte.operators.airbyte import AirbyteTriggerSyncOperator
from airflow.providers.airbyte.sensors.airbyte import AirbyteJobSensor
from airflow.providers.airbyte.triggers.airbyte import AirbyteSyncTrigger
from airflow.sdk import BaseOperatorLink
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from airflow.triggers.base import TriggerEvent

ACTIVE = frozenset(
    {JobStatusEnum.PENDING, JobStatusEnum.QUEUED, JobStatusEnum.RUNNING, JobStatusEnum.INCOMPLETE}
)


def _status(value: object) -> JobStatusEnum:
    return value if isinstance(value, JobStatusEnum) else JobStatusEnum(str(value))


def _is_conflict(err: BaseException) -> bool:
    """The provider wraps SDK errors in AirflowException; 409 means a sync is already running."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, sdk_errors.SDKError) and cause.status_code == 409:
            return True
        cause = cause.__cause__ or (
            cause.args[0] if cause.args and isinstance(cause.args[0], BaseException) else None
        )
    return False


def job_url(hook: AirbyteHook, connection_id: str, job_id: int | str) -> str:
    """The job's page in the Airbyte UI (OSS and Cloud share this layout)."""
    server = urlsplit(hook.conn["host"])
    base = f"{server.scheme}://{server.netloc}"
    if server.netloc == "api.airbyte.com":
        base = "https://cloud.airbyte.com"
    return f"{base}/connections/{connection_id}/timeline?jobId={job_id}"


def list_jobs(hook: AirbyteHook, connection_id: str, **filters: Any) -> list[JobResponse]:
    response = hook.airbyte_api.jobs.list_jobs(
        request=ListJobsRequest(
            connection_id=connection_id, job_type=JobTypeEnum.SYNC, order_by="createdAt|DESC", **filters
        )
    )
    return list(response.jobs_response.data if response.jobs_response else [])


class AirbyteJobLink(BaseOperatorLink):
    """'Airbyte job' button on the trigger and wait tasks.

    Airflow 3 evaluates links on the worker when the task ends and stores the result as
    an XCom; the tasks below set `job_url` while they run.
    """

    name = "Airbyte job"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return getattr(operator, "job_url", None) or ""


class AirbyteSyncOperator(AirbyteTriggerSyncOperator):
    """Start a sync of one Airbyte connection and return its job id (the wait is a separate sensor)."""

    operator_extra_links = (AirbyteJobLink(),)
    template_fields = (*AirbyteTriggerSyncOperator.template_fields, "data_interval_end")

    def __init__(
        self,
        *,
        request_timeout: float = 30,
        backfill_sync: str = "always",
        coverage: list[tuple[str, str]] | None = None,
        warehouse_conn_id: str = "warehouse",
        data_interval_end: str | None = "{{ run_window(dag, dag_run)[1] }}",
        **kwargs: Any,
    ) -> None:
        super().__init__(asynchronous=True, **kwargs)
        self.request_timeout = request_timeout
        self.backfill_sync = backfill_sync
        self.coverage = coverage or []
        self.warehouse_conn_id = warehouse_conn_id
        self.data_interval_end = data_interval_end
        self.job_id: int | None = None
        self.job_url: str | None = None

    def hook(self) -> AirbyteHook:
        return AirbyteHook(
            airbyte_conn_id=self.airbyte_conn_id, api_version=self.api_version, timeout=self.request_timeout
        )

    def execute(self, context: Any) -> int:
        hook = self.hook()
        job = self._job_to_reuse(hook, context)
        if job is None:
            job = self._submit_or_attach(hook)
        self.job_id = job.job_id
        self.job_url = job_url(hook, self.connection_id, job.job_id)
        self.log.info(
            "Airbyte job %s (%s) for connection %s: %s",
            job.job_id,
            job.status,
            self.connection_id,
            self.job_url,
        )
        return job.job_id

    def _submit_or_attach(self, hook: AirbyteHook) -> JobResponse:
        try:
            return hook.submit_sync_connection(connection_id=self.connection_id)
        except AirflowException as err:
            if not _is_conflict(err):
                raise
        for status in (
            JobStatusEnum.RUNNING,
            JobStatusEnum.PENDING,
            JobStatusEnum.QUEUED,
            JobStatusEnum.INCOMPLETE,
        ):
            running = list_jobs(hook, self.connection_id, status=status, limit=1)
            if running:
                self.log.info(
                    "A sync of %s is already running: attaching to job %s",
                    self.connection_id,
                    running[0].job_id,
                )
                return running[0]
        # The conflicting job ended between the 409 and the lookup: a fresh submit is safe now.
        return hook.submit_sync_connection(connection_id=self.connection_id)

    def _job_to_reuse(self, hook: AirbyteHook, context: Any) -> JobResponse | None:
        """A job this run may use instead of starting a new sync, if any."""
        dag_run = context["dag_run"]
        ti = context["ti"]
        if ti.try_number > 1 and dag_run.start_date is not None:
            # A retry: the earlier try's job (created since this run started) is this run's sync.
            for job in list_jobs(hook, self.connection_id, created_at_start=dag_run.start_date, limit=5):
                if _status(job.status) in ACTIVE or _status(job.status) == JobStatusEnum.SUCCEEDED:
                    self.log.info("Retry of this run: reusing Airbyte job %s (%s)", job.job_id, job.status)
                    return job
        if str(getattr(dag_run, "run_type", "")).lower().endswith("backfill"):
            return self._backfill_job(hook, context)
        return None

    def _backfill_job(self, hook: AirbyteHook, context: Any) -> JobResponse | None:
        if self.backfill_sync == "always":
            return None
        covered = self.backfill_sync == "never" or self._raw_data_covers(self.data_interval_end)
        if not covered:
            self.log.info("Backfill: raw tables end before %s, syncing", self.data_interval_end)
            return None
        latest = list_jobs(hook, self.connection_id, limit=10)
        for job in latest:
            if _status(job.status) in ACTIVE | {JobStatusEnum.SUCCEEDED}:
                self.log.info(
                    "Backfill: raw tables already cover the window up to %s; no new sync, using job %s",
                    self.data_interval_end,
                    job.job_id,
                )
                return job
        return None

    def _raw_data_covers(self, window_end: str | None) -> bool:
        if not window_end or not self.coverage:
            return False
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        end = datetime.fromisoformat(window_end)
        pg = PostgresHook(postgres_conn_id=self.warehouse_conn_id)
        for table, column in self.coverage:
            schema, name = table.split(".")
            exists = pg.get_first("select to_regclass(%s)", parameters=(f'{schema}."{name}"',))
            if not exists or exists[0] is None:
                return False
            reached = pg.get_first(f'select max("{column}"::timestamptz) from {schema}."{name}"')
            if not reached or reached[0] is None or reached[0] < end - timedelta(minutes=15):
                return False
        return True

    def on_kill(self) -> None:
        if self.job_id is not None:
            super().on_kill()


class AirbyteJobTrigger(AirbyteSyncTrigger):
    """Polls a job until it ends; tolerant of transient API errors; cancels the job when killed."""

    MAX_CONSECUTIVE_ERRORS = 5

    def __init__(self, *, request_timeout: float = 30, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.request_timeout = request_timeout

    def serialize(self) -> tuple[str, dict[str, Any]]:
        _, kwargs = super().serialize()
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            **kwargs,
            "request_timeout": self.request_timeout,
        }

    def _hook(self) -> AirbyteHook:
        return AirbyteHook(airbyte_conn_id=self.conn_id, timeout=self.request_timeout)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = await asyncio.to_thread(self._hook)
        errors = 0
        while True:
            now = time.time()
            deadline = min(d for d in (self.end_time, self.execution_deadline) if d is not None)
            if deadline <= now:
                yield self._event(
                    "timeout", f"Airbyte job {self.job_id} did not finish in time; cancelling it."
                )
                return
            try:
                job = await asyncio.to_thread(hook.get_job_details, int(self.job_id))
                errors = 0
            except Exception as err:
                errors += 1
                self.log.warning("Polling Airbyte job %s failed (%d in a row): %s", self.job_id, errors, err)
                if errors >= self.MAX_CONSECUTIVE_ERRORS:
                    yield self._event(
                        "error", f"Airbyte API unreachable while waiting for job {self.job_id}: {err}"
                    )
                    return
                await asyncio.sleep(self.poll_interval)
                continue
            status = _status(job.status)
            if status in ACTIVE:
                self.log.info("Airbyte job %s is %s", self.job_id, status.value)
                await asyncio.sleep(self.poll_interval)
                continue
            if status == JobStatusEnum.SUCCEEDED:
                yield self._event("success", f"Airbyte job {self.job_id} succeeded.", job)
            elif status == JobStatusEnum.CANCELLED:
                yield self._event("cancelled", f"Airbyte job {self.job_id} was cancelled.", job)
            else:
                yield self._event("failed", f"Airbyte job {self.job_id} failed.", job)
            return

    def _event(self, status: str, message: str, job: JobResponse | None = None) -> TriggerEvent:
        payload: dict[str, Any] = {"status": status, "message": message, "job_id": self.job_id}
        if job is not None:
            payload.update(rows_synced=job.rows_synced, bytes_synced=job.bytes_synced, duration=job.duration)
        return TriggerEvent(payload)

    async def on_kill(self) -> None:
        self.log.info("Task killed: cancelling Airbyte job %s", self.job_id)
        hook = await asyncio.to_thread(self._hook)
        await asyncio.to_thread(hook.cancel_job, int(self.job_id))


class AirbyteJobWaitSensor(AirbyteJobSensor):
    """Wait for an Airbyte job in the triggerer (no worker slot held) and publish the stream assets."""

    operator_extra_links = (AirbyteJobLink(),)

    def __init__(
        self,
        *,
        poll_interval: float = 5,
        request_timeout: float = 30,
        connection_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(deferrable=True, **kwargs)
        self.poll_interval = poll_interval
        self.request_timeout = request_timeout
        self.connection_id = connection_id
        self.job_url: str | None = None

    def _hook(self) -> AirbyteHook:
        return AirbyteHook(
            airbyte_conn_id=self.airbyte_conn_id, api_version=self.api_version, timeout=self.request_timeout
        )

    def execute(self, context: Any) -> Any:
        hook = self._hook()
        job_id = int(self.airbyte_job_id)
        self._set_job_url(hook, job_id)
        job = hook.get_job_details(job_id=job_id)
        status = _status(job.status)
        if status in ACTIVE:
            now = time.time()
            deadline = now + self.execution_timeout.total_seconds() if self.execution_timeout else None
            self.defer(
                trigger=AirbyteJobTrigger(
                    conn_id=self.airbyte_conn_id,
                    job_id=job_id,
                    end_time=now + self.timeout,
                    execution_deadline=deadline,
                    poll_interval=self.poll_interval,
                    request_timeout=self.request_timeout,
                ),
                method_name="execute_complete",
                # Leave the trigger time to report the timeout itself, so the job gets cancelled.
                timeout=self.execution_timeout + timedelta(seconds=3 * self.poll_interval)
                if self.execution_timeout
                else None,
            )
        return self._finish(
            context, {"status": status.value, "job_id": job_id, "rows_synced": job.rows_synced}
        )

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        return self._finish(context, event or {"status": "error", "message": "no event from the trigger"})

    def _set_job_url(self, hook: AirbyteHook, job_id: int | str) -> None:
        if self.connection_id:
            self.job_url = job_url(hook, self.connection_id, job_id)

    def _finish(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        status, job_id = event["status"], event.get("job_id", self.airbyte_job_id)
        if self.job_url is None:
            self._set_job_url(self._hook(), job_id)
        if status in ("success", JobStatusEnum.SUCCEEDED.value):
            self.log.info("Airbyte job %s succeeded: %s rows synced", job_id, event.get("rows_synced"))
            return {"job_id": job_id, "rows_synced": event.get("rows_synced")}
        if status == "timeout":
            self.log.warning("Cancelling Airbyte job %s: it ran past the task's timeout", job_id)
            try:
                self._hook().cancel_job(int(job_id))
            except AirflowException:
                self.log.warning("Could not cancel Airbyte job %s", job_id, exc_info=True)
            raise AirflowException(event.get("message", f"Airbyte job {job_id} timed out"))
        if status in ("failed", JobStatusEnum.FAILED.value, "cancelled", JobStatusEnum.CANCELLED.value):
            # Retrying the wait cannot change a finished job: fail for good (the on-call alert fires now).
            raise AirflowFailException(f"Airbyte job {job_id} {status}: {event.get('message', '')}".strip())
        raise AirflowException(event.get("message", f"Airbyte job {job_id}: unexpected status {status}"))

    def on_kill(self) -> None:
        try:
            self._hook().cancel_job(int(self.airbyte_job_id))
        except Exception:
            self.log.warning("Could not cancel Airbyte job %s", self.airbyte_job_id, exc_info=True)
