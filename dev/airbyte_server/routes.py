"""The Airbyte public API subset under /api/public/v1."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from . import errors, models
from .auth import InvalidCredentialsError, InvalidTokenError
from .context import ServerContext
from .store import ConnectionBusyError, JobFilter
from .supervisor import JobNotActiveError

JOB_TYPES = ("sync", "reset", "clear")
JOB_STATUSES = ("pending", "queued", "running", "incomplete", "failed", "succeeded", "cancelled")
_ORDER_COLUMNS = {"createdAt": "created_at", "updatedAt": "updated_at"}


def ctx(request: Request) -> ServerContext:
    return request.app.state.ctx


Ctx = Annotated[ServerContext, Depends(ctx)]


def require_token(request: Request, context: Ctx) -> None:
    try:
        context.tokens.verify(request.headers.get("authorization"))
    except InvalidTokenError as exc:
        raise errors.unauthorized(f"Unauthorized: {exc}") from None


public = APIRouter()
protected = APIRouter(dependencies=[Depends(require_token)])


class JobCreateRequest(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    connection_id: str = Field(alias="connectionId")
    job_type: str = Field(alias="jobType")


def _page(request: Request, items: list[dict[str, Any]], limit: int, offset: int) -> dict[str, Any]:
    base = str(request.url.remove_query_params(["limit", "offset"]))
    return models.page(items[offset : offset + limit], base, limit, offset, offset + limit < len(items))


def _in_workspace(context: ServerContext, workspace_ids: list[str] | None) -> bool:
    return not workspace_ids or context.workspace.id in workspace_ids


# -- unauthenticated --------------------------------------------------------------------------------


@public.get("/health")
def health() -> dict[str, bool]:
    return {"available": True}


@public.post("/applications/token")
async def token(request: Request, context: Ctx) -> dict[str, object]:
    # The SDK posts a form (grant_type, client_id, client_secret); Airbyte's docs show JSON.
    raw = await request.body()
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            raise errors.bad_request("request body is not valid JSON") from None
    else:
        body = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
    try:
        return context.tokens.issue(body.get("client_id"), body.get("client_secret"))
    except InvalidCredentialsError:
        raise errors.unauthorized("Invalid client_id or client_secret") from None


# -- jobs -----------------------------------------------------------------------------------------


@protected.post("/jobs")
def create_job(body: JobCreateRequest, context: Ctx) -> dict[str, Any]:
    if body.job_type not in JOB_TYPES:
        raise errors.bad_request(f"jobType {body.job_type!r} is not supported here; use one of {JOB_TYPES}")
    if context.workspace.connection(body.connection_id) is None:
        raise errors.not_found("connection", body.connection_id)
    try:
        job = context.supervisor.submit(body.connection_id, body.job_type)
    except ConnectionBusyError:
        raise errors.sync_already_running(body.connection_id) from None
    return models.job_response(job)


@protected.get("/jobs/{job_id}")
def get_job(job_id: int, context: Ctx) -> dict[str, Any]:
    job = context.store.get_job(job_id)
    if job is None:
        raise errors.not_found("job", job_id)
    return models.job_response(job)


@protected.delete("/jobs/{job_id}")
def cancel_job(job_id: int, context: Ctx) -> dict[str, Any]:
    try:
        job = context.supervisor.cancel(job_id)
    except JobNotActiveError as exc:
        raise errors.ApiProblem(409, "job-not-running", str(exc)) from None
    if job is None:
        raise errors.not_found("job", job_id)
    return models.job_response(job)


@protected.get("/jobs")
def list_jobs(
    request: Request,
    context: Ctx,
    connection_id: Annotated[str | None, Query(alias="connectionId")] = None,
    status: str | None = None,
    job_type: Annotated[str | None, Query(alias="jobType")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
    order_by: Annotated[str | None, Query(alias="orderBy")] = None,
    created_at_start: Annotated[datetime | None, Query(alias="createdAtStart")] = None,
    created_at_end: Annotated[datetime | None, Query(alias="createdAtEnd")] = None,
    updated_at_start: Annotated[datetime | None, Query(alias="updatedAtStart")] = None,
    updated_at_end: Annotated[datetime | None, Query(alias="updatedAtEnd")] = None,
    workspace_ids: Annotated[list[str] | None, Query(alias="workspaceIds")] = None,
) -> dict[str, Any]:
    if status is not None and status not in JOB_STATUSES:
        raise errors.bad_request(f"status {status!r} is not one of {', '.join(JOB_STATUSES)}")
    if job_type is not None and job_type not in (*JOB_TYPES, "refresh"):
        raise errors.bad_request(f"jobType {job_type!r} is not one of {', '.join(JOB_TYPES)}, refresh")
    column, descending = "created_at", True  # newest first unless asked otherwise
    if order_by:
        field, _, direction = order_by.partition("|")
        if field not in _ORDER_COLUMNS or direction.upper() not in ("ASC", "DESC"):
            raise errors.bad_request(f"orderBy {order_by!r} must look like createdAt|DESC or updatedAt|ASC")
        column, descending = _ORDER_COLUMNS[field], direction.upper() == "DESC"
    if not _in_workspace(context, workspace_ids):
        return models.page([], str(request.url), limit, offset, False)
    # One extra row tells whether a `next` page exists.
    jobs = context.store.list_jobs(
        JobFilter(
            connection_id=connection_id,
            status=status,
            job_type=job_type,
            created_at_start=created_at_start,
            created_at_end=created_at_end,
            updated_at_start=updated_at_start,
            updated_at_end=updated_at_end,
            order_column=column,
            descending=descending,
            limit=limit + 1,
            offset=offset,
        )
    )
    base = str(request.url.remove_query_params(["limit", "offset"]))
    data = [models.job_response(j) for j in jobs[:limit]]
    return models.page(data, base, limit, offset, len(jobs) > limit)


# -- workspace resources (read-only: they come from workspace.yaml) ------------------------------------

Limit = Annotated[int, Query(ge=1, le=100)]
Offset = Annotated[int, Query(ge=0)]
WorkspaceIds = Annotated[list[str] | None, Query(alias="workspaceIds")]


@protected.get("/connections")
def list_connections(
    request: Request, context: Ctx, workspace_ids: WorkspaceIds = None, limit: Limit = 20, offset: Offset = 0
) -> dict[str, Any]:
    ws = context.workspace
    items = [models.connection_response(ws, c) for c in ws.connections.values()]
    return _page(request, items if _in_workspace(context, workspace_ids) else [], limit, offset)


@protected.get("/connections/{connection_id}")
def get_connection(connection_id: str, context: Ctx) -> dict[str, Any]:
    conn = context.workspace.connection(connection_id)
    if conn is None:
        raise errors.not_found("connection", connection_id)
    return models.connection_response(context.workspace, conn)


@protected.get("/sources")
def list_sources(
    request: Request, context: Ctx, workspace_ids: WorkspaceIds = None, limit: Limit = 20, offset: Offset = 0
) -> dict[str, Any]:
    ws = context.workspace
    items = [models.source_response(ws, s) for s in ws.sources.values()]
    return _page(request, items if _in_workspace(context, workspace_ids) else [], limit, offset)


@protected.get("/sources/{source_id}")
def get_source(source_id: str, context: Ctx) -> dict[str, Any]:
    source = context.workspace.sources.get(source_id)
    if source is None:
        raise errors.not_found("source", source_id)
    return models.source_response(context.workspace, source)


@protected.get("/destinations")
def list_destinations(
    request: Request, context: Ctx, workspace_ids: WorkspaceIds = None, limit: Limit = 20, offset: Offset = 0
) -> dict[str, Any]:
    ws = context.workspace
    items = [models.destination_response(ws, d) for d in ws.destinations.values()]
    return _page(request, items if _in_workspace(context, workspace_ids) else [], limit, offset)


@protected.get("/destinations/{destination_id}")
def get_destination(destination_id: str, context: Ctx) -> dict[str, Any]:
    dest = context.workspace.destinations.get(destination_id)
    if dest is None:
        raise errors.not_found("destination", destination_id)
    return models.destination_response(context.workspace, dest)


@protected.get("/workspaces")
def list_workspaces(
    request: Request, context: Ctx, workspace_ids: WorkspaceIds = None, limit: Limit = 20, offset: Offset = 0
) -> dict[str, Any]:
    items = [models.workspace_response(context.workspace)]
    return _page(request, items if _in_workspace(context, workspace_ids) else [], limit, offset)


@protected.get("/workspaces/{workspace_id}")
def get_workspace(workspace_id: str, context: Ctx) -> dict[str, Any]:
    if workspace_id != context.workspace.id:
        raise errors.not_found("workspace", workspace_id)
    return models.workspace_response(context.workspace)
