"""Where the stack lives, which ports it uses, and the environment it writes."""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

REPO = Path(__file__).resolve().parents[2]
# STACK_HOME lets several stacks (e.g. parallel test sessions) live side by side.
LOCAL = Path(os.environ.get("STACK_HOME", REPO / ".local")).resolve()
RUN_DIR = LOCAL / "run"
LOG_DIR = LOCAL / "logs"
STACK_ENV = LOCAL / "stack.env"
SECRETS_FILE = LOCAL / "secrets.json"
AIRFLOW_HOME = LOCAL / "airflow"
VENV = REPO / ".venv"
AIRBYTE_VENV = REPO / ".venv-airbyte"

# Every process the stack starts carries this marker in its environment, so `down`
# can find stragglers (task runners, connector subprocesses) that left the process group.
MARKER = "ELT_STACK_HOME"

EXECUTORS = {"local": "LocalExecutor", "celery": "CeleryExecutor"}
CELERY_WORKERS = 2
ADMIN_USER = "admin"
DB_USER = "elt"


def _port(name: str, default: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        port = int(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a port number") from None
    if not 0 < port < 65536:
        raise SystemExit(f"{name}={port} is out of range 1-65535")
    return port


@dataclass(frozen=True)
class Ports:
    postgres: int
    airflow: int
    airbyte: int
    meter: int
    receivers_http: int
    receivers_smtp: int
    redis: int

    @classmethod
    def from_env(cls) -> Ports:
        return cls(
            postgres=_port("STACK_PG_PORT", 55432),
            airflow=_port("STACK_AIRFLOW_PORT", 8080),
            airbyte=_port("STACK_AIRBYTE_PORT", 8000),
            meter=_port("STACK_METER_PORT", 8010),
            receivers_http=_port("STACK_RECEIVERS_HTTP_PORT", 8025),
            receivers_smtp=_port("STACK_RECEIVERS_SMTP_PORT", 8026),
            redis=_port("STACK_REDIS_PORT", 56379),
        )


@dataclass(frozen=True)
class Postgres:
    """The Postgres the stack uses: embedded by default, or `STACK_PG_URL` if set."""

    host: str
    port: int
    user: str
    password: str
    embedded: bool

    def url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://{quote(self.user)}:{quote(self.password, safe='')}@{self.host}:{self.port}/{database}"


def executor() -> str:
    """STACK_EXECUTOR=local (default: tasks run inside the scheduler) or celery (Redis + workers)."""
    name = os.environ.get("STACK_EXECUTOR", "local").lower()
    if name not in EXECUTORS:
        raise SystemExit(f"STACK_EXECUTOR={name!r}: choose one of {', '.join(EXECUTORS)}")
    return name


# Airflow signs task tokens with HS512 given a shared secret: RFC 7518 (3.2) wants 64 bytes or more.
JWT_SECRET_MIN_LENGTH = 64


def load_secrets(airflow_running: bool = False) -> dict[str, str]:
    """Local-only credentials, generated once and kept in .local/ (git-ignored).

    A JWT secret shorter than HS512 needs (generated before this rule) is replaced, but only while
    no Airflow service runs: the ones running would keep signing or checking with the old one."""
    LOCAL.mkdir(parents=True, exist_ok=True)
    current = json.loads(SECRETS_FILE.read_text()) if SECRETS_FILE.exists() else {}
    if not airflow_running and len(current.get("jwt_secret", "")) < JWT_SECRET_MIN_LENGTH:
        current.pop("jwt_secret", None)  # generated again below
    wanted = {
        "postgres_password": lambda: secrets.token_urlsafe(18),
        "admin_password": lambda: secrets.token_urlsafe(12),
        "fernet_key": lambda: base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "jwt_secret": lambda: secrets.token_urlsafe(JWT_SECRET_MIN_LENGTH),
        "api_secret_key": lambda: secrets.token_urlsafe(32),
        "redis_password": lambda: secrets.token_urlsafe(18),
        "airbyte_client_id": lambda: "local-" + secrets.token_hex(8),
        "airbyte_client_secret": lambda: secrets.token_urlsafe(24),
    }
    missing = {k: make() for k, make in wanted.items() if k not in current}
    if missing:
        current.update(missing)
        SECRETS_FILE.write_text(json.dumps(current, indent=2))
        SECRETS_FILE.chmod(0o600)
    return current


def postgres_settings(ports: Ports, secret: dict[str, str]) -> Postgres:
    external = os.environ.get("STACK_PG_URL")
    if not external:
        return Postgres("127.0.0.1", ports.postgres, DB_USER, secret["postgres_password"], embedded=True)
    parts = urlsplit(external)
    if parts.scheme not in ("postgres", "postgresql") or not parts.hostname or parts.hostname.startswith("/"):
        raise SystemExit(
            f"STACK_PG_URL={external!r}: expected postgresql://USER:PASSWORD@HOST:PORT/ with a TCP host "
            "(Cosmos builds asset URIs from it, a socket path does not work)"
        )
    return Postgres(
        parts.hostname, parts.port or 5432, parts.username or "postgres", parts.password or "", embedded=False
    )


def stack_env(ports: Ports, pg: Postgres, secret: dict[str, str]) -> dict[str, str]:
    """Everything another tool needs to use the stack (written to .local/stack.env)."""
    airflow_url = f"http://127.0.0.1:{ports.airflow}"
    airbyte_url = f"http://127.0.0.1:{ports.airbyte}"
    warehouse_conn = {
        "conn_type": "postgres",
        "host": pg.host,
        "port": pg.port,
        "login": pg.user,
        "password": pg.password,
        "schema": "warehouse",
    }
    airbyte_conn = {
        "conn_type": "airbyte",
        "host": f"{airbyte_url}/api/public/v1/",
        "login": secret["airbyte_client_id"],
        "password": secret["airbyte_client_secret"],
        "schema": f"{airbyte_url}/api/public/v1/applications/token",
        "extra": {"timeout": 30},
    }
    # Local stand-ins for Slack, PagerDuty and a mail server (dev/receivers) record what they get.
    receivers = f"http://127.0.0.1:{ports.receivers_http}"
    slack_conn = {"conn_type": "slackwebhook", "host": f"{receivers}/slack", "password": "T000/B000/local"}
    pagerduty_conn = {"conn_type": "pagerduty_events", "host": receivers, "password": "local-routing-key"}
    smtp_conn = {
        "conn_type": "smtp",
        "host": "127.0.0.1",
        "port": ports.receivers_smtp,
        "extra": {"from_email": "airflow@localhost", "disable_ssl": True, "disable_tls": True, "timeout": 10},
    }
    env = {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__EXECUTOR": EXECUTORS[executor()],
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__FERNET_KEY": secret["fernet_key"],
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{airflow_url}/execution/",
        # A task runner gives up on the api-server after 5 tries of this timeout (Airflow's 5 s
        # failed tasks at start-up on a busy 2-core laptop).
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(AIRFLOW_HOME / "passwords.json"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg.url("airflow", "postgresql+psycopg2"),
        "AIRFLOW__API__BASE_URL": airflow_url,
        "AIRFLOW__API__PORT": str(ports.airflow),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__SECRET_KEY": secret["api_secret_key"],
        "AIRFLOW__API_AUTH__JWT_SECRET": secret["jwt_secret"],
        # Log servers of the worker and triggerer: per stack, so stacks can run side by side.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(ports.airflow + 713),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(ports.airflow + 714),
        # dbt docs in the Airflow UI (Browse -> dbt docs), generated by `python -m elt.dbt_docs`.
        "AIRFLOW__COSMOS__DBT_DOCS_PROJECTS": json.dumps(
            {"managed_elt": {"dir": str(LOCAL / "dbt_docs"), "name": "dbt docs"}}
        ),
        # A new DAG file is found within 20 s and an edited one is re-parsed at once (Airflow
        # parses files changed since their last parse first); unchanged files (a spec edit)
        # are re-parsed every 60 s. Each parse costs CPU: test runs keep several stacks up.
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "20",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "60",
        # A task whose runner died (killed, or left by a dead scheduler and cleaned up by `up`) is
        # failed or reset, then retried, within a minute instead of after Airflow's 300 s each. A
        # dead scheduler's tasks are reset by the first orphan check after its heartbeat is 30 s old
        # ([scheduler] scheduler_health_check_threshold); a restarted scheduler's check at start is
        # too soon, so a check every 10 s (an UPDATE and a SELECT) resets them 10-20 s sooner.
        # docker-compose.yaml keeps production-like values (60 s and 300 s, settable in .env).
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
        "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "10",
        # A task a dead Celery worker had taken but not started (STACK_EXECUTOR=celery) is sent
        # again after 2 minutes in queued, not Airflow's 10 (compose: AIRFLOW_TASK_QUEUED_TIMEOUT).
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "120",
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(ports.airflow + 715),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
        # Cosmos would cache YAML selectors in Airflow Variables: a database call while parsing.
        "AIRFLOW__COSMOS__ENABLE_CACHE_DBT_YAML_SELECTORS": "False",
        # dbt's partial-parse cache, shared by the dbt tasks of this stack (saves a full parse per task).
        "AIRFLOW__COSMOS__CACHE_DIR": str(LOCAL / "cosmos-cache"),
        "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False",
        "SCARF_ANALYTICS": "false",
        "DO_NOT_TRACK": "1",
        "AIRFLOW_CONN_WAREHOUSE": json.dumps(warehouse_conn),
        "AIRFLOW_CONN_AIRBYTE_DEFAULT": json.dumps(airbyte_conn),
        # Alert routes set in the user's environment (a real Slack, PagerDuty, SMTP) win.
        "AIRFLOW_CONN_SLACK_ALERTS": os.environ.get("AIRFLOW_CONN_SLACK_ALERTS") or json.dumps(slack_conn),
        "AIRFLOW_CONN_PAGERDUTY_ALERTS": os.environ.get("AIRFLOW_CONN_PAGERDUTY_ALERTS")
        or json.dumps(pagerduty_conn),
        "AIRFLOW_CONN_SMTP_ALERTS": os.environ.get("AIRFLOW_CONN_SMTP_ALERTS") or json.dumps(smtp_conn),
        "RECEIVERS_URL": receivers,
        "AIRFLOW_API_URL": airflow_url,
        "AIRFLOW_ADMIN_USER": ADMIN_USER,
        "AIRFLOW_ADMIN_PASSWORD": secret["admin_password"],
        "WAREHOUSE_URL": pg.url("warehouse"),
        "WAREHOUSE_HOST": pg.host,
        "WAREHOUSE_PORT": str(pg.port),
        "WAREHOUSE_USER": pg.user,
        "WAREHOUSE_PASSWORD": pg.password,
        "WAREHOUSE_DB": "warehouse",
        "LOCAL_AIRBYTE_URL": airbyte_url,
        "STACK_HOME": str(LOCAL),
        "METER_API_URL": f"http://127.0.0.1:{ports.meter}",
    }
    if executor() == "celery":
        broker = f"redis://:{quote(secret['redis_password'], safe='')}@127.0.0.1:{ports.redis}/0"
        env["AIRFLOW__CELERY__BROKER_URL"] = broker
        env["AIRFLOW__CELERY__RESULT_BACKEND"] = "db+" + pg.url("airflow")
        env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] = "4"
    return env


def write_stack_env(env: dict[str, str]) -> None:
    lines = ["# Written by `make up` (dev/stack). Use: set -a; . .local/stack.env; set +a"]
    lines += [f"{key}={_shell_quote(value)}" for key, value in env.items()]
    STACK_ENV.write_text("\n".join(lines) + "\n")
    STACK_ENV.chmod(0o600)


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\"'\"'") + "'"
