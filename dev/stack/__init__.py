"""The local stack: embedded Postgres, the local Airbyte and meter API, and Airflow 3.

Run as ``python -m dev.stack up|down|status``. Everything it starts is a background
process tracked by a pid file under ``.local/run``; ``.local/stack.env`` tells other
tools how to reach the stack.
"""
