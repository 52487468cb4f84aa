"""The local Airbyte server, exercised the way the DAGs use it: through the provider's AirbyteHook
and the airbyte-api SDK. Only the fault and job-detail endpoints under /local use plain HTTP."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from airbyte_api import api, errors
from airflow.providers.airbyte.hooks.airbyte import AirbyteHook
from airflow.providers.common.compat.sdk import AirflowException

if TYPE_CHECKING:
    from conftest_airbyte import LocalAirbyte

# Fixtures (local_airbyte, fault reset, job cleanup) live in conftest_airbyte.py, next to this file.
pytest_plugins = ["conftest_airbyte"]
pytestmark = pytest.mark.usefixtures("no_job_left_running")

ECOMMERCE = "c19e6614-68eb-489d-94b1-58e56dfa934e"
ENERGY = "4d2f7268-e2ac-4fa7-a3a6-97286f22d617"

CONTRACT_IDS = {
    "workspace": "fc8b04f2-9b9a-4078-a650-36aa688c6cb1",
    "destination": "488ed591-2643-4f90-8a2b-6813f112610e",
    "energy_source": "ea461020-9b89-49e8-a366-1d15f75080e8",
    "faker_source": "9024a832-75da-4978-aa48-9ae24208747e",
}
STREAMS = ("users", "products", "purchases")
AIRBYTE_COLUMNS = {
    "_airbyte_raw_id": "character varying",
    "_airbyte_extracted_at": "timestamp with time zone",
    "_airbyte_meta": "json",
    "_airbyte_generation_id": "bigint",
}


@pytest.fixture
def hook(local_airbyte: LocalAirbyte) -> AirbyteHook:
    return AirbyteHook(airbyte_conn_id="airbyte_default")


def wait_status(hook: AirbyteHook, job_id: int, wanted: set[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = hook.get_job_status(job_id).value
        if status in wanted:
            return status
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not in {wanted} after {timeout}s (last: {status})")


def wait_for_pid(local_airbyte: LocalAirbyte, job_id: int, timeout: float = 120) -> int:
    """The pid of the job's worker process. After a restart of the server (the test before the crash
    tests restarts it), a job waits until the warm worker has imported PyAirbyte: 10-40 s, more on
    a loaded machine."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid := local_airbyte.local("GET", f"/jobs/{job_id}")["pid"]:
            return pid
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} never got a worker process")


def process_group_alive(pgid: int) -> bool:
    """Any live (non-zombie) process in the group?"""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def run_job(hook: AirbyteHook, connection_id: str, job_type: str = "sync", timeout: float = 600):
    submit = hook.submit_sync_connection if job_type == "sync" else hook.submit_reset_connection
    job = submit(connection_id)
    hook.wait_for_job(job.job_id, wait_seconds=1, timeout=timeout)
    return hook.get_job_details(job.job_id)


# -- auth and health --------------------------------------------------------------------------------


def test_health_and_token(hook: AirbyteHook, local_airbyte: LocalAirbyte) -> None:
    assert hook.test_connection() == (True, "Connection successfully tested")
    token = httpx.post(
        f"{local_airbyte.base_url}/api/public/v1/applications/token",
        data={
            "grant_type": "client_credentials",
            "client_id": hook.conn["client_id"],
            "client_secret": hook.conn["client_secret"],
        },
    ).json()
    assert token["token_type"] == "Bearer" and token["expires_in"] > 60 and token["access_token"]


def test_bad_credentials_and_missing_token_are_401(local_airbyte: LocalAirbyte, monkeypatch) -> None:
    conn = json.loads(os.environ["AIRFLOW_CONN_AIRBYTE_DEFAULT"])
    monkeypatch.setenv("AIRFLOW_CONN_AIRBYTE_BAD", json.dumps({**conn, "password": "wrong"}))
    bad = AirbyteHook(airbyte_conn_id="airbyte_bad")
    with pytest.raises(Exception, match="401"):
        bad.airbyte_api.connections.list_connections(request=api.ListConnectionsRequest())
    response = httpx.get(f"{local_airbyte.base_url}/api/public/v1/connections")
    assert response.status_code == 401 and response.json()["title"] == "unauthorized"


