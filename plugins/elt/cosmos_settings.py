"""Cosmos settings the product needs whatever the deployment's environment says.

Cosmos reads its `[cosmos]` settings once, when `cosmos.settings` is first imported. With its
YAML-selector (or dbt ls) cache on, building a DbtTaskGroup writes an Airflow Variable, so parsing
a DAG would need the metadata database. The `elt` package imports this module first, before
anything imports Cosmos, so these values win over the environment.
"""

from __future__ import annotations

import logging
import os
import sys

REQUIRED = {
    "AIRFLOW__COSMOS__ENABLE_CACHE_DBT_YAML_SELECTORS": "False",
    "AIRFLOW__COSMOS__ENABLE_CACHE_DBT_LS": "False",
}

DEFAULTS = {  # a deployment may override these
    # Cosmos's "reliable retry" rewrites one Variable holding every XCom the watcher producer has
    # pushed, on every push (several per dbt node): O(nodes²) bytes through the API server on dbt's
    # own thread. Off, the backup is still written once when the producer fails or retries (Cosmos's
    # callbacks); only a producer killed outright loses it, and then each model task falls back to
    # running its own dbt (tests/integration/test_stack_kills.py, ELT_KILL_DBT_PRODUCER).
    "AIRFLOW__COSMOS__ENABLE_WATCHER_RELIABLE_RETRY": "False",
    # On Airflow 3 Cosmos builds Airflow 3 asset URIs either way: this only stops it warning, in every
    # dbt producer's log, that they differ from Airflow 2's (noise for whoever reads a failed run).
    "AIRFLOW__COSMOS__USE_DATASET_AIRFLOW3_URI_STANDARD": "True",
}

os.environ.update(REQUIRED)
for _key, _value in DEFAULTS.items():
    os.environ.setdefault(_key, _value)

if "cosmos.settings" in sys.modules:  # imported before `elt` (e.g. by a plugin): too late to configure
    _settings = sys.modules["cosmos.settings"]
    if _settings.enable_cache and (
        _settings.enable_cache_dbt_yaml_selectors or _settings.enable_cache_dbt_ls
    ):
        logging.getLogger(__name__).warning(
            "cosmos.settings was imported before elt with Variable caches on; set %s in the environment",
            ", ".join(f"{k}={v}" for k, v in REQUIRED.items()),
        )
