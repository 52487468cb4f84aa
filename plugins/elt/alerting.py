"""On-call alerting: each pipeline's alert routes (Slack webhook, PagerDuty Events v2, email) as Airflow callbacks.

When it alerts, and where the callback runs in Airflow 3:
- a task's *final* failure: task `on_failure_callback` (on the worker; in the dag-processor when the
  task was killed from outside). Pages every route.
- a retry: task `on_retry_callback`, only for Slack/email routes with `notify_retries` (never pages).
- a failed run: DAG `on_failure_callback` (dag-processor). When the run failed *because a task failed*,
  that task already paged, so only other causes (dagrun_timeout, deadlock) page here.
- a run whose window is not done by its deadline (interval end + `deadline`) and that has not
  failed already: a Deadline Alert (`deadline=`) whose AsyncCallback runs in the triggerer. Not for
  backfill runs, nor manual runs triggered after their deadline (re-runs of old windows).
- the next successful run: DAG `on_success_callback` resolves the PagerDuty incident and posts the
  recovery, if an incident is open.

One PagerDuty incident per pipeline and data window: every event uses the dedup key
`elt/<pipeline>/<window start, UTC, %Y%m%dT%H%M%SZ>`; only a success of the same window resolves it.
The open incident is remembered in the Airflow Variable `elt_alerting_incident__<pipeline>__<window>`
(so a normal success stays quiet). `elt_alerting_silence` (JSON {"<pipeline>": "<ISO time>" | true}) silences
a pipeline's failure alerts.

Delivery goes through the providers' notifiers (`notify`, called directly so that an error text is
never rendered as a Jinja template). An alert that cannot be delivered is logged with the reason;
no callback here ever raises, so an alert never hides or changes the failure it reports.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from airflow.providers.pagerduty.notifications.pagerduty import PagerdutyNotifier
from airflow.providers.smtp.hooks.smtp import SmtpHook
from airflow.providers.smtp.notifications.smtp import SmtpNotifier

from elt import alert_content
from elt.alert_content import Alert
from elt.connections import ROUTE_CONN_TYPES

if TYPE_CHECKING:
    from elt.spec import AirbyteConnection, PipelineSpec

log = logging.getLogger(__name__)

SILENCE_VARIABLE = "elt_alerting_silence"
INCIDENT_VARIABLE_PREFIX = "elt_alerting_incident__"
DELIVERY_TIMEOUT = 15  # seconds per receiver: a hung receiver must not hold a worker slot for long
PAGING_EVENTS = frozenset({"task_failed", "run_failed", "deadline_missed"})


@dataclass(frozen=True)
class Route:
    kind: str  # slack | pagerduty | email
    conn_id: str
    severity: str = "error"
    notify_retries: bool = False
    to: tuple[str, ...] = ()


def routes_of(spec: PipelineSpec) -> tuple[Route, ...]:
    routes = []
    for kind in ROUTE_CONN_TYPES:
        route = getattr(spec.alerts, kind)
        if route is not None:
            routes.append(
                Route(
                    kind, route.conn_id, route.severity, route.notify_retries, tuple(getattr(route, "to", ()))
                )
            )
    return tuple(routes)


def dedup_key(pipeline: str, window: str) -> str:
    """One PagerDuty incident per pipeline and data window, whatever task, try or run raised it.

    Per window, so that the success of another window (a backfill, the next day) does not resolve
    an incident whose window was never re-run.
    """
    return f"elt/{pipeline}/{window}"


# -- what the DAG factory asks for ----------------------------------------------------------------


def task_callbacks(spec: PipelineSpec) -> dict[str, Any]:
    """default_args for every task of the pipeline: page on final failure, optionally post retries."""
    routes = routes_of(spec)
    if not routes:
        return {}
    callbacks: dict[str, Any] = {"on_failure_callback": [TaskFailed(spec.name, routes)]}
    retry_routes = tuple(r for r in routes if r.notify_retries and r.kind != "pagerduty")
    if retry_routes:
        callbacks["on_retry_callback"] = [TaskRetry(spec.name, retry_routes)]
    return callbacks


def sync_volume_callbacks(spec: PipelineSpec, connection: AirbyteConnection) -> dict[str, Any]:
    """Arguments of a connection's wait task: warn when its sync succeeded with 0 rows (`expect_rows`)."""
    routes = tuple(
        replace(r, severity="warning") for r in routes_of(spec) if r.kind != "pagerduty"
    )  # a warning, not a page
    if not (connection.expect_rows and routes):
        return {}
    return {"on_success_callback": [SyncLoadedNoRows(spec.name, routes, connection.name, str(connection.id))]}


