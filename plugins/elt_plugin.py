"""Airflow plugin "elt": what the api-server and the DAG serializer need from the `elt` package.

- the 'Airbyte job' extra link, so serialized DAGs (and the UI) keep the button;
- the energy marts read API, mounted at /energy in the api-server.

dbt docs in the UI come from Cosmos's own plugin (configured by `[cosmos] dbt_docs_projects`).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from elt.airbyte import AirbyteJobLink
from elt.marts_api import app as marts_app


class EltPlugin(AirflowPlugin):
    name = "elt"
    operator_extra_links = [AirbyteJobLink()]
    fastapi_apps = [{"app": marts_app, "url_prefix": "/energy", "name": "Energy marts API"}]