def test_expired_tokens_are_refused_then_refreshed(hook: AirbyteHook, local_airbyte: LocalAirbyte) -> None:
    request = api.ListConnectionsRequest()
    hook.airbyte_api.connections.list_connections(request=request)  # caches a token
    local_airbyte.local("POST", "/faults/expire-tokens")
    with pytest.raises(errors.SDKError) as refused:
        hook.airbyte_api.connections.list_connections(request=request)
    assert refused.value.status_code == 401
    # The SDK dropped the refused token; the next call fetches a fresh one.
    assert hook.airbyte_api.connections.list_connections(request=request).status_code == 200


# -- workspace resources ----------------------------------------------------------------------------


def test_lists_match_the_contract(hook: AirbyteHook) -> None:
    sdk = hook.airbyte_api
    connections = sdk.connections.list_connections(request=api.ListConnectionsRequest()).connections_response
    by_id = {c.connection_id: c for c in connections.data}
    assert set(by_id) == {ECOMMERCE, ENERGY}
    ecommerce = by_id[ECOMMERCE]
    assert ecommerce.namespace_format == "raw_ecommerce"
    assert ecommerce.source_id == CONTRACT_IDS["faker_source"]
    assert ecommerce.destination_id == CONTRACT_IDS["destination"]
    assert ecommerce.workspace_id == CONTRACT_IDS["workspace"]
    assert {
        s.name: (s.sync_mode.value, s.cursor_field, s.primary_key) for s in ecommerce.configurations.streams
    } == {name: ("incremental_deduped_history", ["updated_at"], [["id"]]) for name in STREAMS}
    assert by_id[ENERGY].namespace_format == "raw_energy"

    one = sdk.connections.get_connection(request=api.GetConnectionRequest(connection_id=ENERGY))
    assert one.connection_response.name == "energy"

    sources = sdk.sources.list_sources(request=api.ListSourcesRequest()).sources_response.data
    assert {s.source_id for s in sources} == {CONTRACT_IDS["energy_source"], CONTRACT_IDS["faker_source"]}
    destinations = sdk.destinations.list_destinations(request=api.ListDestinationsRequest())
    [warehouse] = destinations.destinations_response.data
    assert warehouse.destination_type == "postgres"
    assert warehouse.configuration.password == "**********"  # secrets never leave the server
    workspaces = sdk.workspaces.list_workspaces(request=api.ListWorkspacesRequest()).workspaces_response
    assert [w.workspace_id for w in workspaces.data] == [CONTRACT_IDS["workspace"]]


def test_unknown_connection_is_404_with_problem_body(hook: AirbyteHook) -> None:
    with pytest.raises(errors.SDKError) as missing:
        hook.airbyte_api.connections.get_connection(request=api.GetConnectionRequest(connection_id="nope"))
    assert missing.value.status_code == 404
    assert "connection nope" in json.loads(missing.value.body)["detail"]
    with pytest.raises(AirflowException, match="404"):
        hook.submit_sync_connection("00000000-0000-0000-0000-000000000000")


# -- syncs ------------------------------------------------------------------------------------------


def test_faker_sync_reset_and_incremental_state(hook: AirbyteHook, local_airbyte: LocalAirbyte) -> None:
    # Reset first so the assertions also hold against a long-lived stack.
    reset = run_job(hook, ECOMMERCE, "reset")
    assert reset.status.value == "succeeded" and reset.job_type.value == "reset"

    job = run_job(hook, ECOMMERCE)
    assert job.status.value == "succeeded"
    assert job.duration.startswith("PT") and job.last_updated_at and job.start_time
    assert job.bytes_synced > 0

    count = next(
        s.configuration.count
        for s in hook.airbyte_api.sources.list_sources(request=api.ListSourcesRequest()).sources_response.data
        if s.source_id == CONTRACT_IDS["faker_source"]
    )
    with local_airbyte.warehouse() as wh:
        tables = {
            r[0]
            for r in wh.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'raw_ecommerce'"
            )
        }
        assert tables == set(STREAMS)  # no PyAirbyte bookkeeping or batch tables in the raw schema
        counts = {t: wh.execute(f"SELECT count(*) FROM raw_ecommerce.{t}").fetchone()[0] for t in STREAMS}
        columns = dict(
            wh.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'raw_ecommerce' AND table_name = 'users'"
            ).fetchall()
        )
        generations = {
            r[0] for r in wh.execute("SELECT DISTINCT _airbyte_generation_id FROM raw_ecommerce.users")
        }
        null_meta = wh.execute(
            "SELECT count(*) FROM raw_ecommerce.purchases WHERE _airbyte_raw_id IS NULL "
            "OR _airbyte_extracted_at IS NULL OR _airbyte_meta IS NULL"
        ).fetchone()[0]
    assert counts["users"] == count and counts["products"] > 0 and counts["purchases"] > 0
    assert job.rows_synced == sum(counts.values())
    assert {c: columns.get(c) for c in AIRBYTE_COLUMNS} == AIRBYTE_COLUMNS
    assert {"id", "name", "email", "age", "created_at", "updated_at", "address"} <= set(columns)
    assert len(generations) == 1 and None not in generations and null_meta == 0

    logs = local_airbyte.local("GET", f"/jobs/{job.job_id}/logs")
    assert "job succeeded" in logs

    # Incremental state is carried over: nothing new to read (always_updated is false).
    again = run_job(hook, ECOMMERCE)
    assert again.status.value == "succeeded" and again.rows_synced == 0

    # A reset empties the tables and starts a new generation.
    run_job(hook, ECOMMERCE, "reset")
    with local_airbyte.warehouse() as wh:
        assert wh.execute("SELECT count(*) FROM raw_ecommerce.users").fetchone()[0] == 0


