"""`make install` leaves compiled bytecode in both virtualenvs, made from the chosen interpreter.

Where PYTHONDONTWRITEBYTECODE is set (CI, the images), Python never writes .pyc files: without
uv's --compile-bytecode every Airflow service, task runner, dbt run and connector compiles all it
imports each time it starts (a stack start: 61 CPU-s instead of 34).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REINSTALL = "rm .venv/.installed .venv-airbyte/.installed && make install"


def stale_or_missing(sources: list[Path]) -> list[str]:
    missing = []
    for source in sources:
        cached = Path(importlib.util.cache_from_source(str(source)))
        if not cached.is_file() or cached.stat().st_mtime < source.stat().st_mtime:
            missing.append(str(source))
    return missing


def test_the_project_venv_holds_bytecode_for_what_every_process_imports() -> None:
    sources = []
    for module in ("airflow", "airflow.sdk", "cosmos", "dbt.cli.main", "sqlalchemy.orm", "pydantic.main"):
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin, module
        sources.append(Path(spec.origin))
    assert stale_or_missing(sources) == [], f"no .pyc next to these; reinstall: {REINSTALL}"


def test_the_local_airbyte_venv_holds_bytecode() -> None:
    site = (
        REPO
        / ".venv-airbyte"
        / "lib"
        / f"python{sys.version_info.major}.{sys.version_info.minor}"
        / "site-packages"
    )
    if not site.is_dir():
        pytest.skip(".venv-airbyte not installed (make install)")
    sources = [
        site / "airbyte" / "__init__.py",
        site / "airbyte_cdk" / "__init__.py",
        site / "duckdb" / "__init__.py",
    ]
    assert [s for s in sources if not s.is_file()] == []
    assert stale_or_missing(sources) == [], f"no .pyc next to these; reinstall: {REINSTALL}"


def make_dry_run(tmp_path: Path, venv_python: Path, interpreter: Path) -> str:
    """`make -n .venv/.installed` in a copy of the Makefile, .venv/bin/python linked to venv_python."""
    (tmp_path / "Makefile").write_text((REPO / "Makefile").read_text())
    (tmp_path / "requirements.lock").write_text("")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(venv_python)
    (tmp_path / ".venv" / ".installed").write_text("")  # newer than the lock
    result = subprocess.run(
        ["make", "-n", ".venv/.installed", f"PY_INTERPRETER={interpreter}", "UV=/bin/true"],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_venv_made_from_another_interpreter_is_made_again(tmp_path: Path) -> None:
    interpreter = Path(sys.executable).resolve()
    other = tmp_path / "other-python3.11"
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    assert f"rm -rf .venv && /bin/true venv --quiet --python {interpreter} .venv" in make_dry_run(
        tmp_path, other, interpreter
    )


def test_a_venv_made_from_the_chosen_interpreter_is_kept(tmp_path: Path) -> None:
    interpreter = Path(sys.executable).resolve()
    assert (
        make_dry_run(tmp_path, interpreter, interpreter).strip() == "make: '.venv/.installed' is up to date."
    )


def test_an_interpreter_that_does_not_exist_leaves_the_venv_alone(tmp_path: Path) -> None:
    interpreter = Path(sys.executable).resolve()
    out = make_dry_run(tmp_path, interpreter, tmp_path / "no-such-python3.11")
    assert out.strip() == "make: '.venv/.installed' is up to date."
