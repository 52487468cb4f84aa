"""Every branch of the Airbyte tasks against mocked HTTP (no services).

The provider's AirbyteHook and the airbyte-api SDK run unmodified; only their HTTP transport is
replaced by `FakeAirbyte`, a scripted stand-in for Airbyte's public API, token endpoint and
configuration API (`POST /api/v1/jobs/get`). Expectations come from what the fake recorded
(requests, jobs created), never from the code under test.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import httpx._transports.default as transports
import pytest
from airbyte_api._hooks.clientcredentials import ClientCredentialsHook
from airflow.configuration import conf
from airflow.providers.airbyte.hooks import airbyte as hook_module
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred

from elt import airbyte as tasks
from elt import deferral
from elt.airbyte import AirbyteApi, AirbyteJobTrigger, AirbyteJobWaitSensor, AirbyteSyncOperator
from elt.spec import PipelineSpec

HOST = "http://airbyte.test:8000/api/public/v1/"
CONNECTION = "c19e6614-68eb-489d-94b1-58e56dfa934e"


class FakeAirbyte:
    """Jobs, tokens and scripted faults; `faults` is a list of (method, path prefix, action)."""

    def __init__(self) -> None:
        self.jobs: dict[int, dict[str, Any]] = {}
        self.attempts: dict[int, list[dict[str, Any]]] = {}
        self.requests: list[tuple[str, str]] = []
        self.tokens_issued = 0
        self.valid_tokens: set[str] = set()
        self.faults: list[list[Any]] = []

    # -- scripting ---------------------------------------------------------------------------------

    def add_job(self, status: str, connection_id: str = CONNECTION, created: datetime | None = None) -> int:
        job_id = len(self.jobs) + 1
        self.jobs[job_id] = {
            "jobId": job_id,
            "status": status,
            "jobType": "sync",
            "connectionId": connection_id,
            "startTime": (created or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "created": created or datetime.now(UTC),
            "rowsSynced": 7,
            "bytesSynced": 70,
            "duration": "PT1S",
        }
        return job_id

    def fail(self, method: str, prefix: str, action: int | type[Exception] | str, count: int = 1) -> None:
        """The next `count` matching requests answer `action`: a status, an httpx error to raise,
        or "lost-reply" / "lost-reply-ended" (served, then the client times out)."""
        self.faults.append([method, prefix, action, count])

    def expire_tokens(self) -> None:
        self.valid_tokens.clear()

    def posts(self, path: str) -> int:
        return sum(1 for method, p in self.requests if method == "POST" and p == path)

    # -- serving -----------------------------------------------------------------------------------

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def _fault(self, request: httpx.Request) -> Any:
        for fault in self.faults:
            method, prefix, action, count = fault
            if count > 0 and request.method == method and request.url.path.startswith(prefix):
                fault[3] -= 1
                return action
        return None

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.requests.append((request.method, path))
        action = self._fault(request)
        if isinstance(action, int):
            return self._problem(action, "injected")
        if isinstance(action, type):
            raise action("injected", request=request)
        if path.endswith("/applications/token"):
            self.tokens_issued += 1
            token = f"token-{self.tokens_issued}"
            self.valid_tokens.add(token)
            return httpx.Response(
                200, json={"access_token": token, "token_type": "Bearer", "expires_in": 180}
            )
        if request.headers.get("authorization", "").removeprefix("Bearer ") not in self.valid_tokens:
            return self._problem(401, "Unauthorized")
        response = self._route(request, path)
        if action in ("lost-reply", "lost-reply-ended"):
            if action == "lost-reply-ended":  # the job it created has already failed
                for job in self.jobs.values():
                    job["status"] = "failed"
            raise httpx.ReadTimeout("reply lost", request=request)
        return response

    def _route(self, request: httpx.Request, path: str) -> httpx.Response:
        if path == "/api/v1/jobs/get":
            job_id = json.loads(request.content)["id"]
            return httpx.Response(
                200, json={"job": {"id": job_id}, "attempts": self.attempts.get(job_id, [])}
            )
        rest = path.removeprefix("/api/public/v1")
        if rest == "/jobs" and request.method == "POST":
            body = json.loads(request.content)
            if any(j["status"] in ("pending", "running") for j in self.jobs.values()):
                return self._problem(409, f"A sync is already running for: {body['connectionId']}")
            return httpx.Response(200, json=self._public(self.jobs[self.add_job("pending")]))
        if rest == "/jobs" and request.method == "GET":
            params = request.url.params
            jobs = sorted(self.jobs.values(), key=lambda j: j["jobId"], reverse=True)
            if status := params.get("status"):
                jobs = [j for j in jobs if j["status"] == status]
            if since := params.get("createdAtStart"):
                jobs = [j for j in jobs if j["created"] >= datetime.fromisoformat(since)]
            jobs = jobs[: int(params.get("limit", 20))]
            return httpx.Response(200, json={"data": [self._public(j) for j in jobs]})
        if rest.startswith("/jobs/"):
            job = self.jobs.get(int(rest.rsplit("/", 1)[1]))
            if job is None:
                return self._problem(404, "no such job")
            if request.method == "DELETE":
                if job["status"] not in ("pending", "running"):
                    return self._problem(409, "job is not running")
                job["status"] = "cancelled"
            return httpx.Response(200, json=self._public(job))
        return self._problem(404, f"unknown path {path}")

    @staticmethod
    def _public(job: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in job.items() if k != "created"}

    @staticmethod
    def _problem(status: int, detail: str) -> httpx.Response:
        return httpx.Response(status, json={"status": status, "title": "error", "detail": detail})


_ssl_context = functools.cache(transports.create_ssl_context)


@pytest.fixture
def airbyte(monkeypatch) -> FakeAirbyte:
    fake = FakeAirbyte()
    conn = {
        "conn_type": "airbyte",
        "host": HOST,
        "login": "client",
        "password": "secret",
        "schema": "/api/public/v1/applications/token",
        "extra": {"timeout": 5},
    }
    monkeypatch.setenv("AIRFLOW_CONN_AIRBYTE_DEFAULT", json.dumps(conn))
    # Every hook builds two httpx clients, each loading the CA bundle (~0.3 s): load it once.
    monkeypatch.setattr(transports, "create_ssl_context", _ssl_context)
    # The SDK caches tokens per process (a ClassVar): each test starts without one.
    monkeypatch.setattr(ClientCredentialsHook, "_sessions", {})
    transport = fake.transport()
    # The hook builds its own httpx.Client (for the timeout): give it the fake's transport.
    monkeypatch.setattr(
        hook_module,
        "httpx",
        SimpleNamespace(
            Client=lambda **kwargs: httpx.Client(transport=transport, **kwargs),
            HTTPTransport=httpx.HTTPTransport,
        ),
    )
    sleeps: list[float] = []
    monkeypatch.setattr(AirbyteApi, "sleep", staticmethod(sleeps.append))

    async def no_async_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    monkeypatch.setattr(AirbyteApi, "async_sleep", staticmethod(no_async_sleep))
    fake.sleeps = sleeps
    return fake


def context(try_number: int = 1, run_type: str = "manual", started: datetime | None = None) -> dict:
    return {
        "ti": SimpleNamespace(try_number=try_number),
        "dag_run": SimpleNamespace(
            start_date=started or datetime.now(UTC) - timedelta(minutes=5), run_type=run_type
        ),
    }


def sync(**kwargs: Any) -> AirbyteSyncOperator:
    return AirbyteSyncOperator(task_id="sync", connection_id=CONNECTION, request_timeout=5, **kwargs)


def wait(job_id: int, **kwargs: Any) -> AirbyteJobWaitSensor:
    return AirbyteJobWaitSensor(
        task_id="wait",
        airbyte_job_id=job_id,
        connection_id=CONNECTION,
        poll_interval=1,
        request_timeout=5,
        timeout=600,
        **kwargs,
    )


def deferred_job(sensor: AirbyteJobWaitSensor, ctx: dict) -> int:
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(ctx)
    return int(deferred.value.trigger.job_id)


# -- starting a sync ---------------------------------------------------------------------------------


def test_submit_returns_the_new_job_and_its_link(airbyte) -> None:
    op = sync()
    job_id = op.execute(context())
    assert list(airbyte.jobs) == [job_id]
    assert op.job_url == f"http://airbyte.test:8000/connections/{CONNECTION}/timeline?jobId={job_id}"


def test_a_409_attaches_to_the_running_sync(airbyte) -> None:
    running = airbyte.add_job("running")
    assert sync().execute(context()) == running
    assert len(airbyte.jobs) == 1


def test_a_retry_reuses_the_job_of_its_earlier_try(airbyte) -> None:
    earlier = airbyte.add_job("succeeded")
    assert sync().execute(context(try_number=2)) == earlier
    assert airbyte.posts("/api/public/v1/jobs") == 0


def test_a_retry_does_not_reuse_a_failed_job_or_one_from_before_the_run(airbyte) -> None:
    airbyte.add_job("succeeded", created=datetime.now(UTC) - timedelta(hours=1))
    airbyte.add_job("failed")
    job_id = sync().execute(context(try_number=2))
    assert job_id == 3
    assert airbyte.posts("/api/public/v1/jobs") == 1


class FakePostgres:
    """PostgresHook stand-in: column type and max(cursor) per table, and the queries it saw."""

    tables: dict[str, tuple[str, datetime | None]] = {}
    queries: list[str] = []

    def __init__(self, postgres_conn_id: str) -> None:
        pass

    def get_first(self, sql: str, parameters: tuple = ()) -> Any:
        FakePostgres.queries.append(sql)
        if "information_schema" in sql:
            schema, table, _ = parameters
            found = self.tables.get(f"{schema}.{table}")
            return (found[0],) if found else None
        name = sql.split(" from ")[1].replace('"', "")
        return (self.tables[name][1],)


@pytest.fixture
def warehouse(monkeypatch) -> type[FakePostgres]:
    from airflow.providers.postgres.hooks import postgres

    FakePostgres.tables, FakePostgres.queries = {}, []
    monkeypatch.setattr(postgres, "PostgresHook", FakePostgres)
    return FakePostgres


WINDOW_END = "2023-02-02T00:00:00+00:00"


def backfill_sync(policy: str) -> AirbyteSyncOperator:
    return sync(
        backfill_sync=policy, coverage=[("raw_energy.muid_1", "timestamp")], data_interval_end=WINDOW_END
    )


def test_backfill_never_reuses_the_latest_job_without_syncing(airbyte, warehouse) -> None:
    latest = airbyte.add_job("succeeded", created=datetime.now(UTC) - timedelta(days=3))
    assert backfill_sync("never").execute(context(run_type="backfill")) == latest
    assert airbyte.posts("/api/public/v1/jobs") == 0
    assert warehouse.queries == []  # `never` does not even look at the raw tables


def test_backfill_always_syncs(airbyte, warehouse) -> None:
    airbyte.add_job("succeeded")
    assert backfill_sync("always").execute(context(run_type="backfill")) == 2


def test_backfill_if_behind_skips_the_sync_when_the_raw_data_reaches_the_window_end(
    airbyte, warehouse
) -> None:
    latest = airbyte.add_job("succeeded", created=datetime.now(UTC) - timedelta(days=3))
    # A reading at D+1 00:00 covers (23:45, 00:00]: the last one day D needs.
    warehouse.tables["raw_energy.muid_1"] = ("timestamp with time zone", datetime(2023, 2, 2, tzinfo=UTC))
    assert backfill_sync("if_behind").execute(context(run_type="backfill")) == latest


def test_backfill_if_behind_syncs_when_the_last_reading_of_the_day_is_missing(airbyte, warehouse) -> None:
    airbyte.add_job("succeeded", created=datetime.now(UTC) - timedelta(days=3))
    warehouse.tables["raw_energy.muid_1"] = (
        "timestamp with time zone",
        datetime(2023, 2, 1, 23, 45, tzinfo=UTC),
    )
    assert backfill_sync("if_behind").execute(context(run_type="backfill")) == 2


def test_backfill_if_behind_syncs_when_the_raw_table_does_not_exist(airbyte, warehouse) -> None:
    assert backfill_sync("if_behind").execute(context(run_type="backfill")) == 1


def test_coverage_reads_naive_timestamps_as_utc(warehouse) -> None:
    warehouse.tables["raw_energy.muid_1"] = ("timestamp without time zone", datetime(2023, 2, 2, tzinfo=UTC))
    assert backfill_sync("if_behind")._raw_data_covers(WINDOW_END)
    # The session's time zone must not shift a naive column: it is converted explicitly.
    assert "at time zone 'UTC'" in warehouse.queries[-1]


def test_coverage_treats_a_naive_window_end_as_utc(warehouse) -> None:
    warehouse.tables["raw_energy.muid_1"] = ("timestamp with time zone", datetime(2023, 2, 2, tzinfo=UTC))
    assert backfill_sync("if_behind")._raw_data_covers("2023-02-02T00:00:00")
    assert not backfill_sync("if_behind")._raw_data_covers("2023-02-02T00:00:01")


def test_coverage_refuses_a_cursor_that_is_not_a_time(warehouse) -> None:
    warehouse.tables["raw_energy.muid_1"] = ("text", None)
    with pytest.raises(AirflowFailException, match=r"cursor_field 'timestamp' of raw_energy\.muid_1 is text"):
        backfill_sync("if_behind")._raw_data_covers(WINDOW_END)


# -- transient API errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "action",
    [500, 502, 503, 504, 429, 408, httpx.ConnectError, httpx.ReadTimeout, httpx.RemoteProtocolError],
    ids=lambda a: getattr(a, "__name__", str(a)),
)
def test_each_transient_error_at_submit_is_retried(airbyte, action, capsys) -> None:
    airbyte.fail("POST", "/api/public/v1/jobs", action, count=2)
    job_id = sync().execute(context())
    assert list(airbyte.jobs) == [job_id]
    assert len(airbyte.sleeps) == 2
    # Airflow's task logger writes to stdout: each retry is logged.
    assert capsys.readouterr().out.count("while trying to submit a sync") == 2


def test_an_expired_token_is_replaced(airbyte) -> None:
    job = airbyte.add_job("running")
    api = sync().api()
    api.get_job(job)
    airbyte.expire_tokens()
    assert api.get_job(job).job_id == job
    assert airbyte.tokens_issued == 2
    assert len(airbyte.sleeps) == 1


def test_a_401_that_persists_is_not_retried_for_the_whole_budget(airbyte) -> None:
    airbyte.fail("GET", "/api/public/v1/jobs/", 401, count=100)
    airbyte.add_job("running")
    with pytest.raises(AirflowException, match="401"):
        wait(1).execute(context())
    assert len(airbyte.sleeps) == tasks.MAX_UNAUTHORIZED


def test_a_client_error_is_not_retried(airbyte) -> None:
    airbyte.fail("POST", "/api/public/v1/jobs", 400)
    with pytest.raises(AirflowException, match="400"):
        sync().execute(context())
    assert airbyte.sleeps == []


def test_the_budget_ends_the_retries(airbyte, monkeypatch) -> None:
    monkeypatch.setattr(AirbyteApi, "sleep", staticmethod(time.sleep))
    airbyte.fail("POST", "/api/public/v1/jobs", 503, count=1000)
    started = time.monotonic()
    with pytest.raises(AirflowException, match="503"):
        sync(transient_error_budget=1.5).execute(context())
    assert 1.0 <= time.monotonic() - started < 6
    assert airbyte.jobs == {}


def test_a_lost_submit_reply_attaches_to_the_job_it_created(airbyte) -> None:
    airbyte.fail("POST", "/api/public/v1/jobs", "lost-reply")
    job_id = sync().execute(context())
    assert list(airbyte.jobs) == [job_id]
    assert airbyte.posts("/api/public/v1/jobs") == 1


def test_a_lost_reply_of_a_job_that_already_ended_is_still_not_submitted_twice(airbyte) -> None:
    airbyte.fail("POST", "/api/public/v1/jobs", "lost-reply-ended")
    assert sync().execute(context()) == 1
    assert len(airbyte.jobs) == 1


# -- waiting ----------------------------------------------------------------------------------------


def test_twenty_503s_on_the_first_poll_then_success(airbyte) -> None:
    job = airbyte.add_job("succeeded")
    airbyte.fail("GET", f"/api/public/v1/jobs/{job}", 503, count=20)
    result = wait(job).execute(context())
    assert result == {"job_id": job, "rows_synced": 7}
    assert len(airbyte.sleeps) == 20


def test_an_active_job_is_watched_in_the_worker_then_waited_on_in_the_triggerer(airbyte) -> None:
    job = airbyte.add_job("pending")
    sensor = wait(job, watch_in_worker=5)
    before = time.time()
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context())
    trigger = deferred.value.trigger
    assert int(trigger.job_id) == job
    assert airbyte.sleeps == [tasks.WATCH_INTERVAL_SECONDS] * 5
    assert airbyte.requests.count(("GET", f"/api/public/v1/jobs/{job}")) == 6  # the first look, then 5
    # The trigger may fire only once the scheduler has read the exit of this deferred try: later
    # than the supervisor's heartbeat tick, which is when it notices the exit (Airflow's config).
    tick = conf.getint("workers", "min_heartbeat_interval")
    assert before + tick < trigger.not_before <= time.time() + deferral.SETTLE_SECONDS


def test_a_job_that_ends_while_the_wait_watches_in_the_worker_needs_no_deferral(airbyte, monkeypatch) -> None:
    job = airbyte.add_job("running")

    def sleep(seconds: float) -> None:
        airbyte.sleeps.append(seconds)
        if len(airbyte.sleeps) == 3:
            airbyte.jobs[job]["status"] = "succeeded"

    monkeypatch.setattr(AirbyteApi, "sleep", staticmethod(sleep))
    assert wait(job).execute(context()) == {"job_id": job, "rows_synced": 7}
    assert airbyte.sleeps == [tasks.WATCH_INTERVAL_SECONDS] * 3


def test_a_job_that_fails_while_the_wait_watches_fails_the_wait_with_its_reason(airbyte, monkeypatch) -> None:
    job = airbyte.add_job("running")

    def sleep(seconds: float) -> None:
        airbyte.jobs[job]["status"] = "failed"

    monkeypatch.setattr(AirbyteApi, "sleep", staticmethod(sleep))
    with pytest.raises(AirflowFailException, match=f"Airbyte job {job} failed"):
        wait(job).execute(context())


def test_without_a_watch_window_an_active_job_defers_at_once(airbyte) -> None:
    job = airbyte.add_job("pending")
    assert deferred_job(wait(job, watch_in_worker=0), context()) == job
    assert airbyte.sleeps == []


def test_a_failed_job_fails_the_first_wait_with_the_reason_from_its_attempts(airbyte) -> None:
    job = airbyte.add_job("failed")
    airbyte.attempts[job] = [
        {
            "attempt": {
                "id": 0,
                "status": "failed",
                "failureSummary": {
                    "failures": [
                        {
                            "failureOrigin": "source",
                            "externalMessage": "HTTP 401 from meter API (token expired)",
                            "internalMessage": "HTTP 401 from meter API (token expired)",
                        }
                    ]
                },
            },
            "logs": {"logLines": ["a", "b"]},
        }
    ]
    sensor = wait(job)
    with pytest.raises(AirflowFailException) as failed:
        sensor.execute(context())
    assert str(failed.value) == f"Airbyte job {job} failed: source: HTTP 401 from meter API (token expired)"
    assert sensor.job_id == job


def test_the_reason_adds_the_first_line_of_a_different_internal_message(airbyte) -> None:
    job = airbyte.add_job("failed")
    failure = {
        "failureOrigin": "source",
        "externalMessage": "Unauthorized",
        "internalMessage": "HTTP 401 from meter API (token expired)\nTraceback ...\n  File x",
    }
    airbyte.attempts[job] = [
        {"attempt": {"failureSummary": {"failures": [failure]}}},
        {"attempt": {"failureSummary": {"failures": [failure, failure]}}},
    ]
    with pytest.raises(AirflowFailException) as failed:
        wait(job).execute(context())
    assert str(failed.value) == (
        f"Airbyte job {job} failed: source: Unauthorized (HTTP 401 from meter API (token expired))"
    )


def test_without_failure_summaries_the_reason_is_the_last_log_lines(airbyte) -> None:
    job = airbyte.add_job("failed")
    lines = [f"line {i}" for i in range(30)] + [""]
    airbyte.attempts[job] = [{"attempt": {"id": 0, "status": "failed"}, "logs": {"logLines": lines}}]
    with pytest.raises(AirflowFailException) as failed:
        wait(job).execute(context())
    message = str(failed.value)
    assert message.startswith(f"Airbyte job {job} failed: last log lines:\nline 10\n")
    assert message.endswith("line 29")


def test_without_a_configuration_api_the_failure_still_says_which_job(airbyte) -> None:
    airbyte.fail("POST", "/api/v1/jobs/get", 404)
    job = airbyte.add_job("failed")
    with pytest.raises(
        AirflowFailException, match=rf"^Airbyte job {job} failed: no failure reason available"
    ):
        wait(job).execute(context())


def test_a_cleared_wait_on_a_failed_job_starts_a_new_sync(airbyte) -> None:
    failed = airbyte.add_job("failed")
    sensor = wait(failed)
    new = deferred_job(sensor, context(try_number=2))
    assert new != failed
    assert airbyte.jobs[new]["status"] == "pending"
    assert sensor.job_id == new
    assert sensor.job_url.endswith(f"jobId={new}")


def test_a_cleared_wait_on_a_cancelled_job_attaches_to_a_running_sync(airbyte) -> None:
    cancelled = airbyte.add_job("cancelled")
    running = airbyte.add_job("running")
    assert deferred_job(wait(cancelled), context(try_number=3)) == running
    assert len(airbyte.jobs) == 2


def test_a_cleared_wait_on_a_succeeded_job_does_not_sync_again(airbyte) -> None:
    job = airbyte.add_job("succeeded")
    assert wait(job).execute(context(try_number=2))["job_id"] == job
    assert len(airbyte.jobs) == 1


def test_execute_complete_reports_the_reason_of_a_failure_seen_by_the_trigger(airbyte) -> None:
    job = airbyte.add_job("failed")
    airbyte.attempts[job] = [
        {"attempt": {"failureSummary": {"failures": [{"externalMessage": "disk full"}]}}, "logs": {}}
    ]
    with pytest.raises(AirflowFailException, match=f"^Airbyte job {job} failed: disk full$"):
        wait(job).execute_complete(context(), {"status": "failed", "job_id": job})


def test_a_timeout_cancels_the_job(airbyte) -> None:
    job = airbyte.add_job("running")
    airbyte.fail("DELETE", "/api/public/v1/jobs/", 503)
    with pytest.raises(AirflowException, match="did not finish"):
        wait(job).execute_complete(
            context(), {"status": "timeout", "job_id": job, "message": "did not finish in time"}
        )
    assert airbyte.jobs[job]["status"] == "cancelled"


def test_an_api_outage_past_the_budget_fails_the_try_retryably(airbyte) -> None:
    with pytest.raises(AirflowException) as raised:
        wait(1).execute_complete(context(), {"status": "error", "message": "Airbyte API failing"})
    assert not isinstance(raised.value, AirflowFailException)


# -- the deferred polls ---------------------------------------------------------------------------


def trigger(job_id: int, **kwargs: Any) -> AirbyteJobTrigger:
    defaults = {"end_time": time.time() + 600, "poll_interval": 1, "request_timeout": 5}
    return AirbyteJobTrigger(conn_id="airbyte_default", job_id=job_id, **{**defaults, **kwargs})


def first_event(trig: AirbyteJobTrigger) -> dict[str, Any]:
    return asyncio.run(trig.run().__anext__()).payload


def test_the_trigger_rides_out_transient_errors(airbyte) -> None:
    job = airbyte.add_job("succeeded")
    airbyte.fail("GET", f"/api/public/v1/jobs/{job}", 503, count=5)
    airbyte.fail("GET", f"/api/public/v1/jobs/{job}", httpx.ConnectError, count=5)
    assert first_event(trigger(job))["status"] == "success"


def test_the_trigger_gives_up_after_its_budget(airbyte, monkeypatch) -> None:
    monkeypatch.setattr(AirbyteApi, "async_sleep", staticmethod(asyncio.sleep))
    job = airbyte.add_job("running")
    airbyte.fail("GET", f"/api/public/v1/jobs/{job}", 503, count=1000)
    event = first_event(trigger(job, transient_error_budget=1))
    assert event["status"] == "error"
    assert "503" in event["message"]


def test_the_trigger_reports_a_timeout(airbyte) -> None:
    job = airbyte.add_job("running")
    assert first_event(trigger(job, end_time=time.time() - 1))["status"] == "timeout"


def test_the_trigger_holds_its_event_until_not_before(airbyte) -> None:
    job = airbyte.add_job("succeeded")
    start = time.time()
    assert first_event(trigger(job, not_before=start + 0.5))["status"] == "success"
    assert time.time() >= start + 0.5
    late = time.time()
    assert first_event(trigger(job, not_before=late - 60))["status"] == "success"
    assert time.time() - late < 0.5


def test_the_trigger_survives_serialization(airbyte) -> None:
    path, kwargs = trigger(3, transient_error_budget=42, not_before=1234.5).serialize()
    assert path == "elt.airbyte.AirbyteJobTrigger"
    assert kwargs["transient_error_budget"] == 42
    assert AirbyteJobTrigger(**kwargs).not_before == 1234.5


# -- the spec ----------------------------------------------------------------------------------------


def spec(**airbyte: Any) -> dict[str, Any]:
    connection = {"id": CONNECTION, "name": "shop", "destination_schema": "raw_shop", "streams": ["users"]}
    return {
        "name": "x",
        "description": "x",
        "owners": ["data-platform"],
        "tags": ["airbyte"],
        "start_date": "2023-02-01",
        "airbyte": {"connections": [connection], **airbyte},
        "dbt": {"selector": "ecommerce"},
    }


@pytest.mark.parametrize("budget", ["PT0S", "-PT1M"])
def test_the_transient_error_budget_must_be_positive(budget) -> None:
    with pytest.raises(ValueError, match="transient_error_budget"):
        PipelineSpec.model_validate(spec(transient_error_budget=budget))


def test_cursor_field_must_be_an_identifier() -> None:
    data = spec()
    data["airbyte"]["connections"][0]["streams"] = [{"name": "users", "cursor_field": 'x"; drop table y; --'}]
    with pytest.raises(ValueError, match="cursor_field"):
        PipelineSpec.model_validate(data)
