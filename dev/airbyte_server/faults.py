"""Injected faults, set through `/local/faults` (never through the Airbyte API itself).

All faults live in memory and are cleared by `DELETE /local/faults` (or a restart), so a test
that resets in its teardown cannot leak a fault into the next one.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class HttpFault:
    """The next `remaining` matching API requests answer `status` (kind=error), hang before being
    served (kind=hang), or are served and then hang before the reply (kind=drop-reply: the request
    took effect but the client times out, as when a reply is lost)."""

    kind: str
    remaining: int
    status: int = 503
    seconds: float = 0.0
    method: str | None = None
    path_prefix: str | None = None

    def matches(self, method: str, api_path: str) -> bool:
        if self.method and self.method.upper() != method.upper():
            return False
        return not self.path_prefix or api_path.startswith(self.path_prefix)


@dataclass
class JobHold:
    """Jobs of a connection created while the hold is active stay `pending` until it ends."""

    until: float | None  # monotonic deadline; None = until released
    released: threading.Event = field(default_factory=threading.Event)

    def active(self) -> bool:
        return not self.released.is_set() and (self.until is None or time.monotonic() < self.until)


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._http: list[HttpFault] = []
        self._job_failures: dict[str, deque[str]] = defaultdict(deque)
        self._holds: dict[str, JobHold] = {}

    # -- set ------------------------------------------------------------------------------------

    def add_http(self, fault: HttpFault) -> None:
        with self._lock:
            self._http.append(fault)

    def fail_next_jobs(self, connection_id: str, message: str, count: int = 1) -> None:
        with self._lock:
            self._job_failures[connection_id].extend([message] * count)

    def hold_jobs(self, connection_id: str, seconds: float | None) -> None:
        with self._lock:
            previous = self._holds.get(connection_id)
            if previous:
                previous.released.set()
            self._holds[connection_id] = JobHold(
                until=None if seconds is None else time.monotonic() + seconds
            )

    def release_jobs(self, connection_id: str) -> bool:
        with self._lock:
            hold = self._holds.pop(connection_id, None)
        if hold:
            hold.released.set()
        return hold is not None

    def clear(self) -> None:
        with self._lock:
            holds = list(self._holds.values())
            self._http.clear()
            self._job_failures.clear()
            self._holds.clear()
        for hold in holds:
            hold.released.set()

    # -- consume --------------------------------------------------------------------------------

    def take_http(self, method: str, api_path: str) -> HttpFault | None:
        """The first HTTP fault matching this request, with one use consumed."""
        with self._lock:
            for fault in self._http:
                if fault.remaining > 0 and fault.matches(method, api_path):
                    fault.remaining -= 1
                    self._http = [f for f in self._http if f.remaining > 0]
                    return fault
        return None

    def take_job_failure(self, connection_id: str) -> str | None:
        with self._lock:
            queue = self._job_failures.get(connection_id)
            return queue.popleft() if queue else None

    def hold_for(self, connection_id: str) -> JobHold | None:
        with self._lock:
            hold = self._holds.get(connection_id)
            return hold if hold and hold.active() else None

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "http": [asdict(f) for f in self._http],
                "jobFailures": {c: list(q) for c, q in self._job_failures.items() if q},
                "jobHolds": {
                    c: {"secondsLeft": None if h.until is None else max(0.0, h.until - time.monotonic())}
                    for c, h in self._holds.items()
                    if h.active()
                },
            }
