"""Non-Airbyte endpoints under /local: job logs and details, and fault injection (dev/CI only)."""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from . import errors
from .faults import HttpFault
from .routes import Ctx

local = APIRouter(prefix="/local")


class _Body(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")


class HttpErrorFault(_Body):
    status: int = Field(503, ge=500, le=599)
    count: int = Field(1, ge=1)
    method: str | None = None
    path_prefix: str | None = Field(None, alias="pathPrefix")


class HangFault(_Body):
    seconds: float = Field(gt=0, le=600)
    count: int = Field(1, ge=1)
    method: str | None = None
    path_prefix: str | None = Field(None, alias="pathPrefix")


class FailJobFault(_Body):
    connection_id: str = Field(alias="connectionId")
    message: str = "injected failure"
    count: int = Field(1, ge=1)


class HoldJobsFault(_Body):
    connection_id: str = Field(alias="connectionId")
    seconds: float | None = Field(None, gt=0)


def _known_connection(context: Any, connection_id: str) -> None:
    if context.workspace.connection(connection_id) is None:
        raise errors.not_found("connection", connection_id)


@local.get("/jobs/{job_id}")
def job_details(job_id: int, context: Ctx) -> dict[str, Any]:
    """What the public API does not show: pid, failure message, log path."""
    job = context.store.get_job(job_id)
    if job is None:
        raise errors.not_found("job", job_id)
    return {
        "jobId": job.job_id,
        "status": job.status,
        "pid": context.supervisor.pid_of(job_id) or job.pid,
        "message": job.message,
        "logPath": str(context.settings.job_log(job_id)),
    }


@local.get("/jobs/{job_id}/logs", response_class=PlainTextResponse)
def job_logs(job_id: int, context: Ctx) -> str:
    path = context.settings.job_log(job_id)
    if context.store.get_job(job_id) is None or not path.exists():
        raise errors.not_found("job logs", job_id)
    return path.read_text(errors="replace")


@local.get("/faults")
def list_faults(context: Ctx) -> dict[str, Any]:
    return context.faults.snapshot()


@local.delete("/faults")
def clear_faults(context: Ctx) -> dict[str, Any]:
    context.faults.clear()
    return context.faults.snapshot()


@local.post("/faults/http-error")
def add_http_error(body: HttpErrorFault, context: Ctx) -> dict[str, Any]:
    context.faults.add_http(
        HttpFault("error", body.count, status=body.status, method=body.method, path_prefix=body.path_prefix)
    )
    return context.faults.snapshot()


@local.post("/faults/hang")
def add_hang(body: HangFault, context: Ctx) -> dict[str, Any]:
    context.faults.add_http(
        HttpFault("hang", body.count, seconds=body.seconds, method=body.method, path_prefix=body.path_prefix)
    )
    return context.faults.snapshot()


@local.post("/faults/drop-reply")
def add_drop_reply(body: HangFault, context: Ctx) -> dict[str, Any]:
    """Serve the next matching requests, then hold the reply `seconds`: the client sees a timeout."""
    context.faults.add_http(
        HttpFault(
            "drop-reply", body.count, seconds=body.seconds, method=body.method, path_prefix=body.path_prefix
        )
    )
    return context.faults.snapshot()


@local.post("/faults/kill-worker/{job_id}")
def kill_worker(job_id: int, context: Ctx) -> dict[str, Any]:
    """SIGKILL the running attempt's worker process group, like a worker crash."""
    pid = context.supervisor.pid_of(job_id)
    if pid is None:
        raise errors.not_found("running worker of job", job_id)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return {"jobId": job_id, "killed": pid}


@local.post("/faults/fail-next-job")
def add_job_failure(body: FailJobFault, context: Ctx) -> dict[str, Any]:
    _known_connection(context, body.connection_id)
    context.faults.fail_next_jobs(body.connection_id, body.message, body.count)
    return context.faults.snapshot()


@local.post("/faults/hold-jobs")
def add_hold(body: HoldJobsFault, context: Ctx) -> dict[str, Any]:
    _known_connection(context, body.connection_id)
    context.faults.hold_jobs(body.connection_id, body.seconds)
    return context.faults.snapshot()


@local.delete("/faults/hold-jobs/{connection_id}")
def release_hold(connection_id: str, context: Ctx) -> dict[str, Any]:
    if not context.faults.release_jobs(connection_id):
        raise errors.not_found("job hold", connection_id)
    return context.faults.snapshot()


@local.post("/faults/expire-tokens")
def expire_tokens(request: Request, context: Ctx) -> dict[str, Any]:
    context.tokens.revoke_all()
    return {"tokensValidAfter": context.tokens.not_before}
