"""Runs test_scaffold_e2e.py (marked `serial`) in a copy of this checkout, beside the other tests.

The scaffold test rewrites files that every stack of a checkout reads (the Airbyte workspace, the
dbt manifest, dags/), so it cannot share a checkout with stacks that run other tests. In a copy of
the tracked files (plus the compiled manifest; the virtualenvs linked, not copied) with its own
stack on its own ports, it no longer waits for the parallel tests to finish: pytest's addopts leave
`serial` tests out, and this runs them, unchanged, with `pytest -m serial` in the copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.stack

REPO = Path(__file__).resolve().parents[2]
PORTS = {
    "STACK_PG_PORT": "25430",
    "STACK_REDIS_PORT": "26370",
    "STACK_AIRBYTE_PORT": "28500",
    "STACK_METER_PORT": "28501",
    "STACK_RECEIVERS_HTTP_PORT": "28502",
    "STACK_RECEIVERS_SMTP_PORT": "28503",
    "STACK_AIRFLOW_PORT": "28600",  # and +713..+715
}
# What the copy's pytest must not inherit: this worker's stack and xdist settings.
NOT_INHERITED = ("AIRFLOW", "STACK_", "PYTEST_", "WAREHOUSE_", "LOCAL_AIRBYTE", "METER_API", "RECEIVERS")
LINKED = (".venv", ".venv-airbyte")


def copy_of_checkout(target: Path) -> None:
    """The tracked files (timestamps kept, so make sees nothing to rebuild) and the compiled manifest."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True)
    if listed.returncode != 0:
        pytest.fail(
            f"copies the checkout's tracked files, but `git ls-files` failed in {REPO}: {listed.stderr!r}"
        )
    tracked = listed.stdout.decode().split("\0")
    for name in [*filter(None, tracked), "include/dbt/target/manifest.json"]:
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    for name in LINKED:
        (target / name).symlink_to(REPO / name)


@pytest.fixture(scope="module")
def copy() -> Path:
    path = Path(tempfile.mkdtemp(prefix="elt-scaffold-copy-"))
    path.chmod(0o755)  # its stack's Postgres runs as an unprivileged user
    copy_of_checkout(path)
    yield path
    subprocess.run(
        [str(path / ".venv" / "bin" / "python"), "-m", "dev.stack", "down"], cwd=path, env=_env(path)
    )
    shutil.rmtree(path, ignore_errors=True)


def _env(copy: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(NOT_INHERITED)}
    tools = REPO / ".local" / "tools" / "bin"  # the uv make bootstrapped, if there is no uv on PATH
    return {**env, **PORTS, "PATH": f"{tools}{os.pathsep}{env.get('PATH', '')}"}


def test_scaffold_e2e_passes_in_a_copy_of_the_checkout(copy: Path) -> None:
    result = subprocess.run(
        [str(copy / ".venv" / "bin" / "python"), "-m", "pytest", "-p", "no:cacheprovider", "-m", "serial"],
        cwd=copy,
        env=_env(copy),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, f"{result.stdout[-8000:]}\n{result.stderr[-3000:]}"
    assert "2 passed" in result.stdout, result.stdout[-3000:]
    assert "test_scaffold_e2e.py" in result.stdout
