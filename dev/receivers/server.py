"""The receivers: one HTTP server (Slack webhooks, PagerDuty Events v2, the recording API) and one SMTP server.

HTTP endpoints:
- ``POST /slack/<anything>``   a Slack incoming webhook: answers ``200 ok`` like Slack does,
  ``400 invalid_payload`` without ``text`` or ``blocks``.
- ``POST /v2/enqueue``         the PagerDuty Events API v2: answers ``202 {"status": "success",
  "message": "Event processed", "dedup_key": ...}``, or ``400 {"status": "invalid event", ...}``.
- ``GET /recorded``            ``{"slack": [...], "pagerduty": [...], "email": [...]}``, oldest first
  (``?kind=slack`` for one list); ``DELETE /recorded`` forgets everything.
- ``POST /faults``             ``{"slack": 503, "pagerduty": 503, "count": 1}``: the next ``count``
  posts to those receivers answer that status (to test an alert that cannot be delivered);
  ``DELETE /faults`` clears them.
- ``GET /health``              ``200 {"status": "ok"}``.
"""

from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
import uuid
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from aiosmtpd.controller import Controller

KINDS = ("slack", "pagerduty", "email")
PD_ACTIONS = frozenset({"trigger", "acknowledge", "resolve"})
PD_SEVERITIES = frozenset({"critical", "error", "warning", "info"})


