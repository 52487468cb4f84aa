# The Airflow 3 image of this DAG repository: exactly the versions CI tests (requirements.lock),
# the DAGs, the `elt` package and the dbt project with its manifest compiled at build time.
# Nothing secret is baked in: connections, keys and passwords come from the environment (.env).
# BASE_IMAGE: the official python image by default; dev/docker/base-images.sh builds a stand-in
# from Debian packages where no registry is reachable (docs/deploy.md).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
# PEM certificates to trust while installing (e.g. a TLS-intercepting proxy); removed afterwards.
ARG EXTRA_CA_CERTS=""
ARG UV_VERSION=0.13.8

ENV AIRFLOW_HOME=/opt/airflow \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/airflow/plugins:/opt/airflow \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DO_NOT_TRACK=1 \
    SCARF_ANALYTICS=false \
    AIRFLOW__COSMOS__ENABLE_TELEMETRY=False
USER root
# tini as PID 1: forwards signals to Airflow and reaps its task processes.
RUN command -v tini >/dev/null || { apt-get update && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*; }
# Same uid/gid as the official apache/airflow image, so volumes are interchangeable with it.
RUN useradd --create-home --home-dir /home/airflow --uid 50000 --gid 0 airflow

# requirements.txt names the runtime; the lock pins every transitive version. Constraining with
# the lock installs the runtime only (the lock's dev tools: pytest, ruff, ... are left out).
COPY requirements.txt requirements.lock /tmp/requirements/
# --compile-bytecode: .pyc files built here once (PYTHONDONTWRITEBYTECODE keeps containers from
# writing any), so a process does not compile every module it imports each time it starts.
RUN set -e; if [ -n "$EXTRA_CA_CERTS" ]; then printf '%s\n' "$EXTRA_CA_CERTS" > /usr/local/share/ca-certificates/build-extra.crt; update-ca-certificates >/dev/null; fi; \
    export SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install --quiet --no-cache-dir "uv==${UV_VERSION}"; \
    /opt/venv/bin/uv pip install --quiet --no-cache --compile-bytecode --python /opt/venv/bin/python --only-binary :all: \
      -r /tmp/requirements/requirements.txt -c /tmp/requirements/requirements.lock; \
    /opt/venv/bin/pip uninstall --quiet -y uv; \
    rm -rf /tmp/requirements /usr/local/share/ca-certificates/build-extra.crt; update-ca-certificates --fresh >/dev/null

WORKDIR /opt/airflow
COPY --chown=airflow:0 dags/ dags/
COPY --chown=airflow:0 plugins/ plugins/
COPY --chown=airflow:0 include/ include/
COPY --chown=airflow:0 dev/compose/container_hostname.py container_hostname.py
COPY --chown=airflow:0 dev/compose/airflow-worker.sh bin/airflow-worker.sh
COPY --chown=airflow:0 dev/compose/healthcheck.py bin/healthcheck.py

# The manifest Cosmos renders DAGs from (LoadMode.DBT_MANIFEST): parsing never runs dbt.
RUN python -m elt.dbt \
    && rm -rf include/dbt/logs \
    && mkdir -p logs dbt_docs \
    && chown -R airflow:0 /opt/airflow

USER airflow
ENTRYPOINT ["tini", "--"]
CMD ["airflow", "version"]
