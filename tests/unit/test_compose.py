"""docker-compose.yaml and the Dockerfiles, checked without a Docker engine.

The compose deployment must stay in step with the local stack (dev/stack): the same Airflow
settings, the same connection ids, the same commands. It must hold no secret: every credential
is a `${VAR:?...}` reference filled from the git-ignored .env.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path
from unittest import mock

import pytest
import yaml

from dev.stack import __main__ as stack_main
from dev.stack.config import Ports, Postgres, stack_env

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
SERVICES = COMPOSE["services"]
AIRFLOW_SERVICES = ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer")
LOCAL_AIRBYTE_SERVICES = ("local-airbyte", "meter-api")
CONNECTION_IDS = ("airbyte_default", "warehouse", "slack_alerts", "pagerduty_alerts", "smtp_alerts")
# Settings whose values are paths, addresses or secrets of one environment; all others must match.
ENVIRONMENT_SPECIFIC = {
    "AIRFLOW__CORE__DAGS_FOLDER",
    "AIRFLOW__CORE__PLUGINS_FOLDER",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__API__BASE_URL",
    "AIRFLOW__API__PORT",
    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
    "AIRFLOW__COSMOS__CACHE_DIR",
    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT",
    "AIRFLOW__API__HOST",
    "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__COSMOS__DBT_DOCS_PROJECTS",
}
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|SECRET_KEY|FERNET_KEY|TOKEN)$|^AIRFLOW_CONN_")
REQUIRED_REF = re.compile(r"\$\{(\w+):\?[^}]*\}")
ANY_REF = re.compile(r"\$\{(\w+)(?::?[-?][^}]*)?\}")


def _default_ports() -> Ports:
    """The stack's default ports (whatever fields Ports has), ignoring this shell's STACK_* overrides."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STACK_")}
    with mock.patch.dict(os.environ, clean, clear=True):
        return Ports.from_env()


def _stack_env() -> dict[str, str]:
    secrets = defaultdict(lambda: "local-only-value")  # any secret the stack generates
    pg = Postgres("127.0.0.1", 5432, "elt", "pw", embedded=True)
    return stack_env(_default_ports(), pg, secrets)