def test_second_sync_of_a_busy_connection_is_409(hook: AirbyteHook, local_airbyte: LocalAirbyte) -> None:
    local_airbyte.local("POST", "/faults/hold-jobs", {"connectionId": ECOMMERCE})
    first = hook.submit_sync_connection(ECOMMERCE)
    assert first.status.value == "pending"
    with pytest.raises(AirflowException) as busy:
        hook.submit_sync_connection(ECOMMERCE)
    assert "409" in str(busy.value) and f"A sync is already running for: {ECOMMERCE}" in str(busy.value)
    with pytest.raises(AirflowException, match="409"):
        hook.submit_reset_connection(ECOMMERCE)
    # Another connection is not blocked.
    local_airbyte.local("POST", "/faults/hold-jobs", {"connectionId": ENERGY})
    other = hook.submit_sync_connection(ENERGY)
    for job_id in (first.job_id, other.job_id):
        assert hook.cancel_job(job_id).status.value == "cancelled"


def test_cancel_kills_the_running_job(hook: AirbyteHook, local_airbyte: LocalAirbyte) -> None:
    job = hook.submit_sync_connection(ECOMMERCE)
    pid = wait_for_pid(local_airbyte, job.job_id)
    assert wait_status(hook, job.job_id, {"running"}) == "running"
    cancelled = hook.cancel_job(job.job_id)
    assert cancelled.status.value == "cancelled"
    assert not process_group_alive(pid)
    assert hook.get_job_status(job.job_id).value == "cancelled"
    with pytest.raises(AirflowException, match="409"):  # already over
        hook.cancel_job(job.job_id)


def test_list_jobs_filters_and_paging(hook: AirbyteHook, local_airbyte: LocalAirbyte) -> None:
    local_airbyte.local("POST", "/faults/hold-jobs", {"connectionId": ENERGY})
    made = []
    for submit in (hook.submit_sync_connection, hook.submit_reset_connection, hook.submit_sync_connection):
        job = submit(ENERGY)
        hook.cancel_job(job.job_id)
        made.append(job.job_id)
    jobs = hook.airbyte_api.jobs

    def ids(**filters) -> list[int]:
        res = jobs.list_jobs(request=api.ListJobsRequest(connection_id=ENERGY, **filters)).jobs_response
        return [j.job_id for j in res.data]

    newest_first = ids(limit=100)
    assert newest_first[:3] == made[::-1]
    assert ids(order_by="createdAt|ASC", limit=100)[-3:] == made
    assert set(made[::2]) <= set(ids(job_type="sync", limit=100))
    assert made[1] not in ids(job_type="sync", limit=100)
    assert set(made) <= set(ids(status="cancelled", limit=100))
    assert not set(made) & set(ids(status="succeeded", limit=100))
    page = jobs.list_jobs(request=api.ListJobsRequest(connection_id=ENERGY, limit=2)).jobs_response
    assert len(page.data) == 2 and page.next and "offset=2" in page.next
    assert ids(limit=1, offset=1) == [made[1]]


# -- faults -----------------------------------------------------------------------------------------