def dag_arguments(spec: PipelineSpec) -> dict[str, Any]:
    """DAG constructor arguments: run failure/success callbacks and the deadline alert."""
    routes = routes_of(spec)
    if not routes:
        return {}
    arguments: dict[str, Any] = {
        "on_failure_callback": [RunFailed(spec.name, routes)],
        "on_success_callback": [RunSucceeded(spec.name, routes)],
    }
    if spec.deadline is not None and spec.schedule is not None:
        from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference

        # "The window's data is ready by its end + deadline": counted from the logical date (the
        # interval start) plus one interval. Not DAGRUN_QUEUED_AT: clearing a run of such a DAG answers
        # 500 on Airflow 3.3.2 (apache/airflow#70368), and a clear should not move the deadline anyway.
        arguments["deadline"] = DeadlineAlert(
            reference=DeadlineReference.DAGRUN_LOGICAL_DATE,
            interval=interval_length(spec.schedule, spec.start_date) + spec.deadline,
            # Callback kwargs are stored as JSON in the metadata DB: scalars only.
            callback=AsyncCallback(
                deadline_missed,
                kwargs={"pipeline": spec.name, "routes": json.dumps([asdict(r) for r in routes])},
            ),
            name=f"{spec.name} deadline",
        )
    return arguments


def interval_length(schedule: str, start: date) -> timedelta:
    """The length of one data interval of a cron schedule (its first one after `start`)."""
    from croniter import croniter

    first = croniter(schedule, datetime.combine(start, time.min, tzinfo=UTC)).get_next(datetime)
    return croniter(schedule, first).get_next(datetime) - first


# -- callbacks -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Callback:
    pipeline: str
    routes: tuple[Route, ...]

    def __call__(self, context: Mapping[str, Any]) -> None:
        try:
            self.handle(context)
        except Exception:
            # Airflow would log it too; saying so here makes clear the task/run outcome is unaffected.
            log.exception(
                "On-call alerting for pipeline %s failed; the run's state is unaffected", self.pipeline
            )

    def handle(self, context: Mapping[str, Any]) -> None:
        raise NotImplementedError


class TaskFailed(_Callback):
    """A task failed for good (no retries left, or not retryable): page every route."""

    def handle(self, context: Mapping[str, Any]) -> None:
        page(alert_content.from_task_context("task_failed", self.pipeline, context), self.routes, context)


class TaskRetry(_Callback):
    """A task failed and will retry: a low-severity line for the routes that asked for it; never pages."""

    def handle(self, context: Mapping[str, Any]) -> None:
        if _is_dbt_watcher_task(context.get("task")):
            # Watcher mode: a failed try relays the producer's `dbt build` result (a relationships test
            # counts for both its models, so it can blame a model a re-run then passes); the retry re-runs
            # the node once the producer is done (before, it relays again). Only the final failure pages.
            log.info("No retry line for dbt watcher task %s", _get_task_id(context))
            return
        alert = alert_content.from_task_context("task_retry", self.pipeline, context)
        if silenced_until(self.pipeline):
            return
        deliver(alert, self.routes, context)


def _is_dbt_watcher_task(task: object) -> bool:
    from cosmos.operators.watcher import DbtConsumerWatcherSensor, DbtProducerWatcherOperator

    return isinstance(task, DbtConsumerWatcherSensor | DbtProducerWatcherOperator)


def _get_task_id(context: Mapping[str, Any]) -> str | None:
    return getattr(context.get("ti") or context.get("task"), "task_id", None)


