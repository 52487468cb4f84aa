"""The local stand-in for Airbyte's connection timeline page, where the 'Airbyte job' link points.

Airbyte's UI shows a job at `/connections/{connectionId}/timeline?jobId=N` (Cloud prefixes it
with the workspace); this page shows the same facts: status, rows, duration and the log.
"""

from __future__ import annotations

import html

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse

from . import errors
from .routes import Ctx

ui = APIRouter()


@ui.get("/connections/{connection_id}/timeline", response_class=HTMLResponse)
def job_page(connection_id: str, context: Ctx, job_id: int = Query(alias="jobId")) -> str:
    job = context.store.get_job(job_id)
    if job is None or job.connection_id != connection_id:
        raise errors.not_found("job", job_id)
    log = context.settings.job_log(job.job_id)
    text = log.read_text(errors="replace")[-20000:] if log.exists() else "(no log yet)"
    duration = (job.ended_at or job.updated_at) - (job.started_at or job.created_at)
    facts = {
        "Connection": connection_id,
        "Job": f"{job.job_id} ({job.job_type})",
        "Status": job.status,
        "Started": job.started_at or job.created_at,
        "Duration": f"{duration.total_seconds():.0f} s",
        "Rows synced": job.rows_synced,
        "Bytes synced": job.bytes_synced,
        "Message": job.message or "",
    }
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items()
    )
    return (
        f"<!doctype html><title>Airbyte job {job.job_id}</title>"
        "<style>body{font-family:sans-serif;margin:2em}th{text-align:left;padding-right:1em}"
        "pre{background:#f4f4f4;padding:1em;white-space:pre-wrap}</style>"
        f"<h1>Airbyte job {job.job_id}: {html.escape(job.status)}</h1><table>{rows}</table>"
        f"<h2>Log</h2><pre>{html.escape(text)}</pre>"
    )