def test_fault_http_errors(hook: AirbyteHook, local_airbyte: LocalAirbyte) -> None:
    local_airbyte.local(
        "POST", "/faults/http-error", {"status": 502, "count": 2, "pathPrefix": "/connections"}
    )
    request = api.ListConnectionsRequest()
    for _ in range(2):
        with pytest.raises(errors.SDKError) as failed:
            hook.airbyte_api.connections.list_connections(request=request)
        assert failed.value.status_code == 502
    assert hook.airbyte_api.connections.list_connections(request=request).status_code == 200


def test_fault_hang_past_client_timeout(local_airbyte: LocalAirbyte) -> None:
    impatient = AirbyteHook(airbyte_conn_id="airbyte_default", timeout=1)
    local_airbyte.local("POST", "/faults/hang", {"seconds": 3, "count": 1, "pathPrefix": "/workspaces"})
    request = api.ListWorkspacesRequest()
    with pytest.raises(httpx.TimeoutException):
        impatient.airbyte_api.workspaces.list_workspaces(request=request)
    assert impatient.airbyte_api.workspaces.list_workspaces(request=request).status_code == 200


def test_fault_next_job_fails(hook: AirbyteHook, local_airbyte: LocalAirbyte) -> None:
    local_airbyte.local(
        "POST", "/faults/fail-next-job", {"connectionId": ECOMMERCE, "message": "boom: disk full"}
    )
    job = hook.submit_sync_connection(ECOMMERCE)
    with pytest.raises(AirflowException, match="Job failed"):
        hook.wait_for_job(job.job_id, wait_seconds=1, timeout=120)
    assert (
        local_airbyte.local("GET", f"/jobs/{job.job_id}")["message"]
        == "InjectedFailureError: boom: disk full"
    )
    assert "boom: disk full" in local_airbyte.local("GET", f"/jobs/{job.job_id}/logs")


def test_fault_hold_jobs_in_pending(hook: AirbyteHook, local_airbyte: LocalAirbyte) -> None:
    local_airbyte.local("POST", "/faults/hold-jobs", {"connectionId": ECOMMERCE, "seconds": 3})
    job = hook.submit_sync_connection(ECOMMERCE)
    time.sleep(1.5)
    assert hook.get_job_status(job.job_id).value == "pending"
    assert wait_status(hook, job.job_id, {"running"}, timeout=30) == "running"
    hook.cancel_job(job.job_id)

    local_airbyte.local("POST", "/faults/hold-jobs", {"connectionId": ECOMMERCE})  # until released
    job = hook.submit_sync_connection(ECOMMERCE)
    time.sleep(1)
    assert hook.get_job_status(job.job_id).value == "pending"
    local_airbyte.local("DELETE", f"/faults/hold-jobs/{ECOMMERCE}")
    assert wait_status(hook, job.job_id, {"running"}, timeout=30) == "running"
    hook.cancel_job(job.job_id)


# -- restart ----------------------------------------------------------------------------------------


def job_info(local_airbyte: LocalAirbyte, hook: AirbyteHook, job_id: int) -> dict:
    """Airbyte OSS's configuration API view of a job (attempts, failure summaries, log lines)."""
    client = httpx.Client(timeout=30)
    conn = json.loads(os.environ["AIRFLOW_CONN_AIRBYTE_DEFAULT"])
    issued = client.post(
        conn["schema"], data={"client_id": conn["login"], "client_secret": conn["password"]}
    ).json()["access_token"]
    response = client.post(
        f"{local_airbyte.base_url}/api/v1/jobs/get",
        json={"id": job_id},
        headers={"Authorization": f"Bearer {issued}"},
    )
    response.raise_for_status()
    return response.json()


def test_job_info_has_the_attempts_and_failure_summary(
    hook: AirbyteHook, local_airbyte: LocalAirbyte
) -> None:
    message = "HTTP 401 from meter API (token expired)"
    local_airbyte.local("POST", "/faults/fail-next-job", {"connectionId": ECOMMERCE, "message": message})
    job = hook.submit_sync_connection(ECOMMERCE)
    assert wait_status(hook, job.job_id, {"failed", "succeeded"}, timeout=120) == "failed"
    info = job_info(local_airbyte, hook, job.job_id)
    assert info["job"]["id"] == job.job_id and info["job"]["configId"] == ECOMMERCE
    assert info["job"]["status"] == "failed" and info["job"]["configType"] == "sync"
    [attempt] = info["attempts"]
    assert attempt["attempt"]["status"] == "failed"
    [failure] = attempt["attempt"]["failureSummary"]["failures"]
    assert failure["externalMessage"] == message
    assert failure["failureOrigin"] == "replication"
    assert any(message in line for line in attempt["logs"]["logLines"])