@dataclass(frozen=True)
class SyncLoadedNoRows(_Callback):
    """The wait task succeeded: warn if its Airbyte job loaded nothing (its return value {job_id, rows_synced})."""

    connection: str = ""
    connection_id: str = ""

    def handle(self, context: Mapping[str, Any]) -> None:
        ti = context.get("ti") or context.get("task_instance")
        result = ti.xcom_pull(task_ids=ti.task_id) if ti is not None else None
        if not isinstance(result, Mapping) or result.get("rows_synced") != 0:
            return  # rows arrived (or the count is unknown: no warning on a guess)
        alert = alert_content.from_task_context("no_rows", self.pipeline, context)
        alert = replace(
            alert,
            airbyte_job_id=str(result.get("job_id")),
            reason=f"Airbyte job {result.get('job_id')} of connection {self.connection} ({self.connection_id}) "
            "succeeded but loaded 0 rows; the spec expects rows (set expect_rows: false if that is normal)",
        )
        if silenced_until(self.pipeline):
            return
        deliver(alert, self.routes, context)


class RunFailed(_Callback):
    """The run failed. A failed task has paged already; other causes (timeout, deadlock) page here."""

    def handle(self, context: Mapping[str, Any]) -> None:
        if context.get("reason") == "task_failure":
            log.info("Run of %s failed because a task failed; that task's alert covered it", self.pipeline)
            return
        page(alert_content.from_run_context("run_failed", self.pipeline, context), self.routes, context)


class RunSucceeded(_Callback):
    """A run succeeded: resolve the pipeline's incident and say so, if one is open."""

    def handle(self, context: Mapping[str, Any]) -> None:
        recover(alert_content.from_run_context("recovered", self.pipeline, context), self.routes, context)


async def deadline_missed(pipeline: str, routes: str, context: Mapping[str, Any] | None = None) -> str:
    """Deadline Alert callback (triggerer): page for a run that is not done by its deadline.

    Returns a short text: Airflow stores a callback's output in a text column (a dict there
    would take the triggerer down).
    """
    parsed = tuple(Route(**{**r, "to": tuple(r.get("to", ()))}) for r in json.loads(routes))
    alert = alert_content.from_deadline_context(pipeline, context)
    state = ((context or {}).get("dag_run") or {}).get("state")
    if state == "failed":
        # Its failure paged already (task or run callback); a second page for the same window adds nothing.
        log.info("Deadline of %s run %s passed after the run failed: no page", pipeline, alert.run_id)
        return "not sent: the run had already failed"
    if alert.run_type == "backfill":
        # A backfill of old dates is past its windows' deadlines from the start; its failures still page.
        log.info("Deadline of %s backfill run %s: no page", pipeline, alert.run_id)
        return "not sent: backfill run"
    if alert.run_type == "manual" and triggered_after_deadline(context):
        # Someone re-ran an old window (trigger form, CLI, API): like a backfill, it could never meet
        # that deadline, and its failures still page. A late *scheduled* run (after an outage) pages.
        log.info(
            "Deadline of %s manual run %s had passed when it was triggered: no page", pipeline, alert.run_id
        )
        return "not sent: manual run triggered after its deadline"
    # The notifiers and connection lookups are synchronous; keep the triggerer's event loop free.
    results = await asyncio.to_thread(page, alert, parsed, dict(context or {}))
    return "; ".join(f"{route}: {error or 'sent'}" for route, error in results.items()) or "silenced"


def triggered_after_deadline(context: Mapping[str, Any] | None) -> bool:
    """Whether the run was created (its `run_after`: the trigger time of a manual run) at or after
    its deadline. False when either time is missing or unreadable (then the deadline pages)."""
    context = context or {}
    times = (
        (context.get("dag_run") or {}).get("run_after"),
        (context.get("deadline") or {}).get("deadline_time"),
    )
    try:
        created, deadline = (
            value if isinstance(value, datetime) else datetime.fromisoformat(str(value)) for value in times
        )
    except ValueError:  # None or not a time
        return False
    return created.replace(tzinfo=created.tzinfo or UTC) >= deadline.replace(tzinfo=deadline.tzinfo or UTC)


# -- paging, recovery, delivery --------------------------------------------------------------------


