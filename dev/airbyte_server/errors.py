"""Airbyte-style problem responses (the public API's error body)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

_DOCS = "https://reference.airbyte.com/reference/errors"


class ApiProblem(Exception):
    """Raised by handlers; rendered as Airbyte's problem JSON with the given status."""

    def __init__(self, status: int, title: str, detail: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.data = status, title, detail, data or {}


def problem_response(
    status: int, title: str, detail: str, data: dict[str, Any] | None = None
) -> JSONResponse:
    body = {
        "type": f"{_DOCS}#{title}",
        "title": title,
        "status": status,
        "detail": detail,
        # Older Airbyte releases answered with `message`; clients still read either.
        "message": detail,
        "documentationUrl": _DOCS,
        "data": data or {},
    }
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def not_found(kind: str, resource_id: object) -> ApiProblem:
    return ApiProblem(404, "resource-not-found", f"Could not find a resource for: {kind} {resource_id}")


def bad_request(detail: str) -> ApiProblem:
    return ApiProblem(400, "bad-request", detail)


def sync_already_running(connection_id: str) -> ApiProblem:
    return ApiProblem(409, "try-again-later", f"A sync is already running for: {connection_id}")


def unauthorized(detail: str) -> ApiProblem:
    return ApiProblem(401, "unauthorized", detail)
