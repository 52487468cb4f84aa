"""Managed ELT on Airflow 3: pipeline specs become DAGs (Airbyte sync -> dbt via Cosmos -> alerts)."""

from elt import cosmos_settings as _cosmos_settings  # noqa: F401  (first: before anything imports Cosmos)