class Recorder:
    """What the receivers got, plus the faults they should answer with. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
        self._faults: dict[str, int] = {}
        self._fault_count = 0

    def record(self, kind: str, item: dict[str, Any]) -> None:
        with self._lock:
            self._items[kind].append({"received_at": datetime.now(UTC).isoformat(), **item})

    def snapshot(self, kind: str | None = None) -> Any:
        with self._lock:
            if kind:
                return list(self._items.get(kind, []))
            return {k: list(v) for k, v in self._items.items()}

    def clear(self) -> None:
        with self._lock:
            for items in self._items.values():
                items.clear()

    def set_faults(self, statuses: dict[str, int], count: int) -> None:
        with self._lock:
            self._faults, self._fault_count = dict(statuses), count

    def take_fault(self, kind: str) -> int | None:
        with self._lock:
            if self._fault_count <= 0 or kind not in self._faults:
                return None
            self._fault_count -= 1
            return self._faults[kind]


def pagerduty_errors(event: Any) -> list[str]:
    """The checks the Events API v2 makes before it accepts an event (the ones our alerts could get wrong)."""
    if not isinstance(event, dict):
        return ["Event object must be a JSON object"]
    errors = []
    if not event.get("routing_key"):
        errors.append("'routing_key' is missing or blank")
    action = event.get("event_action")
    if action not in PD_ACTIONS:
        errors.append(f"'event_action' must be one of {sorted(PD_ACTIONS)}")
    if action in ("acknowledge", "resolve") and not event.get("dedup_key"):
        errors.append("'dedup_key' is required to acknowledge or resolve")
    if action == "trigger":
        payload = event.get("payload") or {}
        for field in ("summary", "source", "severity"):
            if not payload.get(field):
                errors.append(f"'payload.{field}' is missing or blank")
        if payload.get("severity") and payload["severity"] not in PD_SEVERITIES:
            errors.append(f"'payload.severity' must be one of {sorted(PD_SEVERITIES)}")
        if len(str(payload.get("summary", ""))) > 1024:
            errors.append("'payload.summary' is longer than 1024 characters")
    return errors


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read /recorded instead
        pass

    def _reply(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _json_body(self) -> Any:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        return json.loads(raw) if raw else None

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/health":
            self._reply(200, {"status": "ok"})
        elif url.path == "/recorded":
            kind = parse_qs(url.query).get("kind", [None])[0]
            self._reply(200, self.server.recorder.snapshot(kind))
        else:
            self._reply(404, {"error": f"no route GET {url.path}"})

    def do_DELETE(self) -> None:
        path = urlsplit(self.path).path
        if path == "/recorded":
            self.server.recorder.clear()
            self._reply(200, self.server.recorder.snapshot())
        elif path == "/faults":
            self.server.recorder.set_faults({}, 0)
            self._reply(200, {"faults": {}})
        else:
            self._reply(404, {"error": f"no route DELETE {path}"})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        try:
            body = self._json_body()
        except ValueError:
            body = ...
        if path.startswith("/slack/"):
            self._slack(path, body)
        elif path == "/v2/enqueue":
            self._pagerduty(path, body)
        elif path == "/faults" and isinstance(body, dict):
            statuses = {k: int(v) for k, v in body.items() if k in KINDS}
            self.server.recorder.set_faults(statuses, int(body.get("count", 1)))
            self._reply(200, {"faults": statuses, "count": int(body.get("count", 1))})
        else:
            self._reply(404, {"error": f"no route POST {path}"})

    def _slack(self, path: str, body: Any) -> None:
        fault = self.server.recorder.take_fault("slack")
        if fault:
            self._reply(fault, HTTPStatus(fault).phrase.lower().replace(" ", "_"), "text/plain")
        elif not isinstance(body, dict) or not (body.get("text") or body.get("blocks")):
            self._reply(400, "invalid_payload", "text/plain")
        else:
            self.server.recorder.record("slack", {"path": path, "body": body})
            self._reply(200, "ok", "text/plain")

    def _pagerduty(self, path: str, body: Any) -> None:
        fault = self.server.recorder.take_fault("pagerduty")
        if fault:
            self._reply(fault, {"status": "error", "message": HTTPStatus(fault).phrase})
            return
        errors = pagerduty_errors(body) if body is not ... else ["body is not JSON"]
        if errors:
            self._reply(
                400, {"status": "invalid event", "message": "Event object is invalid", "errors": errors}
            )
            return
        dedup_key = body.get("dedup_key") or uuid.uuid4().hex
        self.server.recorder.record("pagerduty", {"path": path, "body": body, "dedup_key": dedup_key})
        self._reply(202, {"status": "success", "message": "Event processed", "dedup_key": dedup_key})


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], recorder: Recorder) -> None:
        super().__init__(address, _Handler)
        self.recorder = recorder


class _MailHandler:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(
            envelope.original_content or envelope.content, policy=email.policy.default
        )
        parts = {"text": "", "html": ""}
        for part in message.walk():
            key = {"text/plain": "text", "text/html": "html"}.get(part.get_content_type())
            if key and not part.is_attachment():
                parts[key] += part.get_content()
        self.recorder.record(
            "email",
            {
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "subject": str(message.get("Subject", "")),
                **parts,
            },
        )
        return "250 Message accepted for delivery"


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class Receivers:
    """Both servers, started and stopped together; port 0 picks a free port."""

    def __init__(self, host: str = "127.0.0.1", http_port: int = 8025, smtp_port: int = 8026) -> None:
        self.host = host
        self.recorder = Recorder()
        self._http = _HttpServer((host, http_port), self.recorder)
        self.http_port = self._http.server_address[1]
        self.smtp_port = smtp_port or _free_port(host)
        self._smtp = Controller(_MailHandler(self.recorder), hostname=host, port=self.smtp_port)
        self._thread = threading.Thread(target=self._http.serve_forever, name="receivers-http", daemon=True)
        self._stopped = False

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def start(self) -> Receivers:
        self._smtp.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._http.shutdown()
        self._http.server_close()
        self._smtp.stop()

    def __enter__(self) -> Receivers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def connections(
        self, slack_token: str = "T000/B000/local", routing_key: str = "local-routing-key"
    ) -> dict:
        """Airflow connections (JSON form) that point the three notifiers at these receivers."""
        return {
            "slack_alerts": {
                "conn_type": "slackwebhook",
                "host": f"{self.http_url}/slack",
                "password": slack_token,
            },
            "pagerduty_alerts": {
                "conn_type": "pagerduty_events",
                "host": self.http_url,
                "password": routing_key,
            },
            "smtp_alerts": {
                "conn_type": "smtp",
                "host": self.host,
                "port": self.smtp_port,
                "extra": {
                    "from_email": "airflow@localhost",
                    "disable_ssl": True,
                    "disable_tls": True,
                    "timeout": 10,
                },
            },
        }
