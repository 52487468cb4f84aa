"""FastAPI application: routers, Airbyte-style errors and the fault middleware."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .config_routes import config
from .context import ServerContext
from .errors import ApiProblem, problem_response
from .job_page import ui
from .local_routes import local
from .reload import refresh_workspace
from .routes import protected, public
from .settings import API_PREFIX
from .streams import streams


def create_app(context: ServerContext) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        context.supervisor.recover()
        yield
        context.supervisor.shutdown()
        context.store.close()

    app = FastAPI(
        title="Local Airbyte (dev)",
        lifespan=lifespan,
        docs_url="/local/docs",
        openapi_url="/local/openapi.json",
    )
    app.state.ctx = context
    app.include_router(public, prefix=API_PREFIX)
    app.include_router(protected, prefix=API_PREFIX)
    app.include_router(streams, prefix=API_PREFIX)
    app.include_router(config)
    app.include_router(local)
    app.include_router(ui)

    @app.exception_handler(ApiProblem)
    async def _problem(request: Request, exc: ApiProblem) -> Response:
        return problem_response(exc.status, exc.title, exc.detail, exc.data)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return problem_response(400, "bad-request", detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        title = "resource-not-found" if exc.status_code == 404 else "error"
        return problem_response(exc.status_code, title, f"{request.method} {request.url.path}: {exc.detail}")

    @app.middleware("http")
    async def _faults(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path
        if path.startswith(API_PREFIX):
            refresh_workspace(context)
            fault = context.faults.take_http(request.method, path.removeprefix(API_PREFIX))
            if fault and fault.kind == "hang":
                await asyncio.sleep(fault.seconds)
            elif fault and fault.kind == "drop-reply":
                response = await call_next(request)
                await asyncio.sleep(fault.seconds)
                return response
            elif fault:
                return problem_response(
                    fault.status, "injected-fault", f"injected HTTP {fault.status} for {path}"
                )
        return await call_next(request)

    return app
