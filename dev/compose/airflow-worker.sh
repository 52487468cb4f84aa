#!/usr/bin/env bash
# A Celery worker that can be scaled (`--scale airflow-worker=N`) on the host network:
# a name of its own (its container id) and no log server (logs are on the shared volume).
set -euo pipefail
id=$(grep -oE '/containers/[0-9a-f]{64}/' /proc/self/mountinfo | head -1 | cut -c13-24 || true)
export AIRFLOW_HOSTNAME=${AIRFLOW_HOSTNAME:-airflow-worker-${id:-$(python -c 'import secrets; print(secrets.token_hex(6))')}}
echo "$AIRFLOW_HOSTNAME" >/tmp/worker-name
exec airflow celery worker --celery-hostname "$AIRFLOW_HOSTNAME" --skip-serve-logs "$@"