def _environment(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment", {})
    assert isinstance(env, dict), f"{service}: environment must be a mapping"
    return {key: str(value) for key, value in env.items()}


def _command(service: str) -> list[str]:
    command = SERVICES[service]["command"]
    assert isinstance(command, list), f"{service}: command must be an exec-form list"
    return command


def test_services_and_profiles() -> None:
    assert set(SERVICES) == {"postgres", "airflow-init", *AIRFLOW_SERVICES, *LOCAL_AIRBYTE_SERVICES}
    for name in LOCAL_AIRBYTE_SERVICES:
        assert SERVICES[name].get("profiles") == ["local-airbyte"], name
    for name in ("postgres", "airflow-init", *AIRFLOW_SERVICES):
        assert "profiles" not in SERVICES[name], f"{name} must run without a profile"


@pytest.mark.parametrize("service", ["postgres", *AIRFLOW_SERVICES, *LOCAL_AIRBYTE_SERVICES])
def test_long_running_services_have_healthchecks(service: str) -> None:
    check = SERVICES[service].get("healthcheck")
    assert check and check.get("test"), f"{service} has no healthcheck"


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_airflow_waits_for_database_and_init(service: str) -> None:
    depends = SERVICES[service]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["airflow-init"]["condition"] == "service_completed_successfully"
    # A service of an optional profile cannot be a dependency of an always-on one.
    assert not set(depends) & set(LOCAL_AIRBYTE_SERVICES)


def test_init_job_migrates_and_nothing_else_long_running() -> None:
    init = SERVICES["airflow-init"]
    assert "airflow db migrate" in " ".join(_command("airflow-init"))
    assert init.get("restart") == "no"
    assert init["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_local_airbyte_waits_for_postgres_and_meter_api() -> None:
    depends = SERVICES["local-airbyte"]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["meter-api"]["condition"] == "service_healthy"


def test_postgres_creates_the_stacks_databases() -> None:
    mounts = " ".join(SERVICES["postgres"]["volumes"])
    assert "./dev/compose/init-databases.sh:/docker-entrypoint-initdb.d/" in mounts
    script = (REPO / "dev" / "compose" / "init-databases.sh").read_text()
    assert _environment("postgres")["POSTGRES_DB"] == "airflow"
    for database in ("warehouse", "airbyte"):
        assert database in script


@pytest.mark.parametrize("service", ["airflow-init", *AIRFLOW_SERVICES])
def test_airflow_settings_match_the_local_stack(service: str) -> None:
    stack = {k: v for k, v in _stack_env().items() if k.startswith("AIRFLOW__")}
    compose = {k: v for k, v in _environment(service).items() if k.startswith("AIRFLOW__")}
    missing = sorted(set(stack) - set(compose))
    assert not missing, f"{service}: settings the local stack sets but compose does not: {missing}"
    differing = {
        key: (stack[key], compose[key])
        for key in stack
        if key not in ENVIRONMENT_SPECIFIC and stack[key] != compose[key]
    }
    assert not differing, f"{service}: (stack, compose) values differ: {differing}"


@pytest.mark.parametrize("service", ["airflow-init", *AIRFLOW_SERVICES])
def test_same_connection_ids_as_the_local_stack(service: str) -> None:
    compose_ids = {
        k.removeprefix("AIRFLOW_CONN_").lower()
        for k in _environment(service)
        if k.startswith("AIRFLOW_CONN_")
    }
    stack_ids = {
        k.removeprefix("AIRFLOW_CONN_").lower() for k in _stack_env() if k.startswith("AIRFLOW_CONN_")
    }
    assert stack_ids <= compose_ids
    assert compose_ids == set(CONNECTION_IDS)


def test_connections_render_to_the_stacks_json_shape() -> None:
    env = _environment("airflow-scheduler")
    stack = _stack_env()
    for key in ("AIRFLOW_CONN_WAREHOUSE", "AIRFLOW_CONN_AIRBYTE_DEFAULT"):
        rendered = json.loads(ANY_REF.sub(lambda m: "5432" if m.group(1).endswith("PORT") else "x", env[key]))
        assert set(rendered) == set(json.loads(stack[key])), key
        assert ANY_REF.fullmatch(_field(env[key], "password")), f"{key}: password must come from .env"


def _field(template: str, name: str) -> str:
    match = re.search(rf'"{name}":\s*"([^"]*)"', template)
    assert match, f"no {name} in {template}"
    return match.group(1)


def test_airbyte_can_be_switched_to_a_real_instance() -> None:
    template = _environment("airflow-api-server")["AIRFLOW_CONN_AIRBYTE_DEFAULT"]
    assert _field(template, "host").startswith("${AIRBYTE_API_URL:-")
    assert _field(template, "schema").startswith("${AIRBYTE_TOKEN_URL:-")
    for var in ("AIRBYTE_CLIENT_ID", "AIRBYTE_CLIENT_SECRET"):
        assert re.search(rf"\$\{{{var}:\?", template), var


def _all_environments() -> list[tuple[str, str, str]]:
    return [(service, key, value) for service in SERVICES for key, value in _environment(service).items()]


def test_no_secret_literals() -> None:
    for service, key, value in _all_environments():
        if not SECRET_NAME.search(key) or not value:
            continue
        if key.startswith("AIRFLOW_CONN_") and value.lstrip().startswith("{"):
            for field in ("password", "login"):
                assert REQUIRED_REF.fullmatch(_field(value, field)), f"{service} {key}.{field} is a literal"
        else:
            assert ANY_REF.fullmatch(value), f"{service}: {key} must be a ${{VAR}} reference, not a literal"
    for service, key, value in _all_environments():
        if "://" in value and "@" in value:
            userinfo = value.split("://", 1)[1].split("@", 1)[0]
            assert ":" not in userinfo or REQUIRED_REF.search(userinfo), f"{service}: {key} embeds a password"


def test_env_example_has_placeholders_for_every_required_variable() -> None:
    text = (REPO / "docker-compose.yaml").read_text()
    required = set(REQUIRED_REF.findall(text))
    example = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            example[key] = value
    assert required <= set(example), f".env.example lacks {sorted(required - set(example))}"
    for key, value in example.items():
        if SECRET_NAME.search(key):
            assert re.fullmatch(r"<[^>]+>", value), f".env.example: {key} must be a <placeholder>"


def test_env_file_is_git_ignored() -> None:
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert ".env" in ignored


def test_commands_match_the_local_stack() -> None:
    stack = {s.name: s.cmd for s in stack_main.services(_default_ports())}
    for service in AIRFLOW_SERVICES:
        subcommand = stack[service][1]  # [".venv/bin/airflow", "scheduler", ...]
        assert _command(service)[:2] == ["airflow", subcommand], service
    for service, stack_name in (("local-airbyte", "airbyte"), ("meter-api", "meter-api")):
        if stack_name in stack:
            assert _command(service) == ["python", *stack[stack_name][1:]], service


def test_api_server_is_published_on_the_port_it_listens_on() -> None:
    command = _command("airflow-api-server")
    port = command[command.index("--port") + 1]
    assert _environment("airflow-api-server")["AIRFLOW__API__PORT"] == port
    assert any(mapping.endswith(f":{port}") for mapping in SERVICES["airflow-api-server"]["ports"])


def test_airflow_dockerfile_installs_from_the_lock_and_compiles_the_manifest() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    install = next(line for line in _run_lines(dockerfile) if "pip install" in line)
    assert re.search(r"-r \S*requirements\.txt", install) and re.search(r"-c \S*requirements\.lock", install)
    for directory in ("dags/", "plugins/", "include/"):
        assert re.search(rf"^COPY .*\b{directory} ", dockerfile, re.M), directory
    assert "python -m elt.dbt" in dockerfile
    assert re.search(r"^USER (?!root)", dockerfile, re.M), "the image must not run as root"
    assert re.search(r"^FROM (python:3\.11|apache/airflow:3\.3\.2-python3\.11)", dockerfile, re.M)


def test_local_airbyte_dockerfile_installs_its_lock() -> None:
    for service in LOCAL_AIRBYTE_SERVICES:
        path = REPO / SERVICES[service]["build"]["dockerfile"]
        assert (
            "-r /tmp/requirements-airbyte.lock" in path.read_text()
            or "requirements-airbyte.lock" in path.read_text()
        )


def test_dockerignore_keeps_local_state_out() -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert ignore[0 : ignore.index("*") + 1][-1] == "*", ".dockerignore should start from 'ignore everything'"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert not {".env", ".local", ".venv"} & allowed


def _run_lines(dockerfile: str) -> list[str]:
    """RUN instructions with their continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", dockerfile)
    return [line for line in joined.splitlines() if line.startswith("RUN ")]
