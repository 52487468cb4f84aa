"""FastAPI app: the vendor's measurement endpoint plus local-only test hooks under /local."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from itertools import islice

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from dev.meter_api.faults import Fault, Faults, RequestLog
from dev.meter_api.query import InvalidParameter, parse_measurement_query
from dev.meter_api.readings import reading, timestamps

QUERY_PARAMS = ("muid", "measurement", "start", "stop", "limit", "offset")


class FaultRequest(BaseModel):
    status: int = Field(description="HTTP status to answer with: 429, 500, 502, 503 or 504")
    count: int = Field(1, description="how many measurement requests fail")
    retry_after: int | None = Field(None, description="seconds, sent as Retry-After")


def create_app(clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> FastAPI:
    """``clock`` decides which readings exist yet: none with a timestamp after it."""
    app = FastAPI(title="Local smart-meter API", docs_url="/docs", redoc_url=None)
    faults = Faults()
    log = RequestLog()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/meterdata/measurement")
    def measurement(request: Request) -> JSONResponse:
        params = {k: v for k, v in request.query_params.items() if k in QUERY_PARAMS}
        fault = faults.take()
        if fault is not None:
            log.record(params, fault.status, rows=0)
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
            body = {
                "error": "injected_fault",
                "message": f"injected HTTP {fault.status} (POST /local/faults)",
            }
            return JSONResponse(body, status_code=fault.status, headers=headers)
        try:
            query = parse_measurement_query(*(params.get(name) for name in QUERY_PARAMS))
        except InvalidParameter as error:
            log.record(params, 400, rows=0)
            return JSONResponse(error.as_json(), status_code=400)
        # Only the requested page is computed; timestamps after the clock do not exist yet.
        page = islice(
            timestamps(query.start, query.stop, until=clock()), query.offset, query.offset + query.limit
        )
        data = [reading(query.meter, ts) for ts in page]
        log.record(params, 200, rows=len(data))
        return JSONResponse({"data": data})

    @app.post("/local/faults")
    def arm_faults(spec: FaultRequest) -> JSONResponse:
        try:
            faults.arm(Fault(spec.status, spec.retry_after), spec.count)
        except ValueError as error:
            return JSONResponse({"error": "invalid_fault", "message": str(error)}, status_code=400)
        return JSONResponse(faults.snapshot())

    @app.get("/local/faults")
    def show_faults() -> dict:
        return faults.snapshot()

    @app.delete("/local/faults")
    def clear_faults() -> dict:
        faults.clear()
        return faults.snapshot()

    @app.get("/local/stats")
    def stats() -> dict:
        return log.snapshot()

    @app.delete("/local/stats")
    def reset_stats() -> dict:
        log.reset()
        return log.snapshot()

    return app
