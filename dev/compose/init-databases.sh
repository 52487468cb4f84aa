#!/usr/bin/env bash
# Runs once, when the Postgres volume is created (docker-entrypoint-initdb.d): Airflow's metadata
# and the warehouse as separate databases owned by separate, non-superuser roles.
# Extra databases (e.g. the local Airbyte's state) come from EXTRA_DATABASES="name:user:password ...".
set -euo pipefail

create() { # database role password
  psql -v ON_ERROR_STOP=1 -v db="$1" -v role="$2" -v pw="$3" --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
select format('create role %I login password %L', :'role', :'pw')
where not exists (select from pg_roles where rolname = :'role')\gexec
select format('create database %I owner %I', :'db', :'role')
where not exists (select from pg_database where datname = :'db')\gexec
SQL
}

create airflow airflow "$AIRFLOW_DB_PASSWORD"
create "${WAREHOUSE_DB:-warehouse}" "${WAREHOUSE_USER:-warehouse}" "$WAREHOUSE_PASSWORD"
for spec in ${EXTRA_DATABASES:-}; do
  IFS=: read -r db role pw <<<"$spec"
  create "$db" "$role" "$pw"
done
