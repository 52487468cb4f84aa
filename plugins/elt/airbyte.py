"""Airbyte tasks: the provider's operator, sensor and trigger, extended where they fall short.

- a sync already running (HTTP 409) is attached to, not failed;
- `queued`, `pending` and `incomplete` count as still running;
- the wait watches its job in the worker for its first 15 s, then defers; the deferred wait polls
  at a configurable interval (the provider hard-codes 60 s), and its trigger fires no sooner than a
  stale executor event allows (elt.deferral);
- every HTTP request has an explicit timeout, and every call rides out transient API errors
  (5xx, 429, timeouts, refused connections, an expired token) within one time budget;
- a submit whose reply was lost attaches to the job it created instead of starting another;
- the Airbyte job is cancelled when the task is killed or times out;
- a retried trigger task attaches to the job of its earlier try instead of starting another;
- a retried or cleared wait whose job already failed starts (or attaches to) a new sync;
- a failed job fails the wait with the job's failure reason (attempt failures, else log lines);
- backfill runs can skip the sync when the raw tables already cover their window.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from logging import Logger
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import httpx
import tenacity
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

from elt import deferral

T = TypeVar("T")

ACTIVE = frozenset(
    {JobStatusEnum.PENDING, JobStatusEnum.QUEUED, JobStatusEnum.RUNNING, JobStatusEnum.INCOMPLETE}
)
ENDED_BADLY = frozenset({JobStatusEnum.FAILED, JobStatusEnum.CANCELLED})
DEFAULT_BUDGET = timedelta(minutes=10)
# 401 after a fresh token means bad credentials or permissions, not an expired token.
MAX_UNAUTHORIZED = 2
_TOKEN_ENDPOINT_STATUS = re.compile(r"Unexpected status code (\d{3}) from token endpoint")
FAILURE_LOG_LINES = 20
# The wait watches its job in its worker this long, checking this often, before it defers.
WATCH_IN_WORKER_SECONDS = 15.0
WATCH_INTERVAL_SECONDS = 1.0


def _status(value: object) -> JobStatusEnum:
    return value if isinstance(value, JobStatusEnum) else JobStatusEnum(str(value))


def _causes(err: BaseException) -> list[BaseException]:
    """`err` and what it wraps: the provider wraps SDK errors as AirflowException(sdk_error)."""
    chain: list[BaseException] = []
    cause: BaseException | None = err
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or (
            cause.args[0] if cause.args and isinstance(cause.args[0], BaseException) else None
        )
    return chain


def http_status(err: BaseException) -> int | None:
    """The HTTP status of an Airbyte API error (also of the token endpoint's), if it has one."""
    for cause in _causes(err):
        if isinstance(cause, sdk_errors.AirbyteAPIError):
            return cause.status_code
        if isinstance(cause, httpx.HTTPStatusError):
            return cause.response.status_code
        if match := _TOKEN_ENDPOINT_STATUS.search(str(cause)):
            return int(match.group(1))
    return None


def _is_conflict(err: BaseException) -> bool:
    return http_status(err) == 409


def is_transient(err: BaseException) -> bool:
    """Worth retrying: the API blinked (5xx, 429, 408, timeout, refused/reset connection, 401)."""
    status = http_status(err)
    if status is not None:
        return status >= 500 or status in (401, 408, 429)
    return any(isinstance(c, (httpx.TransportError, ConnectionError, TimeoutError)) for c in _causes(err))


class _RetryTransient(tenacity.retry_base):
    """Retry transient errors; a 401 only MAX_UNAUTHORIZED times (the SDK fetches a new token)."""

    def __init__(self) -> None:
        self.unauthorized = 0

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        outcome = retry_state.outcome
        if outcome is None or not outcome.failed:
            return False
        err = outcome.exception()
        if http_status(err) == 401:
            self.unauthorized += 1
            return self.unauthorized <= MAX_UNAUTHORIZED
        return is_transient(err)


class AirbyteApi:
    """The AirbyteHook's calls under one policy for transient errors.

    Each call is retried with exponential backoff (capped at `max_backoff`) until it succeeds, a
    non-transient error occurs, or `budget` has passed since the call began; every retry is logged.
    """

    sleep: Callable[[float], Any] = staticmethod(time.sleep)
    async_sleep: Callable[[float], Any] = staticmethod(asyncio.sleep)

    def __init__(
        self,
        hook: AirbyteHook,
        log: Logger,
        *,
        budget: timedelta | float = DEFAULT_BUDGET,
        max_backoff: float = 30,
    ) -> None:
        self.hook, self.log = hook, log
        self.budget = budget.total_seconds() if isinstance(budget, timedelta) else float(budget)
        if self.budget <= 0:
            raise ValueError(f"transient error budget must be positive, got {budget!r}")
        self.max_backoff = max_backoff

    def _policy(self, what: str) -> dict[str, Any]:
        def before_sleep(state: tenacity.RetryCallState) -> None:
            self.log.warning(
                "Airbyte API error while trying to %s (attempt %d, %.0fs of the %.0fs budget used); "
                "retrying in %.1fs: %s",
                what,
                state.attempt_number,
                state.seconds_since_start or 0,
                self.budget,
                state.upcoming_sleep,
                state.outcome.exception() if state.outcome else None,
            )

        return {
            "retry": _RetryTransient(),
            "stop": tenacity.stop_after_delay(self.budget),
            "wait": tenacity.wait_exponential_jitter(initial=0.5, max=self.max_backoff, jitter=0.5),
            "before_sleep": before_sleep,
            "reraise": True,
        }

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return tenacity.Retrying(sleep=self.sleep, **self._policy(what))(fn, *args, **kwargs)

    async def acall(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`call` for the triggerer: the blocking SDK call runs in a thread, the backoff is async."""
        retrying = tenacity.AsyncRetrying(sleep=self.async_sleep, **self._policy(what))
        return await retrying(asyncio.to_thread, fn, *args, **kwargs)

    # -- the calls the tasks make ----------------------------------------------------------------

    def get_job(self, job_id: int) -> JobResponse:
        return self.call(f"get job {job_id}", self.hook.get_job_details, int(job_id))

    def list_jobs(self, connection_id: str, **filters: Any) -> list[JobResponse]:
        return self.call(f"list jobs of {connection_id}", list_jobs, self.hook, connection_id, **filters)

    def cancel(self, job_id: int) -> None:
        self.call(f"cancel job {job_id}", self.hook.cancel_job, int(job_id))

    def submit(self, connection_id: str) -> JobResponse:
        """Start a sync; when a reply was lost, attach to the job that request created.

        A timed-out or 5xx submit may still have created a job. Airbyte's job ids only grow, so
        before each re-submit, a job of the connection newer than the newest one before the first
        attempt is that job (a second submit would start another sync, or 409). HTTP 409 is not
        retried here: the caller attaches.
        """
        newest = self.list_jobs(connection_id, limit=1)
        before = newest[0].job_id if newest else 0
        attempts = 0

        def attempt() -> JobResponse:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                created = [j for j in list_jobs(self.hook, connection_id, limit=5) if j.job_id > before]
                if created:
                    job = created[-1]  # the oldest new one: newest first
                    self.log.warning(
                        "The reply to an earlier submit was lost; attaching to job %s (%s) it created",
                        job.job_id,
                        job.status,
                    )
                    return job
            return self.hook.submit_sync_connection(connection_id=connection_id)

        return self.call(f"submit a sync of {connection_id}", attempt)

    def submit_or_attach(self, connection_id: str) -> JobResponse:
        """A new sync of the connection, or the one already running (HTTP 409)."""
        for _ in range(3):
            try:
                return self.submit(connection_id)
            except AirflowException as err:
                if not _is_conflict(err):
                    raise
            for status in ACTIVE:
                running = self.list_jobs(connection_id, status=status, limit=1)
                if running:
                    self.log.info(
                        "A sync of %s is already running: attaching to job %s",
                        connection_id,
                        running[0].job_id,
                    )
                    return running[0]
            # The conflicting job ended between the 409 and the lookup: submitting again is safe.
        raise AirflowException(
            f"Airbyte kept answering 409 for connection {connection_id} without a running job"
        )

    def failure_reason(self, job_id: int) -> str | None:
        """Why a job failed, from its attempts (Airbyte's configuration API), else its last log lines.

        The public API's job response has no attempts. Airbyte OSS serves them at
        `POST /api/v1/jobs/get` next to `/api/public/v1`; Airbyte Cloud has no such API (None).
        """
        url = config_api_url(self.hook.conn["host"])
        if url is None:
            return None
        try:
            info = self.call(f"get the attempts of job {job_id}", self._job_info, url, int(job_id))
        except Exception as err:  # the reason is a courtesy: never hide the failure behind it
            self.log.warning("Could not read the attempts of Airbyte job %s: %s", job_id, err)
            return None
        return summarize_attempts(info)

    def _job_info(self, url: str, job_id: int) -> dict[str, Any]:
        client: httpx.Client = self.hook.airbyte_api.sdk_configuration.client
        headers = {}
        if token := self._token(client):
            headers["Authorization"] = f"Bearer {token}"
        response = client.post(f"{url}/jobs/get", json={"id": job_id}, headers=headers)
        response.raise_for_status()
        return response.json()

    def _token(self, client: httpx.Client) -> str | None:
        conn = self.hook.conn
        if not (conn["client_id"] and conn["client_secret"]):
            return None
        # Resolved the way the SDK resolves it (a relative token URL joins the server URL).
        token_url = urljoin(conn["host"].rstrip("/"), conn["token_url"])
        response = client.post(
            token_url,
            data={
                "grant_type": "client_credentials",
                "client_id": conn["client_id"],
                "client_secret": conn["client_secret"],
            },
        )
        response.raise_for_status()
        return response.json()["access_token"]


def config_api_url(public_api_url: str) -> str | None:
    """`http://host:8000/api/public/v1/` -> `http://host:8000/api/v1` (OSS); None elsewhere."""
    parts = urlsplit(public_api_url)
    prefix, found, _ = parts.path.partition("/api/public/")
    if not found:
        return None
    return f"{parts.scheme}://{parts.netloc}{prefix}/api/v1"


def summarize_attempts(info: dict[str, Any]) -> str | None:
    """The failure messages of a job's last failed attempt, else the last lines of its last log."""
    attempts = info.get("attempts") or []
    for item in reversed(attempts):
        failures = ((item.get("attempt") or {}).get("failureSummary") or {}).get("failures") or []
        messages = []
        for failure in failures:
            text = failure.get("externalMessage") or failure.get("internalMessage")
            if not text:
                continue
            origin = failure.get("failureOrigin")
            # The internal message's first line only: a page is no place for a stack trace.
            internal = (failure.get("internalMessage") or "").strip().split("\n")[0]
            line = f"{origin}: {text}" if origin else text
            if internal and internal != text:
                line += f" ({internal})"
            if line not in messages:
                messages.append(line)
        if messages:
            return "; ".join(messages)
    for item in reversed(attempts):
        lines = [line for line in ((item.get("logs") or {}).get("logLines") or []) if line.strip()]
        if lines:
            return "last log lines:\n" + "\n".join(lines[-FAILURE_LOG_LINES:])
    return None


def job_url(hook: AirbyteHook, connection_id: str, job_id: int | str) -> str:
    """The job's page in the Airbyte UI (OSS and Cloud share this layout)."""
    server = urlsplit(hook.conn["host"])
    base = f"{server.scheme}://{server.netloc}"
    if server.netloc == "api.airbyte.com":
        base = "https://cloud.airbyte.com"
    return f"{base}/connections/{connection_id}/timeline?jobId={job_id}"


def list_jobs(hook: AirbyteHook, connection_id: str, **filters: Any) -> list[JobResponse]:
    try:
        response = hook.airbyte_api.jobs.list_jobs(
            request=ListJobsRequest(
                connection_id=connection_id, job_type=JobTypeEnum.SYNC, order_by="createdAt|DESC", **filters
            )
        )
    except Exception as err:  # the same wrapping as the hook's own calls
        raise AirflowException(err) from err
    return list(response.jobs_response.data if response.jobs_response else [])


def failed_job_message(job_id: int | str, status: str, reason: str | None) -> str:
    """The text of a failed wait (alerts quote it): `Airbyte job N failed: <reason>`."""
    return f"Airbyte job {job_id} {status}: {reason or 'no failure reason available from Airbyte'}"


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
        transient_error_budget: float = DEFAULT_BUDGET.total_seconds(),
        backfill_sync: str = "always",
        coverage: list[tuple[str, str]] | None = None,
        warehouse_conn_id: str = "warehouse",
        data_interval_end: str | None = "{{ run_window(dag, dag_run)[1] }}",
        **kwargs: Any,
    ) -> None:
        super().__init__(asynchronous=True, **kwargs)
        self.request_timeout = request_timeout
        self.transient_error_budget = transient_error_budget
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

    def api(self) -> AirbyteApi:
        return AirbyteApi(self.hook(), self.log, budget=self.transient_error_budget)

    def execute(self, context: Any) -> int:
        api = self.api()
        job = self._job_to_reuse(api, context)
        if job is None:
            job = api.submit_or_attach(self.connection_id)
        self.job_id = job.job_id
        self.job_url = job_url(api.hook, self.connection_id, job.job_id)
        self.log.info(
            "Airbyte job %s (%s) for connection %s: %s",
            job.job_id,
            job.status,
            self.connection_id,
            self.job_url,
        )
        return job.job_id

    def _job_to_reuse(self, api: AirbyteApi, context: Any) -> JobResponse | None:
        """A job this run may use instead of starting a new sync, if any."""
        dag_run = context["dag_run"]
        ti = context["ti"]
        if ti.try_number > 1 and dag_run.start_date is not None:
            # A retry: the earlier try's job (created since this run started) is this run's sync.
            for job in api.list_jobs(self.connection_id, created_at_start=dag_run.start_date, limit=5):
                if _status(job.status) in ACTIVE | {JobStatusEnum.SUCCEEDED}:
                    self.log.info("Retry of this run: reusing Airbyte job %s (%s)", job.job_id, job.status)
                    return job
        if str(getattr(dag_run, "run_type", "")).lower().endswith("backfill"):
            return self._backfill_job(api)
        return None

    def _backfill_job(self, api: AirbyteApi) -> JobResponse | None:
        if self.backfill_sync == "always":
            return None
        covered = self.backfill_sync == "never" or self._raw_data_covers(self.data_interval_end)
        if not covered:
            self.log.info("Backfill: raw tables end before %s, syncing", self.data_interval_end)
            return None
        for job in api.list_jobs(self.connection_id, limit=10):
            if _status(job.status) in ACTIVE | {JobStatusEnum.SUCCEEDED}:
                self.log.info(
                    "Backfill: raw tables already cover the window up to %s; no new sync, using job %s",
                    self.data_interval_end,
                    job.job_id,
                )
                return job
        return None

    def _raw_data_covers(self, window_end: str | None) -> bool:
        """Whether every stream's cursor reaches the window's end (max(cursor) >= end).

        The cursor's meaning (e.g. a reading at t covers (t - 15 min, t]) makes the row at the
        window's end the last one the window needs, so no cadence is assumed here. Naive
        timestamps are read as UTC, whatever the session's time zone.
        """
        if not window_end or not self.coverage:
            return False
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        end = datetime.fromisoformat(window_end)
        if end.tzinfo is None:
            end = end.replace(tzinfo=UTC)
        pg = PostgresHook(postgres_conn_id=self.warehouse_conn_id)
        for table, column in self.coverage:
            schema, name = table.split(".")
            found = pg.get_first(
                "select data_type from information_schema.columns "
                "where table_schema = %s and table_name = %s and column_name = %s",
                parameters=(schema, name, column),
            )
            if not found:
                self.log.info("Backfill: %s.%s does not exist (yet)", table, column)
                return False
            if found[0] == "timestamp with time zone":
                expr = f'max("{column}")'
            elif found[0] in ("timestamp without time zone", "date"):
                expr = f"max(\"{column}\")::timestamp at time zone 'UTC'"
            else:
                raise AirflowFailException(
                    f"cursor_field {column!r} of {table} is {found[0]}; a coverage check needs a "
                    "date or timestamp column"
                )
            reached = pg.get_first(f'select {expr} from "{schema}"."{name}"')
            if not reached or reached[0] is None or reached[0] < end:
                self.log.info("Backfill: %s reaches %s, not %s", table, reached and reached[0], end)
                return False
        return True

    def on_kill(self) -> None:
        if self.job_id is not None:
            self.log.info("Task killed: cancelling Airbyte job %s", self.job_id)
            AirbyteApi(self.hook(), self.log, budget=min(self.transient_error_budget, 60)).cancel(self.job_id)


class _JobPolling(AirbyteSyncTrigger):
    """Polls a job until it ends; rides out transient API errors within a budget; cancels when killed."""

    def __init__(
        self,
        *,
        request_timeout: float = 30,
        transient_error_budget: float = DEFAULT_BUDGET.total_seconds(),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.request_timeout = request_timeout
        self.transient_error_budget = transient_error_budget

    def serialize(self) -> tuple[str, dict[str, Any]]:
        _, kwargs = super().serialize()
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            **kwargs,
            "request_timeout": self.request_timeout,
            "transient_error_budget": self.transient_error_budget,
        }

    def _api(self) -> AirbyteApi:
        hook = AirbyteHook(airbyte_conn_id=self.conn_id, timeout=self.request_timeout)
        return AirbyteApi(
            hook, self.log, budget=self.transient_error_budget, max_backoff=max(self.poll_interval, 1)
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        api = await asyncio.to_thread(self._api)
        while True:
            deadline = min(d for d in (self.end_time, self.execution_deadline) if d is not None)
            if deadline <= time.time():
                yield self._event(
                    "timeout", f"Airbyte job {self.job_id} did not finish in time; cancelling it."
                )
                return
            try:
                job = await api.acall(f"get job {self.job_id}", api.hook.get_job_details, int(self.job_id))
            except Exception as err:
                yield self._event(
                    "error",
                    f"Airbyte API failing while waiting for job {self.job_id} "
                    f"(transient error budget {self.transient_error_budget:.0f}s): {err}",
                )
                return
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
        api = await asyncio.to_thread(self._api)
        await api.acall(f"cancel job {self.job_id}", api.hook.cancel_job, int(self.job_id))


class AirbyteJobTrigger(deferral.SettledTrigger, _JobPolling):
    """The wait's trigger: polls its job, and holds the event until `not_before` (elt.deferral)."""


class AirbyteJobWaitSensor(AirbyteJobSensor):
    """Wait for an Airbyte job and publish the stream assets: in the worker for up to
    `watch_in_worker` seconds (checking every WATCH_INTERVAL_SECONDS), then in the triggerer (no
    worker slot held). A sync that ends within the window needs no deferral: no resume latency,
    and no stale executor event to race (elt.deferral).

    A retried or cleared wait whose job already failed or was cancelled starts (or attaches to) a
    new sync of `connection_id` and waits on that: clearing `wait` alone re-syncs.
    """

    operator_extra_links = (AirbyteJobLink(),)

    def __init__(
        self,
        *,
        poll_interval: float = 5,
        watch_in_worker: float = WATCH_IN_WORKER_SECONDS,
        request_timeout: float = 30,
        transient_error_budget: float = DEFAULT_BUDGET.total_seconds(),
        connection_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(deferrable=True, **kwargs)
        self.poll_interval = poll_interval
        self.watch_in_worker = watch_in_worker
        self.request_timeout = request_timeout
        self.transient_error_budget = transient_error_budget
        self.connection_id = connection_id
        self.job_id: int | None = None
        self.job_url: str | None = None

    def _api(self, budget: float | None = None) -> AirbyteApi:
        hook = AirbyteHook(
            airbyte_conn_id=self.airbyte_conn_id, api_version=self.api_version, timeout=self.request_timeout
        )
        return AirbyteApi(
            hook,
            self.log,
            budget=budget or self.transient_error_budget,
            max_backoff=max(self.poll_interval, 1),
        )

    def execute(self, context: Any) -> Any:
        api = self._api()
        job = api.get_job(int(self.airbyte_job_id))
        if _status(job.status) in ENDED_BADLY and context["ti"].try_number > 1:
            if not self.connection_id:
                raise AirflowFailException(
                    f"Airbyte job {job.job_id} is {job.status} and this wait has no connection_id to "
                    "re-sync: clear the sync task instead"
                )
            self.log.warning(
                "Airbyte job %s already %s and this wait was retried or cleared: syncing %s again",
                job.job_id,
                _status(job.status).value,
                self.connection_id,
            )
            job = api.submit_or_attach(self.connection_id)
        self._remember(api.hook, job.job_id)
        job = self._watch(api, job)
        status = _status(job.status)
        if status in ACTIVE:
            now = time.time()
            deadline = now + self.execution_timeout.total_seconds() if self.execution_timeout else None
            self.defer(
                trigger=AirbyteJobTrigger(
                    conn_id=self.airbyte_conn_id,
                    job_id=job.job_id,
                    end_time=now + self.timeout,
                    execution_deadline=deadline,
                    poll_interval=self.poll_interval,
                    request_timeout=self.request_timeout,
                    transient_error_budget=self.transient_error_budget,
                    not_before=deferral.not_before(),
                ),
                method_name="execute_complete",
                # Leave the trigger time to report the timeout itself, so the job gets cancelled.
                timeout=self.execution_timeout + timedelta(seconds=3 * self.poll_interval)
                if self.execution_timeout
                else None,
            )
        return self._finish(
            api, {"status": status.value, "job_id": job.job_id, "rows_synced": job.rows_synced}
        )

    def _watch(self, api: AirbyteApi, job: JobResponse) -> JobResponse:
        """The job once it has ended, or as last seen when the window is over."""
        checks = int(self.watch_in_worker / WATCH_INTERVAL_SECONDS)
        if checks > 0 and _status(job.status) in ACTIVE:
            self.log.info(
                "Watching Airbyte job %s in this worker for up to %g s", job.job_id, self.watch_in_worker
            )
        for _ in range(checks):
            if _status(job.status) not in ACTIVE:
                break
            api.sleep(WATCH_INTERVAL_SECONDS)
            job = api.get_job(int(job.job_id))
        return job

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        return self._finish(self._api(), event or {"status": "error", "message": "no event from the trigger"})

    def _remember(self, hook: AirbyteHook, job_id: int | str) -> None:
        """The job the link and the alert show: the one this try waits on."""
        self.job_id = int(job_id)
        if self.connection_id:
            self.job_url = job_url(hook, self.connection_id, job_id)

    def _finish(self, api: AirbyteApi, event: dict[str, Any]) -> dict[str, Any]:
        status, job_id = event["status"], event.get("job_id", self.airbyte_job_id)
        self._remember(api.hook, job_id)
        if status in ("success", JobStatusEnum.SUCCEEDED.value):
            self.log.info("Airbyte job %s succeeded: %s rows synced", job_id, event.get("rows_synced"))
            return {"job_id": job_id, "rows_synced": event.get("rows_synced")}
        if status == "timeout":
            self.log.warning("Cancelling Airbyte job %s: it ran past the task's timeout", job_id)
            try:
                api.cancel(int(job_id))
            except AirflowException:
                self.log.warning("Could not cancel Airbyte job %s", job_id, exc_info=True)
            raise AirflowException(event.get("message", f"Airbyte job {job_id} timed out"))
        if status in ("failed", "cancelled"):
            reason = api.failure_reason(int(job_id)) if status == "failed" else "cancelled in Airbyte"
            message = failed_job_message(job_id, status, reason)
            self.log.error("%s", message)
            # Retrying the wait cannot change a finished job: fail for good (the on-call alert fires now).
            raise AirflowFailException(message)
        raise AirflowException(event.get("message", f"Airbyte job {job_id}: unexpected status {status}"))

    def on_kill(self) -> None:
        job_id = self.job_id or self.airbyte_job_id
        try:
            self._api(budget=min(self.transient_error_budget, 60)).cancel(int(job_id))
        except Exception:
            self.log.warning("Could not cancel Airbyte job %s", job_id, exc_info=True)
