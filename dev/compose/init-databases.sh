#!/usr/bin/env bash
# Runs once, when the Postgres volume is created (docker-entrypoint-initdb.d): the databases
# the stack needs besides POSTGRES_DB (Airflow's metadata). Same names as the local stack.
set -euo pipefail

for db in warehouse airbyte; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
select 'create database "$db" owner "$POSTGRES_USER"'
where not exists (select from pg_database where datname = '$db')\gexec
SQL
done
