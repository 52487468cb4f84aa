"""docker-compose.yaml, docker-compose.local.yaml and the Dockerfiles, checked without a Docker engine
(`make compose-test` runs them for real).

The compose deployment must stay in step with the local stack (dev/stack): the same Airflow
settings, the same connection ids, the same commands. It must hold no secret: every credential
is a `${VAR:?...}` reference filled from the git-ignored .env.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections import defaultdict
from pathlib import Path
from unittest import mock

import pytest
import yaml

from dev.stack import __main__ as stack_main
from dev.stack.config import Ports, Postgres, stack_env

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
LOCAL = yaml.safe_load((REPO / "docker-compose.local.yaml").read_text())
SERVICES = COMPOSE["services"]
AIRFLOW_SERVICES = (
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)
LOCAL_SERVICES = ("local-airbyte", "meter-api")
CONNECTION_IDS = ("airbyte_default", "warehouse", "slack_alerts", "pagerduty_alerts", "smtp_alerts")
# Settings whose values are paths, addresses, ports or secrets of one environment; all others must match.
ENVIRONMENT_SPECIFIC = {
    "AIRFLOW__CORE__DAGS_FOLDER",
    "AIRFLOW__CORE__PLUGINS_FOLDER",
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__CORE__EXECUTOR",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__API__BASE_URL",
    "AIRFLOW__API__PORT",
    "AIRFLOW__API__HOST",
    "AIRFLOW__API__SECRET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__COSMOS__CACHE_DIR",
    "AIRFLOW__COSMOS__DBT_DOCS_PROJECTS",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT",
    # How soon a dead task runner or scheduler is noticed: quick in the local stack (tests kill
    # them), production-like in compose (set in .env).
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT",
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL",
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT",
}
# The local stack's auth manager and log servers; compose has FAB and no log servers (shared log volume).
STACK_ONLY = {
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE",
    "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT",
    "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT",
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
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STACK_")}
    with mock.patch.dict(os.environ, clean, clear=True):
        return stack_env(_default_ports(), pg, secrets)


def _environment(service: str, services: dict = SERVICES) -> dict[str, str]:
    env = services[service].get("environment", {})
    assert isinstance(env, dict), f"{service}: environment must be a mapping"
    return {key: str(value) for key, value in env.items()}


def _command(service: str, services: dict = SERVICES) -> list[str]:
    command = services[service]["command"]
    assert isinstance(command, list), f"{service}: command must be an exec-form list"
    return command


def test_production_services_and_local_override() -> None:
    assert set(SERVICES) == {"postgres", "redis", "airflow-init", *AIRFLOW_SERVICES}
    # The override adds the stand-ins and only touches production services to wire them in.
    assert set(LOCAL["services"]) == {*LOCAL_SERVICES, "postgres", "airflow-scheduler"}
    assert set(LOCAL["services"]["postgres"]) == {"environment"}
    assert set(LOCAL["services"]["airflow-scheduler"]) == {"depends_on"}


@pytest.mark.parametrize("service", ["postgres", "redis", *AIRFLOW_SERVICES])
def test_long_running_services_have_healthchecks(service: str) -> None:
    check = SERVICES[service].get("healthcheck")
    assert check and check.get("test"), f"{service} has no healthcheck"
    # Not the airflow or celery CLI: each imports Airflow, ~3 CPU-s a check (dev/compose/healthcheck.py).
    command = " ".join(check["test"][1:])
    assert not re.match(r"(airflow|celery)\b", command), f"{service}: {command}"
    if "healthcheck.py" in command:
        image = (REPO / "Dockerfile").read_text()
        assert "COPY --chown=airflow:0 dev/compose/healthcheck.py bin/healthcheck.py" in image


@pytest.mark.parametrize("service", LOCAL_SERVICES)
def test_local_services_have_healthchecks(service: str) -> None:
    assert LOCAL["services"][service]["healthcheck"]["test"]


def test_every_service_uses_the_host_network_on_loopback() -> None:
    for name, service in {**SERVICES, **{k: LOCAL["services"][k] for k in LOCAL_SERVICES}}.items():
        assert service.get("network_mode") == "host", name
        assert "ports" not in service, f"{name}: published ports are meaningless with host networking"
    assert _environment("airflow-api-server")["AIRFLOW__API__HOST"] == "${AIRFLOW_API_HOST:-127.0.0.1}"
    assert "listen_addresses=127.0.0.1" in _command("postgres")
    redis = _command("redis")
    assert redis[redis.index("--bind") + 1] == "127.0.0.1"
    for name in LOCAL_SERVICES:
        hosts = [v for k, v in _environment(name, LOCAL["services"]).items() if k.endswith("_HOST")]
        assert set(hosts) <= {"127.0.0.1", "${WAREHOUSE_HOST:-127.0.0.1}"}, (name, hosts)


def test_celery_executor_with_two_scalable_workers() -> None:
    env = _environment("airflow-scheduler")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:${REDIS_PASSWORD:?")
    worker = SERVICES["airflow-worker"]
    assert "container_name" not in worker and "hostname" not in worker, "`--scale` needs generated names"
    assert re.fullmatch(r"\$\{AIRFLOW_WORKERS:-(\d+)\}", str(worker["deploy"]["replicas"]))
    assert int(re.search(r"\d+", str(worker["deploy"]["replicas"])).group()) >= 2
    assert env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] == "container_hostname.get"
    script = (REPO / "dev/compose/airflow-worker.sh").read_text()
    assert "airflow celery worker" in script and "--skip-serve-logs" in script


def test_fab_auth_manager_with_admin_from_env() -> None:
    env = _environment("airflow-init")
    assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("fab_auth_manager.FabAuthManager")
    assert env["AIRFLOW_ADMIN_PASSWORD"] == "${AIRFLOW_ADMIN_PASSWORD:?set it in .env}"
    init = " ".join(_command("airflow-init"))
    assert "airflow users create --role Admin" in init and "airflow db migrate" in init
    assert "apache-airflow-providers-fab==" in (REPO / "requirements.txt").read_text()


@pytest.mark.parametrize("password", ["-Kx3_leading-dash", "plain_Pw-9"])
def test_init_passes_any_admin_password_to_the_fab_cli(password: str) -> None:
    """A generated password may start with "-" (secrets.token_urlsafe does, 1 in 32): passed as
    `--password VALUE`, argparse reads it as an option and `airflow users create` fails (the init
    job exited 2 so in a CI run). Parsed here by the FAB provider's own CLI parser."""
    from airflow.providers.fab.cli.definition import get_parser

    script = _command("airflow-init")[-1].replace("\\\n", " ")
    calls = re.findall(r"airflow (users (?:create|reset-password)[^\n)]*)", script)
    assert len(calls) == 2, calls
    for call in calls:
        argv = shlex.split(
            call.replace("$$AIRFLOW_ADMIN_PASSWORD", password).replace("$$AIRFLOW_ADMIN_USER", "admin")
        )
        args = get_parser().parse_args(argv)
        assert (args.username, args.password) == ("admin", password), argv