def page(alert: Alert, routes: Sequence[Route], context: Mapping[str, Any]) -> dict[str, str | None]:
    until = silenced_until(alert.pipeline)
    if until:
        log.warning(
            "Alert %r for %s not sent: pipeline silenced until %s (Variable %s)",
            alert.title,
            alert.pipeline,
            until.isoformat(),
            SILENCE_VARIABLE,
        )
        return {}
    results = deliver(alert, routes, context)
    if any(error is None for error in results.values()):
        incidents.opened(alert)
    return results


def recover(alert: Alert, routes: Sequence[Route], context: Mapping[str, Any]) -> dict[str, str | None]:
    """Resolve the incident of this run's window (not other windows'), if it is open."""
    state = incidents.is_open(alert)
    if state is False:
        return {}
    # Unknown state (the Variable could not be read): resolve anyway, PagerDuty ignores unknown keys,
    # but do not post a recovery nobody was told about.
    targets = routes if state else [r for r in routes if r.kind == "pagerduty"]
    results = deliver(alert, targets, context)
    incidents.closed(alert)
    return results


def deliver(alert: Alert, routes: Sequence[Route], context: Mapping[str, Any]) -> dict[str, str | None]:
    """Send `alert` through each route; {route kind: None if delivered, else why not}. Never raises."""
    results: dict[str, str | None] = {}
    for route in routes:
        try:
            check_connection(route)
            notifier(alert, route).notify(dict(context))
        except Exception as err:
            results[route.kind] = reason = f"{type(err).__name__}: {alert_content.error_summary(err) or err}"
            log.error(
                "Alert %r for pipeline %s NOT delivered via %s (connection %r): %s",
                alert.title,
                alert.pipeline,
                route.kind,
                route.conn_id,
                reason,
            )
        else:
            results[route.kind] = None
            log.info("Alert %r sent via %s (connection %r)", alert.title, route.kind, route.conn_id)
    return results


def check_connection(route: Route) -> None:
    """At alert time every connection can be read: refuse one whose type cannot carry the route."""
    from airflow.sdk import BaseHook

    conn_type = BaseHook.get_connection(route.conn_id).conn_type
    if conn_type not in ROUTE_CONN_TYPES[route.kind]:
        raise ValueError(
            f"connection {route.conn_id!r} has type {conn_type!r}; a {route.kind} route needs "
            f"{' or '.join(map(repr, ROUTE_CONN_TYPES[route.kind]))}"
        )


def notifier(alert: Alert, route: Route) -> Any:
    """The provider's notifier for one route, filled with the alert's content."""
    if route.kind == "slack":
        from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

        text = alert.slack_line() if alert.event == "task_retry" else alert.slack_text(route.severity)
        blocks = None if alert.event == "task_retry" else alert.slack_blocks(route.severity)
        return SlackWebhookNotifier(
            slack_webhook_conn_id=route.conn_id, text=text, blocks=blocks, timeout=DELIVERY_TIMEOUT
        )
    if route.kind == "pagerduty":
        return PagerdutyEventsNotifier(
            pagerduty_events_conn_id=route.conn_id,
            summary=alert.summary,
            severity=route.severity,
            source=urlsplit(alert.base_url).netloc or "airflow",
            action="resolve" if alert.event == "recovered" else "trigger",
            dedup_key=dedup_key(alert.pipeline, alert.window),
            custom_details=alert.pagerduty_details(),
            group=alert.pipeline,
            component=alert.task_id or "dag_run",
            class_type=alert.event,
            links=alert.pagerduty_links(),
        )
    if route.kind == "email":
        return SmtpAlternativeNotifier(
            text_content=alert.plain_text(),
            to=list(route.to),
            subject=alert.email_subject,
            html_content=alert.email_html(),
            smtp_conn_id=route.conn_id,
        )
    raise ValueError(f"unknown alert route {route.kind!r}")


