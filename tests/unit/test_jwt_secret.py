"""Airflow signs task tokens with HS512 given a shared JWT secret, and RFC 7518 (section 3.2)
requires a key of 64 bytes or more for it (PyJWT only warns): the compose deployment refuses a
shorter secret before it migrates anything, and the local stack generates and renews its own."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import pytest
import yaml

from dev.stack import config

REPO = Path(__file__).resolve().parents[2]


def init_check() -> str:
    """airflow-init's script up to `airflow db migrate`, as compose runs it (`$$` is a literal `$`)."""
    service = yaml.safe_load((REPO / "docker-compose.yaml").read_text())["services"]["airflow-init"]
    script = service["command"][-1]
    head, sep, _ = script.partition("airflow db migrate")
    assert sep, "airflow-init no longer runs `airflow db migrate`"
    return head.replace("$$", "$") + "echo checked\n"


def run_init_check(secret: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "AIRFLOW__API_AUTH__JWT_SECRET": secret}
    return subprocess.run(["bash", "-ec", init_check()], env=env, capture_output=True, text=True)


def test_compose_init_refuses_a_jwt_secret_shorter_than_64_bytes() -> None:
    short = secrets.token_urlsafe(32)  # 43 characters: what .env.example used to suggest
    result = run_init_check(short)
    assert result.returncode == 1
    assert "checked" not in result.stdout
    assert f"AIRFLOW_JWT_SECRET in .env is {len(short)} characters" in result.stderr
    assert "64 or more" in result.stderr and "token_urlsafe(64)" in result.stderr


@pytest.mark.parametrize("length", [64, 86])
def test_compose_init_accepts_a_jwt_secret_of_64_bytes_or_more(length: int) -> None:
    result = run_init_check("s" * length)
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "checked", "")


@pytest.fixture
def secrets_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(config, "LOCAL", tmp_path)
    monkeypatch.setattr(config, "SECRETS_FILE", tmp_path / "secrets.json")
    return tmp_path / "secrets.json"


def test_the_local_stack_generates_a_jwt_secret_of_64_bytes_or_more(secrets_file: Path) -> None:
    generated = config.load_secrets()["jwt_secret"]
    assert len(generated.encode()) >= 64
    assert json.loads(secrets_file.read_text())["jwt_secret"] == generated
    assert config.load_secrets()["jwt_secret"] == generated  # kept across `up`s


def test_a_short_jwt_secret_is_renewed_while_airflow_is_stopped_and_the_rest_kept(secrets_file: Path) -> None:
    old = {"jwt_secret": "short", "admin_password": "kept", "fernet_key": "kept-too"}
    secrets_file.write_text(json.dumps(old))
    renewed = config.load_secrets(airflow_running=False)
    assert len(renewed["jwt_secret"]) >= 64
    assert (renewed["admin_password"], renewed["fernet_key"]) == ("kept", "kept-too")
    assert json.loads(secrets_file.read_text())["jwt_secret"] == renewed["jwt_secret"]


def test_a_short_jwt_secret_is_kept_while_airflow_services_run(secrets_file: Path) -> None:
    secrets_file.write_text(json.dumps({"jwt_secret": "short"}))
    assert config.load_secrets(airflow_running=True)["jwt_secret"] == "short"
    assert json.loads(secrets_file.read_text())["jwt_secret"] == "short"
