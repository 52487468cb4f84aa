"""The one configuration-API call the tasks use: `POST /api/v1/jobs/get` (Airbyte OSS).

The public API's job response has no attempts; Airbyte OSS serves them, with each failed
attempt's `failureSummary` and its log lines, through its configuration API. Same token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from . import errors
from .routes import Ctx, require_token
from .store import Attempt, Job

config = APIRouter(prefix="/api/v1", dependencies=[Depends(require_token)])
CONFIG_TYPES = {"sync": "sync", "reset": "reset_connection", "clear": "clear"}


class JobIdRequestBody(BaseModel):
    id: int


def _epoch(value: Any) -> int | None:
    return int(value.timestamp()) if value is not None else None


def _log_lines(log_path: Path, attempts: list[Attempt], index: int) -> list[str]:
    if not log_path.exists():
        return []
    start = attempts[index].log_offset
    end = attempts[index + 1].log_offset if index + 1 < len(attempts) else None
    with log_path.open("rb") as handle:
        handle.seek(start)
        data = handle.read() if end is None else handle.read(max(0, end - start))
    return data.decode(errors="replace").splitlines()


def job_info(job: Job, attempts: list[Attempt], log_path: Path) -> dict[str, Any]:
    """Airbyte's JobInfoRead: {job: JobRead, attempts: [AttemptInfoRead]}."""
    items = []
    for index, attempt in enumerate(attempts):
        body: dict[str, Any] = {
            "id": attempt.attempt_number,
            "status": attempt.status,
            "createdAt": _epoch(attempt.created_at),
            "updatedAt": _epoch(attempt.updated_at),
            "endedAt": _epoch(attempt.ended_at),
            "recordsSynced": attempt.rows_synced,
            "bytesSynced": attempt.bytes_synced,
        }
        if attempt.failure:
            body["failureSummary"] = {"failures": [attempt.failure], "partialSuccess": False}
        items.append({"attempt": body, "logs": {"logLines": _log_lines(log_path, attempts, index)}})
    return {
        "job": {
            "id": job.job_id,
            "configType": CONFIG_TYPES.get(job.job_type, job.job_type),
            "configId": job.connection_id,
            "createdAt": _epoch(job.created_at),
            "updatedAt": _epoch(job.updated_at),
            "startedAt": _epoch(job.started_at),
            "status": job.status,
        },
        "attempts": items,
    }


@config.post("/jobs/get")
def get_job_info(body: JobIdRequestBody, context: Ctx) -> dict[str, Any]:
    job = context.store.get_job(body.id)
    if job is None:
        raise errors.not_found("job", body.id)
    return job_info(job, context.store.attempts(job.job_id), context.settings.job_log(job.job_id))
