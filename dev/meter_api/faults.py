"""Test hooks: scripted failures and a request log for the measurement endpoint.

Thread-safe because uvicorn runs the synchronous endpoints in a thread pool.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

LOG_SIZE = 1000
FAULT_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Fault:
    status: int
    retry_after: int | None = None  # seconds, sent as the Retry-After header


class Faults:
    """The next ``count`` measurement requests answer ``fault.status`` instead of data."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fault: Fault | None = None
        self._remaining = 0

    def arm(self, fault: Fault, count: int) -> None:
        if fault.status not in FAULT_STATUSES:
            raise ValueError(f"status must be one of {sorted(FAULT_STATUSES)}, got {fault.status}")
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        if fault.retry_after is not None and fault.retry_after < 0:
            raise ValueError(f"retry_after must be >= 0, got {fault.retry_after}")
        with self._lock:
            self._fault, self._remaining = fault, count

    def clear(self) -> None:
        with self._lock:
            self._fault, self._remaining = None, 0

    def take(self) -> Fault | None:
        """The fault this request should answer with, if any; consumes one."""
        with self._lock:
            if self._remaining == 0:
                return None
            self._remaining -= 1
            return self._fault

    def snapshot(self) -> dict:
        with self._lock:
            fault = asdict(self._fault) if self._fault and self._remaining else None
            return {"fault": fault, "remaining": self._remaining}


class RequestLog:
    """Counts measurement requests and keeps the last ``LOG_SIZE`` of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._total = 0
            self._by_status: dict[int, int] = {}
            self._recent: list[dict] = []

    def record(self, params: dict[str, str], status: int, rows: int) -> None:
        with self._lock:
            self._total += 1
            self._by_status[status] = self._by_status.get(status, 0) + 1
            self._recent.append({**params, "status": status, "rows": rows})
            del self._recent[:-LOG_SIZE]

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "measurement_requests": self._total,
                "by_status": {str(k): v for k, v in sorted(self._by_status.items())},
                "recent": list(self._recent),
            }
