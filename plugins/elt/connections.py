"""Alert routes and the Airflow connections that carry them: pure checks, shared by spec.py and alerting.py.

At parse time only connections declared as `AIRFLOW_CONN_*` environment variables can be read (the
metadata database and secrets backends are off limits); the rest are checked by `python -m elt check`
(`elt.spec.check_specs`) and again when an alert is sent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

# Which connection types can carry each route (Airflow's conn_type names).
ROUTE_CONN_TYPES: dict[str, tuple[str, ...]] = {
    "slack": ("slackwebhook",),
    "pagerduty": ("pagerduty_events",),
    "email": ("smtp",),
}
ENV_PREFIX = "AIRFLOW_CONN_"


def _conn_type(raw: str) -> str | None:
    raw = raw.strip()
    if raw.startswith("{"):
        try:
            conn_type = json.loads(raw).get("conn_type")
        except (ValueError, AttributeError):
            return None
        return str(conn_type) if conn_type else None
    return urlsplit(raw).scheme.replace("-", "_") or None  # Airflow reads '-' in a URI scheme as '_'


def declared_connections(environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """conn_id -> conn_type (None when unreadable) of every non-empty `AIRFLOW_CONN_*` variable."""
    environ = os.environ if environ is None else environ
    return {
        key[len(ENV_PREFIX) :].lower(): _conn_type(value)
        for key, value in environ.items()
        if key.startswith(ENV_PREFIX) and value.strip()
    }


def connection_type_from_env(conn_id: str) -> str | None:
    """The conn_type of `AIRFLOW_CONN_<ID>` if that variable defines the connection."""
    return declared_connections().get(conn_id.lower())


def route_problems(
    routes: Mapping[str, str], lookup: Callable[[str], str | None] | None = None
) -> list[tuple[str, str]]:
    """(field, message) for each route {kind: conn_id} whose connection is missing or of the wrong type.

    Without `lookup`, only what the environment declares is judged: a declared connection of the
    wrong type, or a conn_id the environment lacks while it declares other connections of the
    route's type (a typo). With `lookup` (conn_id -> conn_type, None when it does not exist), every
    route is checked.
    """
    declared = declared_connections()
    problems = []
    for kind, conn_id in routes.items():
        allowed = ROUTE_CONN_TYPES[kind]
        field = f"alerts.{kind}.conn_id"
        needs = " or ".join(map(repr, allowed))
        if lookup is None and conn_id.lower() not in declared:
            same_kind = sorted(cid for cid, ctype in declared.items() if ctype in allowed)
            if same_kind:
                problems.append(
                    (
                        field,
                        f"connection {conn_id!r} is not declared in the environment "
                        f"(no {ENV_PREFIX}{conn_id.upper()}); it declares {kind} connections {same_kind}",
                    )
                )
            continue
        conn_type = declared[conn_id.lower()] if lookup is None else lookup(conn_id)
        if lookup is not None and conn_type is None:
            problems.append(
                (field, f"connection {conn_id!r} does not exist; a {kind} route needs one of type {needs}")
            )
        elif conn_type is not None and conn_type not in allowed:
            where = f" ({ENV_PREFIX}{conn_id.upper()})" if lookup is None else ""
            problems.append(
                (
                    field,
                    f"connection {conn_id!r}{where} has type {conn_type!r}; "
                    f"a {kind} route needs a connection of type {needs}",
                )
            )
    return problems


def airflow_connection_type(conn_id: str) -> str | None:
    """conn_type of an Airflow connection from any backend (env, secrets, metadata DB); None if missing.

    For `check_specs(connection_type=...)` in commands run where Airflow's connections are reachable,
    never while parsing DAGs.
    """
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection

    try:
        return Connection.get_connection_from_secrets(conn_id).conn_type
    except AirflowNotFoundException:
        return None
