"""`elt new-pipeline` against an HTTP server answering like Airbyte's public API, then `dbt parse`.

The server below answers with the official API's shapes (GET /streams gives property names
only, as real Airbyte does), so this also covers the path without column types.
"""

from __future__ import annotations

import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from dbt.cli.main import dbtRunner

from elt import paths
from elt.scaffold import ScaffoldError, new_pipeline, snake_case
from elt.spec import parse_spec

REPO = Path(__file__).resolve().parents[2]
CONN, SOURCE, DEST, WS = (
    "11111111-2222-4333-8444-555555555555",
    "22222222-2222-4333-8444-555555555555",
    "33333333-2222-4333-8444-555555555555",
    "44444444-2222-4333-8444-555555555555",
)
API = {
    f"/api/public/v1/connections/{CONN}": {
        "connectionId": CONN,
        "name": "Shop Orders",
        "sourceId": SOURCE,
        "destinationId": DEST,
        "workspaceId": WS,
        "status": "active",
        "createdAt": 0,
        "schedule": {"scheduleType": "manual"},
        "namespaceDefinition": "custom_format",
        "namespaceFormat": "raw_shop",
        "prefix": "",
        "nonBreakingSchemaUpdatesBehavior": "ignore",
        "tags": [],
        "configurations": {
            "streams": [
                {
                    "name": "Orders",
                    "syncMode": "incremental_append",
                    "cursorField": ["updatedAt"],
                    "primaryKey": [],
                },
                {"name": "events", "syncMode": "full_refresh_append", "cursorField": [], "primaryKey": []},
            ]
        },
    },
    f"/api/public/v1/sources/{SOURCE}": {
        "sourceId": SOURCE,
        "name": "shop",
        "sourceType": "shop",
        "definitionId": SOURCE,
        "workspaceId": WS,
        "createdAt": 0,
        "configuration": {"base_url": "http://example.invalid"},
    },
    "/api/public/v1/streams": [
        {
            "streamName": "Orders",
            "syncModes": ["full_refresh_overwrite", "incremental_append"],
            "defaultCursorField": ["updatedAt"],
            "sourceDefinedCursorField": True,
            "sourceDefinedPrimaryKey": [["orderId"]],
            "propertyFields": [["orderId"], ["updatedAt"], ["Total Amount"]],
        },
        {"streamName": "events", "syncModes": ["full_refresh_append"], "propertyFields": [["kind"]]},
        {"streamName": "unselected", "syncModes": ["full_refresh_append"], "propertyFields": [["x"]]},
    ],
}


