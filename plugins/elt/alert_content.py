"""What an on-call alert says, built from an Airflow callback context and rendered per receiver.

An `Alert` holds the facts (pipeline, run, task, try, data interval, error summary, links, the
Airbyte job, the failing dbt nodes); `slack_*`, `pagerduty_*` and `email_*` lay them out. The
builders never raise on a missing fact: a thin alert is better than none.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from elt import paths

Event = Literal["task_failed", "task_retry", "run_failed", "deadline_missed", "recovered", "no_rows"]

ERROR_LIMIT = 1200  # characters of error text: enough to triage, short enough for a phone screen
EMOJI = {
    "task_failed": ":red_circle:",
    "task_retry": ":large_yellow_circle:",
    "run_failed": ":red_circle:",
    "deadline_missed": ":alarm_clock:",
    "recovered": ":large_green_circle:",
    "no_rows": ":warning:",
}
# Credentials that can sit in an error text without the secrets masker knowing them.
_URL_CREDENTIALS = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)
_KEY_VALUE_SECRETS = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|secret|token|api[_-]?key|client[_-]?secret)\b\s*[=:]\s*)[^\s,;&'\"]+",
    re.IGNORECASE,
)
_AIRBYTE_JOB_IN_TEXT = re.compile(r"\bAirbyte job (\d+)\b")
_DBT_ERRORS_PREFIX = "dbt invocation completed with errors:"


@dataclass(frozen=True)
class DbtFailure:
    """One failing dbt node of a Cosmos task, as dbt reported it."""

    name: str
    message: str
    resource_type: str | None = None  # "model", "test", ... from the compiled manifest
    compiled_sql: str | None = None  # path of its compiled SQL inside the dbt project


@dataclass(frozen=True)
class Alert:
    event: Event
    pipeline: str
    dag_id: str
    run_id: str | None = None
    task_id: str | None = None
    map_index: int | None = None
    try_number: int | None = None
    max_tries: int | None = None  # total attempts this task gets (retries + 1)
    interval_start: str | None = None
    interval_end: str | None = None
    error: str | None = None
    reason: str | None = None  # why the run failed, or when its deadline was
    base_url: str = ""
    airbyte_job_id: str | None = None
    airbyte_job_url: str | None = None
    dbt_failures: tuple[DbtFailure, ...] = field(default_factory=tuple)
    run_type: str | None = None

    @property
    def window(self) -> str:
        """The data window an incident is about: its interval start, else the run (no interval)."""
        try:
            start = datetime.fromisoformat(self.interval_start or "")
        except ValueError:
            return self.interval_start or self.run_id or "no-run"
        return start.replace(tzinfo=start.tzinfo or UTC).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")

    # -- links ----------------------------------------------------------------------------------

    @property
    def run_url(self) -> str | None:
        if not self.run_id:
            return None
        return f"{self.base_url}/dags/{quote(self.dag_id)}/runs/{quote(self.run_id, safe='')}"

    @property
    def task_url(self) -> str | None:
        if not (self.run_url and self.task_id):
            return None
        mapped = f"/mapped/{self.map_index}" if self.map_index is not None and self.map_index >= 0 else ""
        return f"{self.run_url}/tasks/{quote(self.task_id)}{mapped}"

    @property
    def log_url(self) -> str | None:
        """The same link Airflow 3 puts in `ti.log_url`: the task's log for this try."""
        if not self.task_url:
            return None
        return f"{self.task_url}?try_number={self.try_number}" if self.try_number else self.task_url

    def links(self) -> list[tuple[str, str]]:
        found = [
            ("Task log", self.log_url),
            ("DAG run", self.run_url),
            (f"Airbyte job {self.airbyte_job_id}", self.airbyte_job_url),
        ]
        if self.dbt_failures and self.task_url:
            found.append(("Compiled SQL (Rendered Templates)", f"{self.task_url}/rendered_templates"))
        return [(text, href) for text, href in found if href]

    # -- text -----------------------------------------------------------------------------------

    @property
    def title(self) -> str:
        what = {
            "task_failed": f"task {self.task_id} failed",
            "task_retry": f"task {self.task_id} failed, will retry",
            "run_failed": "run failed",
            "deadline_missed": "run missed its deadline",
            "recovered": "recovered",
            "no_rows": f"task {self.task_id} synced 0 rows",
        }[self.event]
        return f"{self.pipeline}: {what}"

    @property
    def tries(self) -> str | None:
        if not self.try_number:
            return None
        if not self.max_tries:
            return str(self.try_number)
        note = ""
        if self.event == "task_failed":
            # Fewer tries than allowed means the task failed for good (e.g. a failed Airbyte job).
            note = " (no retries left)" if self.try_number >= self.max_tries else " (not retryable)"
        return f"{self.try_number} of {self.max_tries}{note}"

    def facts(self) -> list[tuple[str, str]]:
        """Label/value pairs, in the order on-call reads them."""
        window = (
            f"{self.interval_start} → {self.interval_end}"
            if self.interval_start or self.interval_end
            else None
        )
        rows = [
            ("Pipeline", self.pipeline),
            ("DAG", self.dag_id),
            ("Run", self.run_id),
            ("Task", self.task_id + (f"[{self.map_index}]" if self.map_index not in (None, -1) else ""))
            if self.task_id
            else ("Task", None),
            ("Try", self.tries),
            ("Data interval", window),
            ("Reason", self.reason),
            ("Airbyte job", self.airbyte_job_id),
        ]
        for failure in self.dbt_failures:
            kind = f"dbt {failure.resource_type}" if failure.resource_type else "dbt node"
            where = f" (compiled SQL: {failure.compiled_sql})" if failure.compiled_sql else ""
            said = f" — {failure.message}" if failure.message else ""
            rows.append((f"Failing {kind}", f"{failure.name}{where}{said}"))
        rows.append(("Error", self.error))
        return [(label, value) for label, value in rows if value]

    @property
    def summary(self) -> str:
        """One line: what PagerDuty shows as the incident title (max 1024 characters)."""
        detail = ""
        if self.dbt_failures:
            detail = "dbt " + ", ".join(f.name for f in self.dbt_failures)
        elif self.airbyte_job_id and self.event in ("task_failed", "task_retry"):
            detail = f"Airbyte job {self.airbyte_job_id}"
        elif self.reason:
            detail = self.reason
        first_error = (self.error or "").splitlines()[0] if self.error else ""
        parts = [self.title, detail, first_error]
        return " — ".join(p for p in parts if p)[:1024]

    # -- per receiver ---------------------------------------------------------------------------

    def slack_text(self, severity: str | None = None) -> str:
        """mrkdwn, also the notification/fallback text for the blocks."""
        label = f"[{severity}] " if severity and self.event != "recovered" else ""
        lines = [f"{EMOJI[self.event]} *{label}{_slack_escape(self.title)}*"]
        for label, value in self.facts():
            if label == "Error":
                lines.append(f"*{label}:*\n```{_slack_escape(value)}```")
            else:
                lines.append(f"*{label}:* {_slack_escape(value)}")
        links = " · ".join(f"<{href}|{_slack_escape(text)}>" for text, href in self.links())
        if links:
            lines.append(links)
        return "\n".join(lines)

    def slack_blocks(self, severity: str | None = None) -> list[dict[str, Any]]:
        # One section holds everything: Slack caps a section at 3000 characters, the error is capped well below.
        return [{"type": "section", "text": {"type": "mrkdwn", "text": self.slack_text(severity)[:3000]}}]

    def slack_line(self) -> str:
        """The low-severity one-liner for a retry."""
        first_error = (self.error or "").splitlines()[0] if self.error else ""
        log = f" · <{self.log_url}|log>" if self.log_url else ""
        return _slack_escape(f"{self.title} (try {self.tries}) {first_error}".strip()) + log

    def plain_text(self) -> str:
        """The mail's text/plain part: the same facts and links, no markup."""
        lines = [self.title, ""]
        lines += [
            f"{label}: {value}" if label != "Error" else f"{label}:\n{value}" for label, value in self.facts()
        ]
        lines += ["", *(f"{text}: {href}" for text, href in self.links())]
        return "\n".join(lines).strip() + "\n"

    def pagerduty_details(self) -> dict[str, str]:
        details = {label.lower().replace(" ", "_"): value for label, value in self.facts()}
        details.update(
            {"log_url": self.log_url, "run_url": self.run_url, "airbyte_job_url": self.airbyte_job_url}
        )
        return {key: value for key, value in details.items() if value}

    def pagerduty_links(self) -> list[dict[str, str]]:
        return [{"href": href, "text": text} for text, href in self.links()]

    @property
    def email_subject(self) -> str:
        tag = "RECOVERED" if self.event == "recovered" else "ALERT"
        return f"[{tag}] {self.title}"

    def email_html(self) -> str:
        rows = "".join(
            f"<tr><th align='left' valign='top'>{html.escape(label)}</th>"
            f"<td>{'<pre>' + html.escape(value) + '</pre>' if label == 'Error' else html.escape(value)}</td></tr>"
            for label, value in self.facts()
        )
        links = " · ".join(
            f"<a href='{html.escape(href)}'>{html.escape(text)}</a>" for text, href in self.links()
        )
        return f"<h3>{html.escape(self.title)}</h3><table>{rows}</table><p>{links}</p>"


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- building an Alert from a callback context --------------------------------------------------