class _AlternativeSmtpHook(SmtpHook):
    """The provider's SMTP hook, whose mail carries a text/plain part beside the HTML (it sends HTML only)."""

    def __init__(self, *args: Any, text_content: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.text_content = text_content

    def _build_mime_message(self, *args: Any, **kwargs: Any) -> tuple[MIMEMultipart, list[str]]:
        msg, recipients = super()._build_mime_message(*args, **kwargs)
        parts = msg.get_payload()
        html_part = next(p for p in parts if p.get_content_type() == "text/html")
        alternative = MIMEMultipart("alternative")  # clients show the last part they can render
        alternative.attach(MIMEText(self.text_content, "plain", html_part.get_content_charset() or "utf-8"))
        alternative.attach(html_part)
        msg.set_payload([alternative if p is html_part else p for p in parts])
        return msg, recipients


class SmtpAlternativeNotifier(SmtpNotifier):
    """The provider's SMTP notifier, sending a text part as well as the HTML."""

    def __init__(self, *, text_content: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.text_content = text_content

    @property
    def hook(self) -> SmtpHook:
        return _AlternativeSmtpHook(
            smtp_conn_id=self.smtp_conn_id, auth_type=self.auth_type, text_content=self.text_content
        )


class PagerdutyEventsNotifier(PagerdutyNotifier):
    """The provider's PagerDuty notifier, sent through its async Events API hook.

    The provider's sync path uses a client fixed to https://events.pagerduty.com; the async hook
    takes a base URL, so the connection's host can name the EU service region
    (https://events.eu.pagerduty.com), a proxy, or the local receiver. No host: PagerDuty US.
    """

    def notify(self, context: Any) -> None:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(self.pagerduty_events_conn_id)
        hook = self.hook_async
        hook.integration_key = conn.password or None  # read once, synchronously, from the connection
        if conn.host:
            hook.base_url = (conn.host if "://" in conn.host else f"https://{conn.host}").rstrip("/")
        _run_sync(self.async_notify(context))


def _run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine from synchronous callback code, with the delivery timeout."""
    bounded = asyncio.wait_for(coro, DELIVERY_TIMEOUT * 2)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(bounded)
    with ThreadPoolExecutor(max_workers=1) as pool:  # inside a running loop: give it its own
        return pool.submit(asyncio.run, bounded).result()


# -- silence and open incidents (Airflow Variables, read at alert time) ----------------------------


def silenced_until(pipeline: str, now: datetime | None = None) -> datetime | None:
    """When the pipeline's failure alerts are silenced until, per the Variable `elt_alerting_silence`."""
    from airflow.sdk import Variable

    try:
        raw = Variable.get(SILENCE_VARIABLE, default=None)
        value = json.loads(raw).get(pipeline) if raw else None
        if value is None or value is False:
            return None
        until = datetime.max.replace(tzinfo=UTC) if value is True else datetime.fromisoformat(str(value))
    except Exception as err:
        log.warning("Ignoring Variable %s (%s); alerts are not silenced", SILENCE_VARIABLE, err)
        return None
    until = until if until.tzinfo else until.replace(tzinfo=UTC)
    return until if until > (now or datetime.now(UTC)) else None


class Incidents:
    """Open PagerDuty incidents per pipeline and window, as Airflow Variables (visible and deletable in the UI)."""

    def key(self, alert: Alert) -> str:
        return f"{INCIDENT_VARIABLE_PREFIX}{alert.pipeline}__{alert.window}"

    def opened(self, alert: Alert) -> None:
        from airflow.sdk import Variable

        marker = {
            "dedup_key": dedup_key(alert.pipeline, alert.window),
            "opened_at": datetime.now(UTC).isoformat(),
            "run_id": alert.run_id,
            "task_id": alert.task_id,
            "event": alert.event,
            "data_interval": [alert.interval_start, alert.interval_end],
        }
        try:
            if self.is_open(alert):
                return  # keep the first cause: that is when the incident started
            Variable.set(self.key(alert), json.dumps(marker), description="open on-call incident")
        except Exception as err:
            log.warning("Could not record the open incident of %s: %s", alert.pipeline, err)

    def is_open(self, alert: Alert) -> bool | None:
        """True/False, or None when it cannot be known."""
        from airflow.sdk import Variable

        try:
            return Variable.get(self.key(alert), default=None) is not None
        except Exception as err:
            log.warning("Could not read the incident state of %s: %s", alert.pipeline, err)
            return None

    def closed(self, alert: Alert) -> None:
        from airflow.sdk import Variable

        try:
            Variable.delete(self.key(alert))
        except Exception as err:
            log.warning("Could not clear the incident state of %s: %s", alert.pipeline, err)


incidents = Incidents()
