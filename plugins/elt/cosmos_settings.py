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

os.environ.update(REQUIRED)

if "cosmos.settings" in sys.modules:  # imported before `elt` (e.g. by a plugin): too late to configure
    _settings = sys.modules["cosmos.settings"]
    if _settings.enable_cache and (
        _settings.enable_cache_dbt_yaml_selectors or _settings.enable_cache_dbt_ls
    ):
        logging.getLogger(__name__).warning(
            "cosmos.settings was imported before elt with Variable caches on; set %s in the environment",
            ", ".join(f"{k}={v}" for k, v in REQUIRED.items()),
        )