def test_metadata_and_warehouse_are_separate_non_superuser_roles() -> None:
    env = _environment("airflow-scheduler")
    meta_user = re.search(r"://(\w+):", env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).group(1)
    warehouse_user = _field(env["AIRFLOW_CONN_WAREHOUSE"], "login")
    assert meta_user == "airflow" and warehouse_user == "${WAREHOUSE_USER:-warehouse}"
    assert _environment("postgres")["POSTGRES_USER"] == "postgres"
    script = (REPO / "dev/compose/init-databases.sh").read_text()
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    assert "create role %I login password %L" in code and "superuser" not in code.lower()
    assert "create airflow airflow" in script
    assert 'create "${WAREHOUSE_DB:-warehouse}" "${WAREHOUSE_USER:-warehouse}"' in script


@pytest.mark.parametrize("service", AIRFLOW_SERVICES)
def test_airflow_waits_for_database_broker_and_init(service: str) -> None:
    depends = SERVICES[service]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["airflow-init"]["condition"] == "service_completed_successfully"


def test_init_job_migrates_and_nothing_else_long_running() -> None:
    init = SERVICES["airflow-init"]
    assert init.get("restart") == "no"
    assert init["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_local_airbyte_waits_for_postgres_and_meter_api() -> None:
    depends = LOCAL["services"]["local-airbyte"]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["meter-api"]["condition"] == "service_healthy"


@pytest.mark.parametrize("service", ["airflow-init", *AIRFLOW_SERVICES])
def test_airflow_settings_match_the_local_stack(service: str) -> None:
    stack = {k: v for k, v in _stack_env().items() if k.startswith("AIRFLOW__") and k not in STACK_ONLY}
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
    assert compose_ids == stack_ids == set(CONNECTION_IDS)


def test_connections_render_to_the_stacks_json_shape() -> None:
    env = _environment("airflow-scheduler")
    stack = _stack_env()
    for key in ("AIRFLOW_CONN_WAREHOUSE", "AIRFLOW_CONN_AIRBYTE_DEFAULT"):
        rendered = json.loads(ANY_REF.sub(lambda m: "5432" if m.group(1).endswith("PORT") else "x", env[key]))
        assert set(rendered) == set(json.loads(stack[key])), key
        assert REQUIRED_REF.fullmatch(_field(env[key], "password")), f"{key}: password must come from .env"


def _field(template: str, name: str) -> str:
    match = re.search(rf'"{name}":\s*"([^"]*)"', template)
    assert match, f"no {name} in {template}"
    return match.group(1)


def test_airbyte_is_configured_only_from_env() -> None:
    template = _environment("airflow-api-server")["AIRFLOW_CONN_AIRBYTE_DEFAULT"]
    for field, var in (
        ("host", "AIRBYTE_API_URL"),
        ("schema", "AIRBYTE_TOKEN_URL"),
        ("login", "AIRBYTE_CLIENT_ID"),
    ):
        assert _field(template, field) == f"${{{var}:?set it in .env}}", field
    assert "local-airbyte" not in (REPO / "docker-compose.yaml").read_text()


def _all_environments() -> list[tuple[str, str, str]]:
    everything = {**SERVICES, **LOCAL["services"]}
    return [(s, key, value) for s in everything for key, value in _environment(s, everything).items()]


def test_no_secret_literals() -> None:
    for service, key, value in _all_environments():
        if not SECRET_NAME.search(key) or not value:
            continue
        if key.startswith("AIRFLOW_CONN_") and value.lstrip().startswith("{"):
            assert REQUIRED_REF.fullmatch(_field(value, "password")), f"{service} {key}.password is a literal"
        else:
            assert ANY_REF.fullmatch(value), f"{service}: {key} must be a ${{VAR}} reference, not a literal"
    for service, key, value in _all_environments():
        for userinfo in re.findall(r"://([^@/\s]*)@", value):
            password = userinfo.partition(":")[2]
            assert not password or REQUIRED_REF.fullmatch(password), f"{service}: {key} embeds a password"


def test_env_example_has_placeholders_for_every_required_variable() -> None:
    text = (REPO / "docker-compose.yaml").read_text() + (REPO / "docker-compose.local.yaml").read_text()
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
    for service in AIRFLOW_SERVICES[:-1]:
        assert _command(service)[:2] == ["airflow", stack[service][1]], service
        assert ("--skip-serve-logs" in _command(service)) == ("--skip-serve-logs" in stack[service]), service
    for service, stack_name in (("local-airbyte", "airbyte"), ("meter-api", "meter-api")):
        assert _command(service, LOCAL["services"]) == ["python", *stack[stack_name][1:]], service


def _run_lines(dockerfile: str) -> list[str]:
    """Instructions with their continuation lines joined."""
    return re.sub(r"\\\n\s*", " ", dockerfile).splitlines()


@pytest.mark.parametrize("path", ["Dockerfile", "dev/docker/Dockerfile.local-services"])
def test_images_take_their_base_as_an_argument_and_run_under_tini(path: str) -> None:
    lines = _run_lines((REPO / path).read_text())
    assert lines.index("ARG BASE_IMAGE=python:3.11-slim-bookworm") < lines.index("FROM ${BASE_IMAGE}")
    assert 'ENTRYPOINT ["tini", "--"]' in lines
    user = [line for line in lines if line.startswith("USER ")]
    assert user and user[-1] != "USER root", f"{path}: must not run as root"
    assert not any(line.startswith("ENV") and re.search(r"PASSWORD|SECRET", line) for line in lines)


def test_airflow_image_installs_from_the_lock_and_compiles_the_manifest() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    install = next(line for line in _run_lines(dockerfile) if "uv pip install" in line)
    assert re.search(r"-r \S*requirements\.txt", install) and re.search(r"-c \S*requirements\.lock", install)
    for directory in ("dags/", "plugins/", "include/"):
        assert re.search(rf"^COPY .*\b{directory} ", dockerfile, re.M), directory
    assert re.search(r"^RUN python -m elt\.dbt", dockerfile, re.M)


def test_local_services_image_installs_its_lock() -> None:
    dockerfile = (REPO / LOCAL["x-local-image"]["build"]["dockerfile"]).read_text()
    install = next(line for line in _run_lines(dockerfile) if "uv pip install" in line)
    assert "-r /tmp/requirements-airbyte.lock" in install


def test_dockerignore_starts_from_ignore_everything() -> None:
    rules = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert rules[0] == "*", ".dockerignore must start from 'ignore everything'"
    allowed = {line[1:].rstrip("/") for line in rules if line.startswith("!")}
    assert not {".env", ".local", ".venv", ".venv-airbyte", "dev"} & allowed
    for dockerfile in ("Dockerfile", "dev/docker/Dockerfile.local-services"):
        for line in _run_lines((REPO / dockerfile).read_text()):
            if line.startswith("COPY "):
                sources = [s for s in line.split()[1:-1] if not s.startswith("--")]
                for source in sources:
                    assert any(source.rstrip("/") == a or source.startswith(a + "/") for a in allowed), source
