"""GET from an Airbyte public API (the local stand-in or Airbyte's own) with an application token,
for the dev scripts and the tests: `make demo`'s summary, compose-test, the kill tests."""

from __future__ import annotations

import json
import urllib.request
from typing import Any


class AirbyteAPI:
    def __init__(self, base_url: str, client_id: str, client_secret: str) -> None:
        self.base_url = base_url.rstrip("/")  # .../api/public/v1
        self.client_id, self.client_secret = client_id, client_secret
        self._token: str | None = None

    @classmethod
    def from_connection(cls, env: dict[str, str], name: str = "AIRBYTE_DEFAULT") -> AirbyteAPI:
        """From the Airflow connection Airflow's Airbyte tasks use (AIRFLOW_CONN_<name>, JSON)."""
        conn = json.loads(env[f"AIRFLOW_CONN_{name}"])
        return cls(conn["host"], conn["login"], conn["password"])

    def token(self) -> str:
        if self._token is None:
            body = json.dumps({"client_id": self.client_id, "client_secret": self.client_secret}).encode()
            request = urllib.request.Request(f"{self.base_url}/applications/token", data=body, method="POST")
            request.add_header("Content-Type", "application/json")
            with urllib.request.urlopen(request, timeout=30) as response:
                self._token = json.load(response)["access_token"]
        return self._token

    def get(self, path: str) -> Any:
        request = urllib.request.Request(self.base_url + path)
        request.add_header("Authorization", f"Bearer {self.token()}")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)
