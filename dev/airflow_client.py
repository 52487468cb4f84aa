"""A small client for Airflow 3's REST API (/api/v2), used by `make demo` and the tests."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any

TERMINAL = {"success", "failed"}


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
            raise RuntimeError(f"{method} {path} -> HTTP {err.code}: {detail}") from None
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
        return self.post(f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"]

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
