"""A small client for Airflow 3's REST API (/api/v2), used by `make demo` and the tests."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, date, datetime, timedelta
from typing import Any

TERMINAL = {"success", "failed"}


def logical_day(value: str) -> datetime:
    """A day (YYYY-MM-DD) as the logical date of that day's run: 00:00 UTC."""
    return datetime.combine(date.fromisoformat(value), datetime.min.time(), tzinfo=UTC)


class APIError(RuntimeError):
    """An HTTP error answer of the REST API; `status` is its HTTP status code."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class RunExists(APIError):
    """A run was triggered for a logical date the DAG already has a run at; `run` is that run."""

    def __init__(self, dag_id: str, logical_date: datetime, run: dict[str, Any]) -> None:
        super().__init__(
            f"{dag_id} already has a run at logical date {logical_date.isoformat()}: "
            f"{run['dag_run_id']} ({run['state']}). Airflow keeps one run per DAG and logical date "
            "(HTTP 409): clear that run to run the date again, or pick another date.",
            409,
        )
        self.run = run


class AirflowClient:
    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.password = password
        self._token: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str]) -> AirflowClient:
        return cls(env["AIRFLOW_API_URL"], env["AIRFLOW_ADMIN_USER"], env["AIRFLOW_ADMIN_PASSWORD"])

    def token(self) -> str:
        if self._token is None:
            body = self._request(
                "POST", "/auth/token", {"username": self.username, "password": self.password}, auth=False
            )
            self._token = body["access_token"]
        return self._token

    def _request(self, method: str, path: str, payload: Any = None, auth: bool = True) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", f"Bearer {self.token()}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")
            raise APIError(f"{method} {path} -> HTTP {err.code}: {detail}", err.code) from None
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def post(self, path: str, payload: Any) -> Any:
        return self._request("POST", path, payload)

    def patch(self, path: str, payload: Any) -> Any:
        return self._request("PATCH", path, payload)

    def delete(self, path: str) -> Any:
        return self._request("DELETE", path)

    def import_errors(self) -> list[dict[str, Any]]:
        return self.get("/api/v2/importErrors")["import_errors"]

    def wait_for_dags(self, dag_ids: list[str], timeout: float = 180) -> None:
        """Wait until the dag-processor has parsed every DAG (or fail naming import errors)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            known = {d["dag_id"] for d in self.get("/api/v2/dags?limit=100")["dags"]}
            if set(dag_ids) <= known:
                return
            time.sleep(2)
        errors = "; ".join(f"{e['filename']}: {e['stack_trace'][-300:]}" for e in self.import_errors())
        raise RuntimeError(
            f"DAGs {sorted(set(dag_ids) - known)} not parsed in {timeout}s. Import errors: {errors}"
        )

    def unpause(self, dag_id: str) -> None:
        self.patch(f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, logical_date: datetime | None = None, conf: dict | None = None) -> str:
        if logical_date:
            # Airflow creates no task instances before a DAG's start_date: such a run "succeeds" at
            # once, with nothing loaded. Say so instead.
            start = self.get(f"/api/v2/dags/{dag_id}/details").get("start_date")
            if start and logical_date < datetime.fromisoformat(start):
                raise ValueError(
                    f"{dag_id} starts at {start}: a run at {logical_date.isoformat()} would run no tasks "
                    "(Airflow creates none before a DAG's start_date). Pick a logical date on or after it."
                )
        body: dict[str, Any] = {"logical_date": logical_date.isoformat() if logical_date else None}
        if conf:
            body["conf"] = conf
        try:
            return self.post(f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"]
        except APIError as err:
            # Airflow 3.3 answers a second run at a logical date with a bare "Unique constraint
            # violation": name the run that holds the date.
            if err.status != 409 or logical_date is None or not (held := self.run_at(dag_id, logical_date)):
                raise
            raise RunExists(dag_id, logical_date, held) from None

    def run_at(self, dag_id: str, logical_date: datetime) -> dict[str, Any] | None:
        """The DAG's run at exactly this logical date, if it has one."""
        at = urllib.parse.quote(logical_date.isoformat())
        path = f"/api/v2/dags/{dag_id}/dagRuns?logical_date_gte={at}&logical_date_lte={at}&limit=1"
        return next(iter(self.get(path)["dag_runs"]), None)

    def days_without_runs(self, dag_id: str, first: datetime, count: int) -> list[datetime]:
        """The first `count` days from `first` (at its time of day) the DAG has no run at."""
        at = urllib.parse.quote(first.isoformat())
        path = f"/api/v2/dags/{dag_id}/dagRuns?logical_date_gte={at}&order_by=logical_date&limit=1000"
        held = {datetime.fromisoformat(r["logical_date"]) for r in self.get(path)["dag_runs"]}
        days, day = [], first
        while len(days) < count:
            if day not in held:
                days.append(day)
            day += timedelta(days=1)
        return days

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{urllib.request.quote(run_id, safe='')}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        quoted = urllib.request.quote(run_id, safe="")
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances?limit=500")["task_instances"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 900, on_poll=None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run(dag_id, run_id)
            if on_poll:
                on_poll(run)
            if run["state"] in TERMINAL:
                return run
            time.sleep(3)
        raise TimeoutError(f"{dag_id} run {run_id} did not finish within {timeout}s")
