# syntax=docker/dockerfile:1
# The Airflow 3 image of this DAG repository: exactly the versions CI tests (requirements.lock),
# the DAGs, the `elt` package and the dbt project with its manifest compiled at build time.
# Nothing secret is baked in: connections, keys and passwords come from the environment (.env).
FROM python:3.11-slim-bookworm

ENV AIRFLOW_HOME=/opt/airflow \
    PYTHONPATH=/opt/airflow/plugins:/opt/airflow \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DO_NOT_TRACK=1 \
    SCARF_ANALYTICS=false \
    AIRFLOW__COSMOS__ENABLE_TELEMETRY=False

# Same uid/gid as the official apache/airflow image, so volumes are interchangeable with it.
RUN useradd --create-home --home-dir /home/airflow --uid 50000 --gid 0 airflow

# requirements.txt names the runtime; the lock pins every transitive version. Constraining with
# the lock installs the runtime only (the lock's dev tools: pytest, ruff, ... are left out).
COPY requirements.txt requirements.lock /tmp/requirements/
RUN pip install --only-binary=:all: -r /tmp/requirements/requirements.txt -c /tmp/requirements/requirements.lock \
    && rm -rf /tmp/requirements

WORKDIR /opt/airflow
COPY --chown=airflow:0 dags/ dags/
COPY --chown=airflow:0 plugins/ plugins/
COPY --chown=airflow:0 include/ include/
COPY --chown=airflow:0 dev/compose/write-passwords.py bin/write-passwords.py

# The manifest Cosmos renders DAGs from (LoadMode.DBT_MANIFEST): parsing never runs dbt.
RUN python -m elt.dbt \
    && rm -rf include/dbt/logs \
    && mkdir -p logs auth dbt_docs \
    && chown -R airflow:0 /opt/airflow

USER airflow
EXPOSE 8080
CMD ["airflow", "version"]
