"""A new user's path: a declarative connector in the local workspace -> `elt new-pipeline` -> a green run.

The test adds a source and a connection for the bookshop fixture API (tests/fixtures/bookshop)
to include/airbyte/workspace.yaml (the local Airbyte reloads it without a restart), runs the CLI
and the commands it prints, and runs the DAG through the scheduler. Every file it adds or
changes is restored afterwards.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC
from pathlib import Path

import psycopg
import pytest

from tests.fixtures.bookshop.server import AUTHORS, BOOKS
from tests.integration.pipeline_runs import run_dag

# It rewrites include/airbyte/workspace.yaml and recompiles the dbt manifest, which every stack on
# this checkout reads: pytest leaves it out unless asked (`-m serial`); make test runs it in a copy
# of the checkout (test_scaffold_in_a_copy.py).
pytestmark = [pytest.mark.stack, pytest.mark.serial]

REPO = Path(__file__).resolve().parents[2]
WORKSPACE = REPO / "include" / "airbyte" / "workspace.yaml"
SELECTORS = REPO / "include" / "dbt" / "selectors.yml"
NAME = "bookshop_e2e"
CONNECTION = "5b0c5f52-2d7e-4c55-9d6a-4a9e3f1e0b11"
SOURCE = "0f4c2a7e-8a51-4a38-9b1e-3f6d2f4b7c21"
WAREHOUSE_DESTINATION = "488ed591-2643-4f90-8a2b-6813f112610e"
GENERATED = [
    REPO / "include" / "pipelines" / f"{NAME}.yaml",
    REPO / "dags" / f"{NAME}.py",
    REPO / "include" / "dbt" / "models" / "staging" / NAME,
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _workspace_with_bookshop(original: str, api_url: str) -> str:
    # Full-refresh append: an overwrite sync would drop the raw table the staging views read.
    source = f"""
  - id: {SOURCE}
    name: bookshop API
    type: bookshop
    definition_id: 7c1d9a55-1111-4d2e-8e0f-6a2b3c4d5e6f
    connector:
      name: source-bookshop
      manifest: ../../tests/fixtures/bookshop/manifest.yaml
    configuration:
      base_url: {api_url}
"""
    connection = f"""
  - id: {CONNECTION}
    name: bookshop
    source_id: {SOURCE}
    destination_id: {WAREHOUSE_DESTINATION}
    schema: raw_bookshop
    streams:
      - name: books
        sync_mode: full_refresh_append
        primary_key: [[bookId]]
      - name: authors
        sync_mode: full_refresh_append
        primary_key: [[authorId]]
"""
    head, sep, tail = original.partition("\nconnections:\n")
    assert sep, "workspace.yaml has no top-level connections: list"
    return head.rstrip("\n") + "\n" + source + sep + tail.rstrip("\n") + "\n" + connection


def _elt(stack: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **stack, "PYTHONPATH": str(REPO / "plugins")}
    return subprocess.run(
        [sys.executable, "-m", "elt", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def bookshop(stack):
    port = _free_port()
    api = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "fixtures" / "bookshop" / "server.py"), str(port)]
    )
    original_workspace, original_selectors = WORKSPACE.read_text(), SELECTORS.read_text()
    assert not any(p.exists() for p in GENERATED), f"left over from an earlier run: {GENERATED}"
    try:
        for _ in range(50):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/books", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        WORKSPACE.write_text(_workspace_with_bookshop(original_workspace, f"http://127.0.0.1:{port}"))
        yield
    finally:
        api.terminate()
        WORKSPACE.write_text(original_workspace)
        SELECTORS.write_text(original_selectors)
        for path in GENERATED:
            if path.is_dir():
                for child in path.iterdir():
                    child.unlink()
                path.rmdir()
            elif path.exists():
                path.unlink()
        subprocess.run(["make", "dbt-manifest"], cwd=REPO, check=False, capture_output=True)


def test_new_pipeline_from_a_workspace_connection_runs_green(bookshop, stack, airflow):
    scaffold = _elt(stack, "new-pipeline", NAME, "--connection", CONNECTION)
    assert scaffold.returncode == 0, scaffold.stderr
    assert f"wrote include/pipelines/{NAME}.yaml" in scaffold.stdout
    assert f"wrote dags/{NAME}.py" in scaffold.stdout
    # The first printed next step recompiles the manifest the DAG renders from, and checks.
    first = re.search(r"next:\n\s+(make [^#\n]+?)\s+#", scaffold.stdout)
    assert first, scaffold.stdout
    env = {**os.environ, **stack}
    made = subprocess.run(first.group(1).split(), cwd=REPO, env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "ok: specs and dbt sources agree" in made.stdout

    run = run_dag(airflow, NAME, timeout=900)
    states = {task: ti["state"] for task, ti in run["task_instances"].items()}
    assert run["state"] == "success", states
    assert set(states.values()) == {"success"}, states
    assert {"dbt.stg_bookshop_e2e__books.run", "dbt.stg_bookshop_e2e__authors.test"} <= set(states)

    # Oracle: the fixture API's own records, renamed and typed.
    with psycopg.connect(stack["WAREHOUSE_URL"], autocommit=True) as conn:
        books = conn.execute(
            "select book_id, title, author_id, price, in_stock, updated_at "
            "from analytics_staging.stg_bookshop_e2e__books order by book_id"
        ).fetchall()
        authors = conn.execute(
            "select author_id, full_name, born_on from analytics_staging.stg_bookshop_e2e__authors order by 1"
        ).fetchall()
    assert [
        (b[0], b[1], b[2], float(b[3]), b[4], b[5].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        for b in books
    ] == [(b["bookId"], b["title"], b["authorId"], b["price"], b["inStock"], b["updatedAt"]) for b in BOOKS]
    assert [(a[0], a[1], a[2].isoformat()) for a in authors] == [
        (a["authorId"], a["fullName"], a["bornOn"]) for a in AUTHORS
    ]


def test_check_airbyte_passes_and_names_a_renamed_stream(bookshop, stack):
    ok = _elt(stack, "check", "--airbyte")
    assert ok.returncode == 0, ok.stdout + ok.stderr

    workspace = WORKSPACE.read_text()
    renamed = workspace.replace("      - name: muid_2\n", "      - name: muid_two\n", 1)
    assert renamed != workspace
    WORKSPACE.write_text(renamed)
    try:
        broken = _elt(stack, "check", "--airbyte")
    finally:
        WORKSPACE.write_text(workspace)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert (
        "include/pipelines/energy_meters.yaml: field 'airbyte.connections.0.streams.1': stream 'muid_2' is "
        "not synced by Airbyte connection 4d2f7268-e2ac-4fa7-a3a6-97286f22d617"
    ) in broken.stdout