class FakeAirbyte(BaseHTTPRequestHandler):
    def _send(self, status: int, body: object) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._send(200, {"access_token": "t", "token_type": "Bearer", "expires_in": 180})

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if self.headers.get("Authorization") != "Bearer t":
            self._send(401, {"detail": "no token"})
        elif path in API:
            self._send(200, API[path])
        else:
            self._send(404, {"title": "resource-not-found", "detail": path})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def airbyte(monkeypatch: pytest.MonkeyPatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeAirbyte)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}/api/public/v1/"
    conn = {
        "conn_type": "airbyte",
        "host": base,
        "login": "id",
        "password": "secret",
        "schema": base + "applications/token",
    }
    monkeypatch.setenv("AIRFLOW_CONN_AIRBYTE_DEFAULT", json.dumps(conn))
    yield
    server.shutdown()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the dbt project and empty dags/ and pipelines/ directories."""
    shutil.copytree(
        paths.DBT_PROJECT_DIR,
        tmp_path / "dbt",
        ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"),
    )
    (tmp_path / "dags").mkdir()
    (tmp_path / "pipelines").mkdir()
    monkeypatch.setattr(paths, "REPO", tmp_path)
    monkeypatch.setattr(paths, "DBT_PROJECT_DIR", tmp_path / "dbt")
    monkeypatch.setattr(paths, "PIPELINES_DIR", tmp_path / "pipelines")
    return tmp_path


def test_snake_case():
    assert snake_case("orderId") == "order_id"
    assert snake_case("Total Amount") == "total_amount"
    assert snake_case("HTTPStatus2xx") == "httpstatus2xx"
    assert snake_case("_airbyte_raw_id") == "airbyte_raw_id"


def test_new_pipeline_writes_a_valid_spec_and_a_dbt_project_that_parses(airbyte, repo):
    written = new_pipeline("shop_orders", CONN)
    staging = repo / "dbt" / "models" / "staging" / "shop_orders"
    assert {p.relative_to(repo).as_posix() for p in written} == {
        "pipelines/shop_orders.yaml",
        "dags/shop_orders.py",
        "dbt/models/staging/shop_orders/_shop_orders__sources.yml",
        "dbt/models/staging/shop_orders/_shop_orders__models.yml",
        "dbt/models/staging/shop_orders/stg_shop_orders__orders.sql",
        "dbt/models/staging/shop_orders/stg_shop_orders__events.sql",
        "dbt/selectors.yml",
    }
    assert (repo / "dags" / "shop_orders.py").read_text() == (
        REPO / "dags" / "energy_meters.py"
    ).read_text().replace("energy_meters", "shop_orders")

    spec = parse_spec(repo / "pipelines" / "shop_orders.yaml")
    conn = spec.airbyte.connections[0]
    assert (str(conn.id), conn.name, conn.destination_schema) == (CONN, "shop_orders", "raw_shop")
    assert [(s.name, s.cursor_field) for s in conn.streams] == [("orders", "updatedat"), ("events", None)]
    assert spec.dbt.selector == "shop_orders"

    # Names only from the official API: renamed, not cast; the source-declared key is used.
    sql = (staging / "stg_shop_orders__orders.sql").read_text()
    assert "select * from {{ source('shop_orders', 'orders') }}" in sql
    assert (
        "        orderid as order_id,\n        updatedat as updated_at,\n        total_amount as total_amount,"
        in sql
    )
    assert "select distinct on (order_id) *" in sql

    result = dbtRunner().invoke(
        ["parse", "--no-partial-parse", "--project-dir", str(repo / "dbt"), "--profiles-dir", str(repo / "dbt"),
         "--target-path", str(repo / "target"), "--log-path", str(repo / "logs")]
    )  # fmt: skip
    assert result.success, result.exception
    manifest = json.loads((repo / "target" / "manifest.json").read_text())
    source = manifest["sources"]["source.managed_elt.shop_orders.orders"]
    assert (source["schema"], source["loaded_at_field"]) == ("raw_shop", "_airbyte_extracted_at")
    assert source["freshness"]["error_after"]["count"]
    model = manifest["nodes"]["model.managed_elt.stg_shop_orders__orders"]
    assert model["tags"] == ["shop_orders"] and model["config"]["materialized"] == "view"
    tests = {
        (n["test_metadata"]["name"], n["column_name"])
        for n in manifest["nodes"].values()
        if n["resource_type"] == "test" and n["attached_node"] == "model.managed_elt.stg_shop_orders__events"
    }
    assert tests == {("unique", "airbyte_raw_id"), ("not_null", "airbyte_raw_id")}  # no declared key
    assert manifest["selectors"]["shop_orders"]["definition"] == {"method": "tag", "value": "shop_orders"}
    assert {"energy", "ecommerce"} <= set(manifest["selectors"])


def test_refuses_to_overwrite(airbyte, repo):
    new_pipeline("shop_orders", CONN)
    before = (repo / "dbt" / "selectors.yml").read_text()
    with pytest.raises(ScaffoldError, match="shop_orders"):
        new_pipeline("shop_orders", CONN)
    (repo / "pipelines" / "shop_orders.yaml").unlink()
    with pytest.raises(ScaffoldError, match="selector named 'shop_orders' exists"):
        new_pipeline("shop_orders", CONN)
    assert (repo / "dbt" / "selectors.yml").read_text() == before
    assert yaml.safe_load(before)["selectors"][-1]["name"] == "shop_orders"


def test_unknown_connection_names_it(airbyte, repo):
    with pytest.raises(ScaffoldError, match="404 for connection 99999999"):
        new_pipeline("other", "99999999-2222-4333-8444-555555555555")
    assert not list((repo / "pipelines").iterdir())