def error_summary(error: object, mask: bool = True) -> str | None:
    """The exception's type and message, shortened, with secrets masked."""
    if error is None or error == "":
        return None
    if isinstance(error, BaseException):
        text = f"{type(error).__name__}: {error}".strip()
    else:
        text = str(error).strip()
    text = _KEY_VALUE_SECRETS.sub(r"\g<key>***", _URL_CREDENTIALS.sub(r"\g<scheme>***:***@", text))
    if mask:
        # Masks every secret Airflow knows about in this process (connection passwords, sensitive variables).
        from airflow.sdk.log import redact

        text = str(redact(text))
    if len(text) <= ERROR_LIMIT:
        return text
    # Keep both ends: the head says what failed, the tail often says why (the last lines of a job log).
    head = ERROR_LIMIT // 3
    return f"{text[:head]}\n…\n{text[-(ERROR_LIMIT - head - 3) :]}"


def _iso(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _get(obj: object, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def base_url() -> str:
    from airflow.sdk.configuration import conf

    return (conf.get("api", "base_url", fallback="") or "http://localhost:8080").rstrip("/")


def airbyte_job(task: object, ti: object, error: object) -> tuple[str | None, str | None]:
    """The Airbyte job id and UI link of a failed Airbyte task (elt.airbyte sets them while it runs)."""
    job_id = _get(task, "job_id") or _get(task, "airbyte_job_id")
    job_url = _get(task, "job_url")
    if (
        job_url is None
        and ti is not None
        and hasattr(ti, "xcom_pull")
        and hasattr(task, "operator_extra_links")
    ):
        # In the dag-processor (a task killed from outside) the attributes are gone; the link XCom is not.
        try:
            job_url = ti.xcom_pull(task_ids=ti.task_id, key="_link_AirbyteJobLink") or None
        except Exception:
            job_url = None
    if job_id is None and error is not None:
        match = _AIRBYTE_JOB_IN_TEXT.search(str(error))
        job_id = match.group(1) if match else None
    if job_id is None and job_url:
        match = re.search(r"[?&]jobId=(\d+)", job_url)
        job_id = match.group(1) if match else None
    if job_id is None and job_url is None:
        return None, None
    return (str(job_id) if job_id is not None else None), job_url


def dbt_failures(task: object, error: object, ti: object = None) -> tuple[DbtFailure, ...]:
    """The failing dbt nodes of a Cosmos task, as dbt reported them, located via the compiled manifest.

    A task that ran dbt itself (per_model mode, or a watcher task's retry) fails with Cosmos's
    `CosmosDbtRunError("dbt invocation completed with errors: NODE: MESSAGE\\n...")`, built from
    dbt's run results. A watcher task that relayed the producer's `dbt build` fails with a generic
    text; dbt's result for each node is then in the producer's XCom.
    """
    return _failures_in_error(task, error) or _failures_reported_to_watcher(task, ti)


def _failures_in_error(task: object, error: object) -> tuple[DbtFailure, ...]:
    """From Cosmos's error text; the compiled SQL of the invocation is in `task.compiled_sql` ("-- target/...")."""
    text = str(error or "")
    if _DBT_ERRORS_PREFIX not in text:
        return ()
    body = text.split(_DBT_ERRORS_PREFIX, 1)[1].strip()
    compiled = str(_get(task, "compiled_sql") or "")
    compiled_paths = re.findall(r"^-- (target/\S+\.sql)$", compiled, flags=re.MULTILINE)
    nodes = _manifest_nodes(paths.DBT_MANIFEST)
    failures = []
    for line in body.splitlines():
        name, sep, message = line.partition(": ")
        name = name.strip()
        if not sep or not re.fullmatch(r"[\w.]+", name):
            continue  # a continuation of the previous message
        node = nodes.get(name, {})
        expected = node.get("compiled_path")
        # dbt shortens long test file names with a hash: match on the manifest's file name too.
        in_run = [
            p
            for p in compiled_paths
            if Path(p).stem == name or (expected and Path(p).name == Path(expected).name)
        ]
        failures.append(
            DbtFailure(
                name=name,
                message=error_summary(message) or "",
                resource_type=node.get("resource_type"),
                compiled_sql=in_run[0] if in_run else expected,
            )
        )
    return tuple(failures)


# The producer's retry clears its XCom and restores it from Cosmos's backup a few seconds later.
WATCHER_XCOM_ATTEMPTS, WATCHER_XCOM_PAUSE = 8, 2.0


def _failures_reported_to_watcher(task: object, ti: object) -> tuple[DbtFailure, ...]:
    """A Cosmos watcher task's failing nodes, from the per-node events the producer pushed to XCom.

    A test task watches its model's tests (the producer's `tests_per_model`), a model task its model.
    Each event holds the node's last dbt event: its `NodeFinished` status and message, or, once the
    build is over, the error summary dbt prints only for failed nodes (`RunResultError`: dbt's
    message, status "None"; Cosmos logs that as an error too).
    """
    from cosmos.operators._watcher.base import BaseConsumerSensor
    from cosmos.operators._watcher.state import get_dbt_event_xcom_key, is_dbt_node_status_failed

    if not isinstance(task, BaseConsumerSensor) or not hasattr(ti, "xcom_pull"):
        return ()
    try:
        watched_ids = [task.model_unique_id]
        if task.is_test_sensor:
            producer = task.dag.get_task(task.producer_task_id)
            watched_ids = list(producer.tests_per_model.get(task.model_unique_id, []))
        events: dict[str, Any] = {}
        for attempt in range(WATCHER_XCOM_ATTEMPTS if watched_ids else 0):
            if attempt:
                time.sleep(WATCHER_XCOM_PAUSE)
            events = {
                uid: ti.xcom_pull(task_ids=task.producer_task_id, key=get_dbt_event_xcom_key(uid))
                for uid in watched_ids
            }
            if any(events.values()):
                break
    except Exception:
        return ()  # a thin alert is better than none
    nodes = _manifest_nodes(paths.DBT_MANIFEST)
    failures = []
    for uid, event in events.items():
        status = event.get("status") if isinstance(event, Mapping) else "pass"
        if not (is_dbt_node_status_failed(status) or status in (None, "None")):
            continue
        node = nodes.get(uid, {})
        failures.append(
            DbtFailure(
                name=node.get("name") or uid,
                message=error_summary(event.get("msg") or event.get("status")) or "",
                resource_type=node.get("resource_type"),
                compiled_sql=node.get("compiled_path"),
            )
        )
    return tuple(failures)


@cache
def _manifest_nodes_cached(manifest: Path, mtime: float) -> dict[str, dict[str, str]]:
    data = json.loads(manifest.read_text())
    project = data.get("metadata", {}).get("project_name") or ""
    found = {}
    for node in data.get("nodes", {}).values():
        original = node.get("original_file_path", "")
        # dbt writes a yml-defined test to target/compiled/<package>/<yml path>/<test>.sql, a model to .../<sql path>.
        compiled = original if original.endswith(".sql") else f"{original}/{node.get('path', '')}"
        found[node["name"]] = found[node["unique_id"]] = {
            "name": node["name"],
            "resource_type": node.get("resource_type"),
            "compiled_path": f"target/compiled/{node.get('package_name') or project}/{compiled}",
        }
    return found


def _manifest_nodes(manifest: Path) -> dict[str, dict[str, str]]:
    try:
        return _manifest_nodes_cached(manifest, manifest.stat().st_mtime)
    except (OSError, ValueError):
        return {}


def from_task_context(event: Event, pipeline: str, context: Mapping[str, Any]) -> Alert:
    """An alert about one task instance (task callbacks: on the worker, or in the dag-processor)."""
    ti = context.get("ti") or context.get("task_instance")
    task = context.get("task") or _get(ti, "task")
    dag_run = context.get("dag_run")
    error = context.get("exception")
    job_id, job_url = airbyte_job(task, ti, error)
    max_tries = _get(ti, "max_tries")
    return Alert(
        event=event,
        pipeline=pipeline,
        dag_id=str(_get(ti, "dag_id") or _get(dag_run, "dag_id") or pipeline),
        run_id=_get(ti, "run_id") or context.get("run_id"),
        task_id=_get(ti, "task_id"),
        map_index=_get(ti, "map_index"),
        try_number=_get(ti, "try_number"),
        max_tries=max_tries + 1 if isinstance(max_tries, int) else None,
        interval_start=_iso(_get(dag_run, "data_interval_start") or context.get("data_interval_start")),
        interval_end=_iso(_get(dag_run, "data_interval_end") or context.get("data_interval_end")),
        error=error_summary(error),
        base_url=base_url(),
        airbyte_job_id=job_id,
        airbyte_job_url=job_url,
        dbt_failures=dbt_failures(task, error, ti),
    )


def from_run_context(event: Event, pipeline: str, context: Mapping[str, Any]) -> Alert:
    """An alert about a whole DAG run (DAG callbacks, in the dag-processor)."""
    dag = context.get("dag")
    dag_run = context.get("dag_run")
    reason = context.get("reason")
    return Alert(
        event=event,
        pipeline=pipeline,
        dag_id=str(_get(dag, "dag_id") or _get(dag_run, "dag_id") or pipeline),
        run_id=context.get("run_id") or _get(dag_run, "run_id"),
        interval_start=_iso(_get(dag_run, "data_interval_start")),
        interval_end=_iso(_get(dag_run, "data_interval_end")),
        reason={"timed_out": "the run exceeded its dagrun_timeout"}.get(reason, reason)
        if event != "recovered"
        else None,
        base_url=base_url(),
    )


def from_deadline_context(pipeline: str, context: Mapping[str, Any] | None) -> Alert:
    """An alert for a missed deadline (the triggerer passes the run as JSON, plus the deadline)."""
    context = context or {}
    dag_run = context.get("dag_run") or {}
    deadline = context.get("deadline") or {}
    state = dag_run.get("state")
    window = f"{dag_run.get('data_interval_start')} → {dag_run.get('data_interval_end')}"
    reason = f"window {window} not done by its deadline {_iso(deadline.get('deadline_time'))}"
    if state:
        reason += f" (run is {state})"
    return Alert(
        event="deadline_missed",
        pipeline=pipeline,
        dag_id=str(dag_run.get("dag_id") or pipeline),
        run_id=dag_run.get("dag_run_id") or dag_run.get("run_id"),
        interval_start=_iso(dag_run.get("data_interval_start")),
        interval_end=_iso(dag_run.get("data_interval_end")),
        reason=reason,
        base_url=base_url(),
        run_type=dag_run.get("run_type"),
    )
