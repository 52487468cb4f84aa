"""Managed ELT on Airflow 3: pipeline specs become DAGs (Airbyte sync -> dbt via Cosmos -> alerts)."""