def test_job_info_needs_a_token(local_airbyte: LocalAirbyte) -> None:
    response = httpx.post(f"{local_airbyte.base_url}/api/v1/jobs/get", json={"id": 1}, timeout=30)
    assert response.status_code == 401


def test_fault_drop_reply_creates_the_job_but_times_the_client_out(
    hook: AirbyteHook, local_airbyte: LocalAirbyte
) -> None:
    local_airbyte.local("POST", "/faults/hold-jobs", {"connectionId": ECOMMERCE})
    before = {j.job_id for j in _jobs(hook)}
    impatient = AirbyteHook(airbyte_conn_id="airbyte_default", timeout=2)
    local_airbyte.local("POST", "/faults/drop-reply", {"seconds": 5, "method": "POST", "pathPrefix": "/jobs"})
    with pytest.raises(AirflowException, match="timed out"):
        impatient.submit_sync_connection(ECOMMERCE)
    created = [j for j in _jobs(hook) if j.job_id not in before]
    assert len(created) == 1
    hook.cancel_job(created[0].job_id)


def test_a_reply_held_by_a_fault_does_not_hold_up_the_servers_shutdown(local_airbyte: LocalAirbyte) -> None:
    """`dev.stack down` SIGTERMs the server and SIGKILLs it 20 s later: a request held for minutes
    by a fault must not keep it from running its shutdown (the supervisor stopping its workers)."""
    local_airbyte.local("POST", "/faults/drop-reply", {"seconds": 600, "pathPrefix": "/workspaces"})
    with pytest.raises(httpx.TimeoutException):
        httpx.get(f"{local_airbyte.base_url}/api/public/v1/workspaces", timeout=1)
    try:
        logged = local_airbyte.server.terminate(timeout=15)
    finally:
        local_airbyte.server.start()
    assert "timeout graceful shutdown exceeded" in logged, logged
    assert "Application shutdown complete" in logged, logged


def _jobs(hook: AirbyteHook) -> list:
    request = api.ListJobsRequest(connection_id=ECOMMERCE, limit=20)
    return list(hook.airbyte_api.jobs.list_jobs(request=request).jobs_response.data)


def test_a_crashed_worker_gets_a_new_attempt(hook: AirbyteHook, local_airbyte: LocalAirbyte) -> None:
    job = hook.submit_sync_connection(ECOMMERCE)
    pid = wait_for_pid(local_airbyte, job.job_id)
    local_airbyte.local("POST", f"/faults/kill-worker/{job.job_id}")
    assert wait_status(hook, job.job_id, {"succeeded", "failed"}, timeout=300) == "succeeded"
    attempts = job_info(local_airbyte, hook, job.job_id)["attempts"]
    assert [a["attempt"]["status"] for a in attempts] == ["failed", "succeeded"]
    assert "worker died" in attempts[0]["attempt"]["failureSummary"]["failures"][0]["externalMessage"]
    assert not process_group_alive(pid)


# -- restart ----------------------------------------------------------------------------------------


def test_a_job_interrupted_by_a_server_crash_resumes_in_a_new_attempt(
    hook: AirbyteHook, local_airbyte: LocalAirbyte
) -> None:
    finished = hook.submit_sync_connection(ECOMMERCE)
    hook.cancel_job(finished.job_id)
    running = hook.submit_sync_connection(ECOMMERCE)
    pid = wait_for_pid(local_airbyte, running.job_id)

    local_airbyte.server.kill()
    local_airbyte.server.start()

    # Killed with the server (PR_SET_PDEATHSIG or the restart's sweep), never left running.
    deadline = time.monotonic() + 10
    while process_group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not process_group_alive(pid)
    assert hook.get_job_status(finished.job_id).value == "cancelled"
    assert wait_status(hook, running.job_id, {"succeeded", "failed"}, timeout=300) == "succeeded"
    attempts = job_info(local_airbyte, hook, running.job_id)["attempts"]
    assert [a["attempt"]["status"] for a in attempts] == ["failed", "succeeded"]
    assert "server restarted" in attempts[0]["attempt"]["failureSummary"]["failures"][0]["externalMessage"]
    # The connection is free again.
    again = hook.submit_sync_connection(ECOMMERCE)
    hook.cancel_job(again.job_id)
