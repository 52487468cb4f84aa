"""Local stand-in for Airbyte's public API (dev and CI only).

Serves the subset of `/api/public/v1` that `apache-airflow-providers-airbyte` and the
`airbyte-api` SDK use, and runs every sync for real with PyAirbyte in its own subprocess,
writing into the warehouse Postgres. See README.md in this folder.
"""
