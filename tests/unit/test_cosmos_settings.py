"""The Cosmos settings `elt` sets before Cosmos reads them (plugins/elt/cosmos_settings.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Cosmos reads its settings once, at import: each case runs in a fresh interpreter.
SCRIPT = """
import json, logging
import elt  # noqa: F401  (first, as in the DAG files)
from cosmos.dataset import construct_dataset_uri

warnings = []
handler = logging.Handler()
handler.emit = lambda record: warnings.append(record.getMessage())
logging.getLogger("cosmos.dataset").addHandler(handler)
uri = construct_dataset_uri("postgres://127.0.0.1:5432", "warehouse.analytics_marts.fct_energy_daily")
print(json.dumps({"uri": uri, "warnings": warnings}))
"""


def _run(tmp_path: Path, **env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__COSMOS__")}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={
            **base,
            "AIRFLOW_HOME": str(tmp_path),
            "PYTHONPATH": str(REPO / "plugins"),
            "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",  # no internet here
            "DO_NOT_TRACK": "1",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# Airflow's postgres asset URI: postgres://host:port/database/schema/table (the provider's docs).
URI = "postgres://127.0.0.1:5432/warehouse/analytics_marts/fct_energy_daily"


def test_the_asset_uri_migration_warning_is_off_and_the_uri_is_airflow_3s(tmp_path: Path) -> None:
    assert _run(tmp_path) == {"uri": URI, "warnings": []}


def test_a_deployment_may_turn_the_warning_back_on(tmp_path: Path) -> None:
    got = _run(tmp_path, AIRFLOW__COSMOS__USE_DATASET_AIRFLOW3_URI_STANDARD="False")
    assert got["uri"] == URI
    assert len(got["warnings"]) == 1 and "URIs validation rules changed" in got["warnings"][0], got
